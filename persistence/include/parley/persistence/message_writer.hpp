#pragma once

#include "parley/persistence/store.hpp"

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace parley::persistence {

/// Group commit for conversation messages: appends from many conversations that arrive while
/// a commit is in progress are written together in the next single transaction, so durable
/// history costs about one commit per batch, not per message. If a batch fails (one caller's
/// seq conflict, say), each caller's records are retried alone, so one bad append never fails
/// another caller's.
///
/// Thread safety: append() may be called from any thread; completions run on the writer's own
/// thread and must only hand off (e.g. send a message to an actor).
class message_writer {
public:
  /// Starts the writer thread. At most `max_batch` appends are combined per transaction;
  /// at most `max_queued` wait before append() refuses.
  explicit message_writer(conversation_store& store, std::size_t max_batch = 256,
                          std::size_t max_queued = 65536);
  ~message_writer();
  message_writer(const message_writer&) = delete;
  message_writer& operator=(const message_writer&) = delete;

  /// Queues `records` (one caller's, appended atomically); `done` gets the outcome. Returns
  /// false when the queue is full or the writer stopped (`done` is not called then).
  bool append(std::vector<message_record> records, std::function<void(status)> done);
  /// Commits what is queued, then stops the thread. Idempotent.
  void stop();

  /// Transactions committed so far (for tests and metrics).
  uint64_t batches() const;

private:
  struct entry {
    std::vector<message_record> records;
    std::function<void(status)> done;
  };
  void run();

  conversation_store& store_;
  std::size_t max_batch_, max_queued_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<entry> queue_;
  bool stopping_ = false;
  uint64_t batches_ = 0;
  std::thread thread_;
};

} // namespace parley::persistence
