#pragma once

#include "parley/actors/protocol.hpp"

#include <caf/actor_cast.hpp>
#include <caf/event_based_actor.hpp>

#include <chrono>
#include <string>
#include <utility>

namespace parley::net {

namespace detail {
/// A process-wide cache of tenant actor addresses (weak: a stopped tenant is not kept alive),
/// keyed by the directory and the tenant id, so that the hot path skips the two lookup round
/// trips. Thread-safe (a reader-writer lock).
caf::actor_addr cached_tenant(const actors::tenant_directory_actor& directory, const std::string& tenant_id);
void cache_tenant(const actors::tenant_directory_actor& directory, const std::string& tenant_id,
                  const caf::actor_addr& tenant);
void forget_tenant(const actors::tenant_directory_actor& directory, const std::string& tenant_id);
} // namespace detail

/// Finds (or starts) the tenant's actor: from the cache when it is alive, else through the
/// directory (which knows the tenant's manager) and the manager (which spawns or returns the
/// tenant actor). `found(tenant_actor)` or `failed(caf::error)` runs in `self`'s context.
template <class Self, class Found, class Failed>
void with_tenant(Self* self, const actors::tenant_directory_actor& directory,
                 const std::string& tenant_id, Found found, Failed failed) {
  using namespace std::chrono_literals;
  if (auto addr = detail::cached_tenant(directory, tenant_id))
    if (auto t = caf::actor_cast<actors::tenant_actor>(addr))
      return found(std::move(t));
  self->request(directory, 5s, actors::locate_atom::value, tenant_id)
    .then(
      [=](actors::tenant_manager_actor manager) mutable {
        self->request(manager, 5s, actors::tenant_atom::value, tenant_id)
          .then(
            [=](actors::tenant_actor tenant) mutable {
              detail::cache_tenant(directory, tenant_id, tenant.address());
              found(std::move(tenant));
            },
            failed);
      },
      failed);
}

} // namespace parley::net
