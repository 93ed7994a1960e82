#pragma once

#include "parley/config/metrics.hpp"

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace parley::persistence {

/// A fixed pool of threads dedicated to blocking store calls, so that Asio io threads and
/// CAF scheduler threads never wait on a database. Jobs run in FIFO order on any worker.
///
/// Thread safety: try_post may be called from any thread. A job's completion must hop back
/// to its caller's context by itself (post to a strand, or send to an actor).
class store_executor {
public:
  /// Starts `threads` workers; at most `max_queued` jobs wait before try_post refuses.
  store_executor(int threads, std::size_t max_queued);
  ~store_executor();
  store_executor(const store_executor&) = delete;
  store_executor& operator=(const store_executor&) = delete;

  /// Queues a job. Returns false (and drops nothing) when the queue is full or the executor
  /// is stopping: the caller answers "overloaded" instead of queueing without bound.
  bool try_post(std::function<void()> job);

  /// Stops accepting jobs, runs the ones already queued, joins the workers. Idempotent.
  void stop();

  std::size_t queued() const;
  /// Times every job (a store operation) into `h`; set before the first post.
  void observe_with(metrics::histogram* h) noexcept { timing_ = h; }
  int threads() const noexcept { return static_cast<int>(workers_.size()); }

private:
  void run();

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::size_t max_queued_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
  metrics::histogram* timing_ = nullptr;
};

} // namespace parley::persistence
