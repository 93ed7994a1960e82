#pragma once

#include <spdlog/details/log_msg_buffer.h>
#include <spdlog/sinks/sink.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace parley::runtime {

/// A log sink that costs the logging thread no wake-up of another thread: lines are copied
/// into a buffer, and one background thread writes the buffer to the real sinks every
/// `interval` (or at once after a warning or worse, or when the buffer is full). spdlog's
/// own async logger wakes its thread for every line -- one futex wake per request for the
/// access log.
///
/// When the buffer holds `max_pending` lines the logging thread waits for the writer rather
/// than dropping lines (an access log with holes is worse). flush() writes and flushes
/// everything pending before it returns: call it from a controlling thread, not an io thread.
class batch_sink final : public spdlog::sinks::sink {
public:
  batch_sink(std::vector<spdlog::sink_ptr> out, std::chrono::milliseconds interval,
             std::size_t max_pending);
  ~batch_sink() override;

  void log(const spdlog::details::log_msg& msg) override;
  void flush() override;
  void set_pattern(const std::string& pattern) override;
  void set_formatter(std::unique_ptr<spdlog::formatter> f) override;

private:
  void run();
  /// Writes `batch` to the real sinks (writer thread, or flush() under the write lock).
  void write(std::vector<spdlog::details::log_msg_buffer>& batch, bool flush);

  std::vector<spdlog::sink_ptr> out_;
  std::chrono::milliseconds interval_;
  std::size_t max_pending_;
  std::mutex mu_;
  std::condition_variable wake_;  ///< the writer: urgent lines, a full buffer, stop
  std::condition_variable room_;  ///< loggers waiting for room
  std::vector<spdlog::details::log_msg_buffer> pending_;
  bool urgent_ = false;
  bool stop_ = false;
  std::mutex write_mu_; ///< one writer at a time: the thread, or flush()
  std::thread thread_;
};

} // namespace parley::runtime
