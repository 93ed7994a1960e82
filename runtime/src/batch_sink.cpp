#include "batch_sink.hpp"

#include <cstdio>

namespace parley::runtime {

batch_sink::batch_sink(std::vector<spdlog::sink_ptr> out, std::chrono::milliseconds interval,
                       std::size_t max_pending)
  : out_(std::move(out)), interval_(interval), max_pending_(max_pending) {
  pending_.reserve(256);
  thread_ = std::thread([this] { run(); });
}

batch_sink::~batch_sink() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_one();
  thread_.join();
}

void batch_sink::log(const spdlog::details::log_msg& msg) {
  std::unique_lock<std::mutex> lock(mu_);
  room_.wait(lock, [this] { return pending_.size() < max_pending_ || stop_; });
  pending_.emplace_back(msg);
  // Warnings and errors reach the file at once; a full buffer is written at once.
  if (msg.level >= spdlog::level::warn || pending_.size() >= max_pending_) {
    urgent_ = true;
    lock.unlock();
    wake_.notify_one();
  }
}

void batch_sink::flush() {
  std::lock_guard<std::mutex> writing(write_mu_);
  std::vector<spdlog::details::log_msg_buffer> batch;
  {
    std::lock_guard<std::mutex> lock(mu_);
    batch.swap(pending_);
  }
  room_.notify_all();
  write(batch, true);
}

void batch_sink::set_pattern(const std::string& pattern) {
  std::lock_guard<std::mutex> writing(write_mu_);
  for (auto& s : out_)
    s->set_pattern(pattern);
}

void batch_sink::set_formatter(std::unique_ptr<spdlog::formatter> f) {
  std::lock_guard<std::mutex> writing(write_mu_);
  for (auto& s : out_)
    s->set_formatter(f->clone());
}

void batch_sink::write(std::vector<spdlog::details::log_msg_buffer>& batch, bool flush) {
  // A sink that fails (a full disk, a failed rotation) loses its lines, as spdlog's own
  // loggers do; it must not end the writer thread (std::terminate) or the flushing caller.
  auto guarded = [](const char* what, auto&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "[*** LOG ERROR ***] batch_sink %s: %s\n", what, e.what());
    } catch (...) {
      std::fprintf(stderr, "[*** LOG ERROR ***] batch_sink %s: unknown exception\n", what);
    }
  };
  bool urgent = false;
  for (auto& m : batch) {
    urgent = urgent || m.level >= spdlog::level::warn;
    for (auto& s : out_)
      if (s->should_log(m.level))
        guarded("log", [&] { s->log(m); });
  }
  if (flush || urgent)
    for (auto& s : out_)
      guarded("flush", [&] { s->flush(); });
  batch.clear();
}

void batch_sink::run() {
  std::vector<spdlog::details::log_msg_buffer> batch;
  batch.reserve(256);
  for (;;) {
    bool stopping;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait_for(lock, interval_, [this] { return urgent_ || stop_; });
    }
    {
      // The write lock before the swap (the order flush() takes them in): a batch taken from
      // pending_ is always written before anyone else writes, so flush() never returns while
      // older lines wait in our hands, and lines are never written out of order.
      std::lock_guard<std::mutex> writing(write_mu_);
      {
        std::lock_guard<std::mutex> lock(mu_);
        urgent_ = false;
        stopping = stop_;
        batch.swap(pending_);
      }
      room_.notify_all();
      write(batch, stopping);
    }
    if (stopping)
      return;
  }
}

} // namespace parley::runtime
