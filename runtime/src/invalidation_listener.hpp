#pragma once

#include "parley/config/logging.hpp"
#include "parley/persistence/change_feed.hpp"
#include "parley/tenants/key_cache.hpp"

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

namespace parley::runtime {

/// Keeps this cluster node's key cache true to the shared database: a revoked or rotated key,
/// a suspended, deleted or reconfigured tenant stops being served from the cache within about
/// a second, whichever node made the change (docs/cluster.md, "Cache invalidation across
/// nodes").
///
/// A thread of its own (every call on the change feed blocks) with the feed's dedicated
/// connection: it LISTENs for the store's notifications and invalidates the key (by key id)
/// or every cached key of the tenant at once. Notifications are lost while the connection is
/// down, so every `poll` it also asks for the keys and tenants whose updated_at is above the
/// newest version it has seen, less `lookback` (a writer's clock behind the others, a commit
/// that came late), and invalidates those it has not seen at that version. A lost
/// connection is reopened with exponential backoff, and the version check runs at once.
///
/// Thread safety: start() and stop() from the controlling thread (runtime's start and stop);
/// the key cache is called from the listener's thread (it is thread-safe). Owns the feed.
class invalidation_listener {
public:
  struct options {
    std::chrono::milliseconds wait{200};    ///< longest wait for a notification (and to stop)
    std::chrono::milliseconds poll{1000};   ///< version check period
    persistence::millis lookback = 30000;   ///< version check window below the newest seen
    int poll_limit = 10000;                 ///< rows per check; a full answer clears the cache
    std::chrono::milliseconds backoff_min{100};
    std::chrono::milliseconds backoff_max{5000};
  };

  invalidation_listener(std::unique_ptr<persistence::change_feed> feed, tenants::key_cache& keys,
                        log::logger_ptr logger, options opts);
  ~invalidation_listener();

  /// Starts the thread, which connects (and retries) by itself: start never blocks.
  void start();
  /// Stops the thread and closes the connection. Returns within about `wait` (longer only
  /// while a connection attempt or a query is in flight). Idempotent.
  void stop();

private:
  void run();
  /// Opens the feed; on the first success the cache is cleared and the newest version read.
  bool connect();
  /// The version check. False when the feed failed (and closed).
  bool check_versions();
  void invalidate(const persistence::cached_change& c, const char* source);
  /// Sleeps `d` unless stop() comes first; true when stopping.
  bool sleep_or_stop(std::chrono::milliseconds d);
  bool stopping();

  std::unique_ptr<persistence::change_feed> feed_;
  tenants::key_cache& keys_;
  log::logger_ptr logger_;
  options opts_;
  // The listener thread's own state.
  bool connected_once_ = false;
  persistence::millis newest_ = 0; ///< the newest version seen
  /// Versions seen within the lookback window, by "k:<id>" / "t:<id>".
  std::unordered_map<std::string, persistence::millis> seen_;
  std::chrono::steady_clock::time_point next_check_{};

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

} // namespace parley::runtime
