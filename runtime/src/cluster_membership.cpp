#include "cluster_membership.hpp"

#include "parley/config/loader.hpp"

#include <stdexcept>

namespace parley::runtime {

namespace {
int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
           std::chrono::steady_clock::now().time_since_epoch())
    .count();
}

/// "host:port" -> (host, port); port 0 when a row's address is malformed (such a member is
/// never dialled).
std::pair<std::string, uint16_t> split(const std::string& address) {
  try {
    return config::split_host_port(address, "nodes.address");
  } catch (const std::exception&) {
    return {address, 0};
  }
}
} // namespace

cluster_membership::cluster_membership(
  persistence::cluster_store& store, std::shared_ptr<actors::cluster_identity> identity,
  const config::cluster_settings& settings, std::string address, std::string http_address,
  log::logger_ptr logger, std::function<void(std::vector<actors::cluster_member>)> on_members,
  std::function<void()> on_fence)
  : store_(store), identity_(std::move(identity)), settings_(settings),
    address_(std::move(address)), http_address_(std::move(http_address)),
    logger_(std::move(logger)), on_members_(std::move(on_members)),
    on_fence_(std::move(on_fence)) {}

cluster_membership::~cluster_membership() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable())
    thread_.join();
}

void cluster_membership::join(bool wait) {
  auto give_up = std::chrono::steady_clock::now() +
                 std::chrono::milliseconds(settings_.lease_ttl_ms + 1000);
  bool told = false;
  for (;;) {
    auto sent = steady_ns();
    auto lease = store_.join_node(identity_->node_id(), address_, http_address_,
                                  settings_.lease_ttl_ms);
    if (!lease.ok() && wait && lease.code() == persistence::persistence_errc::conflict &&
        std::chrono::steady_clock::now() < give_up) {
      // Another incarnation of this node id is live: a crashed process whose lease has not
      // run out yet (then we wait for it), or a second process with the same node id (then
      // its renewals keep it live and we give up).
      if (!told)
        log::event(logger_, spdlog::level::warn, "node id in use, waiting for its lease to end")
          .str("node_id", identity_->node_id())
          .str("detail", lease.error().detail);
      told = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(std::max(settings_.lease_ttl_ms / 10, 10)));
      continue;
    }
    if (!lease.ok())
      throw std::runtime_error("cannot join the cluster: " + lease.error().detail);
    accept_lease(sent, *lease);
    return;
  }
}

void cluster_membership::accept_lease(int64_t sent, const persistence::node_lease& lease_value) {
  const auto* lease = &lease_value;
  deadline_ns_.store(sent + int64_t{settings_.lease_ttl_ms} * 900000, std::memory_order_release);
  identity_->set_lease_deadline(sent + int64_t{settings_.lease_ttl_ms} * 900000);
  held_incarnation_.store(lease->incarnation, std::memory_order_release);
  identity_->set_incarnation(lease->incarnation);
  log::event(logger_, spdlog::level::info, "joined the cluster")
    .str("node_id", identity_->node_id())
    .num("incarnation", lease->incarnation)
    .str("address", address_)
    .num("lease_ttl_ms", settings_.lease_ttl_ms);
  publish_members();
}

void cluster_membership::start() { thread_ = std::thread([this] { run(); }); }

void cluster_membership::run() {
  auto period = std::chrono::milliseconds(std::max(settings_.lease_ttl_ms / 4, 1));
  // After a renewal that failed for want of the database (not a refusal), try again soon:
  // two slow rounds in a row must not fence a healthy node.
  auto retry = std::chrono::milliseconds(std::max(settings_.lease_ttl_ms / 10, 1));
  bool failed = false;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (cv_.wait_for(lock, failed ? retry : period, [this] { return stop_; }))
        return;
    }
    failed = false;
    if (held_incarnation_.load(std::memory_order_acquire) == 0) {
      // Fenced: come back as a new incarnation (our old tenants are free to claim by then).
      try {
        join();
        if (draining_.load())
          (void)store_.set_node_status(identity_->node_id(), identity_->incarnation(), "draining");
      } catch (const std::exception& e) {
        log::event(logger_, spdlog::level::warn, "cluster rejoin failed").str("error", e.what());
      }
      continue;
    }
    if (renew_once())
      publish_members();
    else
      failed = held_incarnation_.load(std::memory_order_acquire) != 0;
  }
}

bool cluster_membership::renew_once() {
  auto inc = held_incarnation_.load(std::memory_order_acquire);
  auto sent = steady_ns();
  auto lease = store_.renew_lease(identity_->node_id(), inc, settings_.lease_ttl_ms);
  if (lease.ok()) {
    // Only if nobody fenced meanwhile: a fenced lease stays fenced until we join again.
    if (held_incarnation_.load(std::memory_order_acquire) == inc) {
      deadline_ns_.store(sent + int64_t{settings_.lease_ttl_ms} * 900000,
                         std::memory_order_release);
      identity_->set_lease_deadline(sent + int64_t{settings_.lease_ttl_ms} * 900000);
    }
    return true;
  }
  if (lease.code() == persistence::persistence_errc::conflict) {
    // The database will not renew it: expired, or another process took our node id.
    fence("the lease was not renewed (expired or replaced)");
    return false;
  }
  // The database is unreachable: keep trying; the watchdog fences at the deadline.
  log::event(logger_, spdlog::level::warn, "lease renewal failed")
    .str("error", lease.error().detail);
  return false;
}

void cluster_membership::publish_members() {
  auto nodes = store_.list_nodes();
  if (!nodes.ok()) {
    log::event(logger_, spdlog::level::warn, "cluster members unreadable")
      .str("error", nodes.error().detail);
    return;
  }
  std::vector<actors::cluster_member> members;
  for (auto& n : *nodes) {
    if (!n.live)
      continue;
    auto [host, port] = split(n.address);
    members.push_back({n.id, n.incarnation, host, port, n.status == "active"});
  }
  live_members_.store(static_cast<int>(members.size()), std::memory_order_relaxed);
  on_members_(std::move(members));
}

bool cluster_membership::has_lease() const {
  return held_incarnation_.load(std::memory_order_acquire) != 0 &&
         steady_ns() < deadline_ns_.load(std::memory_order_acquire);
}

bool cluster_membership::fence_if_expired() {
  if (held_incarnation_.load(std::memory_order_acquire) == 0 ||
      steady_ns() < deadline_ns_.load(std::memory_order_acquire))
    return false;
  fence("the lease's deadline passed without a renewal");
  return true;
}

void cluster_membership::fence(const char* why) {
  auto inc = held_incarnation_.exchange(0, std::memory_order_acq_rel);
  if (inc == 0)
    return;
  identity_->set_incarnation(0);
  log::event(logger_, spdlog::level::err, "cluster lease lost: serving no tenants")
    .str("node_id", identity_->node_id())
    .num("incarnation", inc)
    .str("why", why);
  on_fence_();
}

void cluster_membership::drain() {
  draining_.store(true);
  auto inc = held_incarnation_.load(std::memory_order_acquire);
  if (inc == 0)
    return;
  auto r = store_.set_node_status(identity_->node_id(), inc, "draining");
  if (!r.ok())
    log::event(logger_, spdlog::level::warn, "cannot mark the node draining")
      .str("error", r.error().detail);
}

void cluster_membership::leave() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable())
    thread_.join();
  auto inc = held_incarnation_.exchange(0, std::memory_order_acq_rel);
  identity_->set_incarnation(0);
  if (inc == 0)
    return;
  auto r = store_.set_node_status(identity_->node_id(), inc, "left");
  if (!r.ok())
    log::event(logger_, spdlog::level::warn, "cannot mark the node left")
      .str("error", r.error().detail);
  else
    log::event(logger_, spdlog::level::info, "left the cluster")
      .str("node_id", identity_->node_id())
      .num("incarnation", inc);
}

} // namespace parley::runtime
