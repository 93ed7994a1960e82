#pragma once

#include "parley/persistence/store.hpp"

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace parley::persistence {

/// Group commit for what a turn must make durable before its client sees the end: the user's
/// messages, the assistant's reply and the usage ledger rows of its upstream attempts. Writes
/// that arrive while a commit is in progress go together into the next single transaction, so
/// durability costs about one commit per batch, not per turn.
///
/// If a batch fails because one caller's messages do not fit (a seq conflict, a conversation
/// deleted meanwhile), each caller's write is retried alone, so one bad write never fails
/// another caller's; the usage of a write whose messages were refused is still recorded. If
/// the store is unreachable, every caller of the batch gets the failure and the batch's usage
/// rows are parked and retried until they land: ledger rows are idempotent (keyed by request
/// id and attempt), so a retry after an ambiguous failure never counts twice.
///
/// Thread safety: submit() may be called from any thread; completions run on the writer's own
/// thread and must only hand off (e.g. send a message to an actor).
class turn_writer {
public:
  /// Starts the writer thread. At most `max_batch` writes are combined per transaction; at
  /// most `max_queued` wait before submit() refuses; at most `max_parked` usage rows wait
  /// for the store to come back (beyond that the oldest are dropped and counted).
  explicit turn_writer(store& s, std::size_t max_batch = 256, std::size_t max_queued = 65536,
                       std::size_t max_parked = 100000,
                       std::chrono::milliseconds retry_every = std::chrono::seconds(1));
  ~turn_writer();
  turn_writer(const turn_writer&) = delete;
  turn_writer& operator=(const turn_writer&) = delete;

  /// Queues one caller's write (committed atomically); `done` gets the outcome. Returns false
  /// when the queue is full or the writer stopped (`done` is not called then).
  bool submit(turn_write w, std::function<void(status)> done);
  /// Commits what is queued, tries the parked usage once more, then stops. Idempotent.
  void stop();

  struct counters {
    uint64_t batches = 0;        ///< transactions attempted
    uint64_t parked = 0;         ///< usage rows waiting for the store now
    uint64_t parked_dropped = 0; ///< usage rows dropped because too many waited
  };
  counters stats() const;

private:
  struct entry {
    turn_write write;
    std::function<void(status)> done;
  };
  void run();
  void commit(std::vector<entry>& batch);
  void park(std::vector<usage_entry>&& rows);
  void retry_parked();

  store& store_;
  std::size_t max_batch_, max_queued_, max_parked_;
  std::chrono::milliseconds retry_every_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<entry> queue_;
  bool stopping_ = false;
  counters stats_;
  // Touched by the writer thread only (the size is mirrored in stats_).
  std::vector<usage_entry> parked_;
  std::chrono::steady_clock::time_point last_retry_{};
  std::thread thread_;
};

} // namespace parley::persistence
