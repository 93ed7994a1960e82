#pragma once

#include "parley/actors/protocol.hpp"

#include <caf/event_based_actor.hpp>

#include <chrono>
#include <string>
#include <utility>

namespace parley::net {

/// Finds a tenant's actor the one way every caller must: ask the tenant directory which
/// manager owns the tenant (this node, or in a cluster its owner node), then ask that manager
/// for the tenant actor. Calls `found(tenant_actor)` or `failed(const caf::error&)` from
/// `self`'s context; each step times out after 5 s.
template <class Found, class Failed>
void with_tenant(caf::event_based_actor* self, const actors::tenant_directory_actor& directory,
                 const std::string& tenant_id, Found found, Failed failed) {
  using namespace std::chrono_literals;
  self->request(directory, 5s, actors::locate_atom::value, tenant_id)
    .then(
      [=](actors::tenant_manager_actor manager) mutable {
        self->request(manager, 5s, actors::tenant_atom::value, tenant_id)
          .then([=](actors::tenant_actor tenant) mutable { found(std::move(tenant)); }, failed);
      },
      failed);
}

} // namespace parley::net
