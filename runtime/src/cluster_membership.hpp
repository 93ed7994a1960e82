#pragma once

#include "parley/actors/cluster.hpp"
#include "parley/config/logging.hpp"
#include "parley/config/settings.hpp"
#include "parley/persistence/cluster_store.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace parley::runtime {

/// This node's membership in the cluster: it joins (a new incarnation, with a lease on the
/// database clock), renews the lease every TTL/4 on a thread of its own (store calls block),
/// and after each renewal hands the live members to `on_members` (the tenant directory).
///
/// Self-fencing: the node may serve tenants only until `lease_deadline()` -- measured on the
/// local steady clock from *before* the renewal was sent, 90 % of the TTL, so it always falls
/// before the database's own expiry. Whoever watches the deadline (runtime's watchdog) calls
/// fence() once it has passed; a lease the database refuses to renew (it expired, or the node
/// was replaced) fences at once. A fenced node holds incarnation 0, serves no tenants (the
/// manager answers no_lease) and joins again as a new incarnation on the next round.
class cluster_membership {
public:
  cluster_membership(persistence::cluster_store& store,
                     std::shared_ptr<actors::cluster_identity> identity,
                     const config::cluster_settings& settings, std::string address,
                     std::string http_address, log::logger_ptr logger,
                     std::function<void(std::vector<actors::cluster_member>)> on_members,
                     std::function<void()> on_fence);
  ~cluster_membership();

  /// Joins now (blocking: call it at start-up). Throws when the database refuses.
  /// `wait`: while a previous incarnation of this node id is still live (a crashed process's
  /// lease not yet run out), wait for it -- up to one lease TTL and a second -- instead of
  /// failing at once. Throws when the node cannot join.
  void join(bool wait = false);
  /// Starts the renewal thread.
  void start();
  /// Says "draining" in the nodes table (no new tenants are placed here). Blocking.
  void drain();
  /// Stops renewing and says "left": the lease ends now and other nodes may take our
  /// tenants at once. Blocking; call after the node's last request was answered.
  void leave();

  /// Whether the lease is held and its local deadline has not passed.
  bool has_lease() const;
  /// Fences once the lease's local deadline has passed (from a timer, any thread). True when
  /// this call fenced.
  bool fence_if_expired();
  /// Live members at the last reading of the nodes table (this one included).
  int live_members() const noexcept { return live_members_.load(std::memory_order_relaxed); }

private:
  void accept_lease(int64_t sent_ns, const persistence::node_lease& lease);
  void run();
  bool renew_once();
  void fence(const char* why);
  void publish_members();

  persistence::cluster_store& store_;
  std::shared_ptr<actors::cluster_identity> identity_;
  config::cluster_settings settings_;
  std::string address_, http_address_;
  log::logger_ptr logger_;
  std::function<void(std::vector<actors::cluster_member>)> on_members_;
  std::function<void()> on_fence_;
  /// Local steady-clock deadline of the lease, in nanoseconds since the clock's epoch.
  std::atomic<int64_t> deadline_ns_{0};
  std::atomic<int64_t> held_incarnation_{0}; ///< the incarnation whose lease we hold (0 = none)
  std::atomic<bool> draining_{false};
  std::atomic<int> live_members_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

} // namespace parley::runtime
