#pragma once

#include "parley/actors/protocol.hpp"
#include "parley/config/metrics.hpp"

#include <caf/actor_cast.hpp>

#include <chrono>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <utility>

namespace parley::net {

/// Finds tenant actors for the handlers: the tenant directory (which knows each tenant's
/// manager) and a cache of the tenant actors found, so that the hot path skips the two lookup
/// round trips. The cache holds addresses only (weak: a stopped tenant actor is not kept
/// alive and is looked up afresh). One per node, owned by runtime and shared by the chat,
/// conversation and admin routes. Thread-safe (a reader-writer lock).
class tenant_locator {
public:
  explicit tenant_locator(actors::tenant_directory_actor directory)
    : directory_(std::move(directory)) {}

  const actors::tenant_directory_actor& directory() const noexcept { return directory_; }

  /// The tenant actor last found for `tenant_id`, if it is still alive.
  actors::tenant_actor cached(const std::string& tenant_id) const;
  void remember(const std::string& tenant_id, const caf::actor_addr& tenant);
  /// Drops a cached tenant actor (it stopped, or failed to answer).
  void forget(const std::string& tenant_id);
  std::size_t cached_count() const;

  /// Finds (or starts) the tenant's actor: from the cache when it is alive, else through the
  /// directory and the manager (which spawns or returns the tenant actor). `found(tenant_actor)`
  /// or `failed(caf::error)` runs in `self`'s context. The locator must outlive the lookup
  /// (runtime owns it for the node's life).
  template <class Self, class Found, class Failed>
  void find(Self* self, const std::string& tenant_id, Found found, Failed failed) {
    if (auto t = cached(tenant_id))
      return found(std::move(t));
    auto* me = this;
    self->request(directory_, timeout_, actors::locate_atom::value, tenant_id)
      .then(
        [=](actors::tenant_manager_actor manager) mutable {
          me->ask_manager(self, std::move(manager), tenant_id, true, std::move(found),
                          std::move(failed));
        },
        failed);
  }

  /// Cluster: admissions this node sent to a tenant on another node, those that failed
  /// (the client got a 503), and the round trip of the successful ones.
  struct remote_stats {
    std::atomic<uint64_t> forwarded{0};
    std::atomic<uint64_t> failed{0};
    metrics::histogram* latency = nullptr; ///< seconds; null: not measured
  };
  remote_stats& remote() noexcept { return remote_; }

  /// Cluster: this node's turn gateway, through which stateless completions for tenants that
  /// other nodes own are admitted there and run here (null: the owner runs them).
  /// Thread-safe: runtime replaces a gateway that stopped unexpectedly.
  void set_gateway(actors::turn_gateway_actor g) {
    std::unique_lock<std::shared_mutex> lock(mu_);
    gateway_ = std::move(g);
  }
  actors::turn_gateway_actor gateway() const {
    std::shared_lock<std::shared_mutex> lock(mu_);
    return gateway_;
  }

  /// Deadline of each lookup step (a remote manager's included): the cluster's call timeout.
  void set_timeout(std::chrono::milliseconds t) noexcept { timeout_ = t; }
  std::chrono::milliseconds timeout() const noexcept { return timeout_; }

private:
  /// Asks `manager` for the tenant's actor. In a cluster, a manager whose node does not own
  /// the tenant names the node that does (not_owner): asked once more, there.
  template <class Self, class Found, class Failed>
  void ask_manager(Self* self, actors::tenant_manager_actor manager, const std::string& tenant_id,
                   bool may_redirect, Found found, Failed failed) {
    auto* me = this;
    self->request(manager, timeout_, actors::tenant_atom::value, tenant_id)
      .then(
        [=](actors::tenant_actor tenant) mutable {
          me->remember(tenant_id, tenant.address());
          found(std::move(tenant));
        },
        [=](caf::error& err) mutable {
          if (!may_redirect || err != actors::actor_errc::not_owner ||
              !err.context().template match_elements<std::string, std::string>())
            return failed(err);
          auto owner = err.context().template get_as<std::string>(0);
          auto address = err.context().template get_as<std::string>(1);
          self->request(me->directory_, me->timeout_, actors::locate_atom::value,
                        actors::node_atom::value, owner, address)
            .then(
              [=](actors::tenant_manager_actor at_owner) mutable {
                me->ask_manager(self, std::move(at_owner), tenant_id, false, std::move(found),
                                std::move(failed));
              },
              failed);
        });
  }

  actors::tenant_directory_actor directory_;
  actors::turn_gateway_actor gateway_;
  std::chrono::milliseconds timeout_{5000};
  remote_stats remote_;
  mutable std::shared_mutex mu_;
  std::unordered_map<std::string, caf::actor_addr> cache_;
};

} // namespace parley::net
