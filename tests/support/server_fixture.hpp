#pragma once

#include "parley/config/settings.hpp"
#include "parley/runtime/app.hpp"
#include "support/process.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <memory>
#include <string>

/// An in-process parley node on 127.0.0.1 (port 0) with SQLite in a temp dir, for
/// [integration] tests. Logs go to a string that tests can search.
namespace parley::test {

class capture_sink;

class server_fixture {
public:
  /// `tweak` may change the settings before start. `data_dir` = "" uses a fresh temp dir.
  explicit server_fixture(void (*tweak)(config::settings&) = nullptr,
                          const std::string& data_dir = "");
  ~server_fixture();

  uint16_t port() const noexcept { return port_; }
  runtime::app& app() noexcept { return *app_; }
  config::settings& settings() noexcept { return settings_; }
  /// Everything logged so far (JSON lines).
  std::string logs() const;
  /// The access-log line ("msg":"request") of `request_id`, parsed. The line is written after
  /// the response, so this waits for it, up to `timeout`; null when none came. Test thread only.
  nlohmann::json access_log_line(const std::string& request_id,
                                 std::chrono::milliseconds timeout = std::chrono::seconds(5)) const;
  const temp_dir& dir() const noexcept { return dir_; }
  /// The admin bearer key of this node.
  static constexpr const char* admin_key = "test-admin-key-0123456789abcdef0123456789";

private:
  temp_dir dir_;
  config::settings settings_;
  std::shared_ptr<capture_sink> sink_;
  std::shared_ptr<spdlog::logger> logger_;
  std::unique_ptr<runtime::app> app_;
  uint16_t port_ = 0;
};

} // namespace parley::test
