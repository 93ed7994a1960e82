#include "support/server_fixture.hpp"

#include "parley/config/logging.hpp"
#include "support/wait.hpp"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/base_sink.h>

#include <mutex>

namespace parley::test {

/// Keeps every formatted log line in memory, for tests to search. Thread-safe.
class capture_sink : public spdlog::sinks::base_sink<std::mutex> {
public:
  std::string contents() {
    std::lock_guard<std::mutex> lock(mutex_);
    return text_;
  }

protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t buf;
    formatter_->format(msg, buf);
    text_.append(buf.data(), buf.size());
  }
  void flush_() override {}

private:
  std::string text_;
};

server_fixture::server_fixture(void (*tweak)(config::settings&), const std::string& data_dir) {
  settings_.http.listen = "127.0.0.1:0";
  settings_.http.io_threads = 1;
  settings_.data.dir = data_dir.empty() ? dir_.path() : data_dir;
  settings_.admin.key = admin_key;
  settings_.actors.scheduler_threads = 0; // the default: actors on the io threads
  settings_.shutdown.grace_seconds = 5;
  settings_.log.level = "debug";
  // Tests that are not about limits create tenants without any: said explicitly here (the
  // product's defaults are finite; tests of those defaults set them back).
  settings_.tenant_defaults = config::tenant_default_settings{0, 0, 0, 0, 0};
  if (tweak)
    tweak(settings_);
  sink_ = std::make_shared<capture_sink>();
  logger_ = std::make_shared<spdlog::logger>("test", sink_);
  logger_->set_formatter(std::make_unique<spdlog::pattern_formatter>(
    log::json_pattern, spdlog::pattern_time_type::utc, "\n"));
  logger_->set_level(spdlog::level::debug);
  app_ = std::make_unique<runtime::app>(settings_, logger_);
  port_ = app_->start();
}

server_fixture::~server_fixture() { app_->stop(); }

std::string server_fixture::logs() const {
  return sink_->contents();
}

nlohmann::json server_fixture::access_log_line(const std::string& request_id,
                                               std::chrono::milliseconds timeout) const {
  nlohmann::json found;
  wait_until(deadline_in(timeout), [&] {
    auto text = logs();
    std::size_t pos = 0;
    while (pos < text.size()) {
      auto end = text.find('\n', pos);
      if (end == std::string::npos)
        end = text.size();
      auto j = nlohmann::json::parse(text.substr(pos, end - pos), nullptr, false);
      if (j.is_object() && j.value("msg", "") == "request" &&
          (j.value("request_id", "") == request_id ||
           j.value("client_request_id", "") == request_id)) {
        found = std::move(j);
        return true;
      }
      pos = end + 1;
    }
    return false;
  });
  return found;
}

} // namespace parley::test
