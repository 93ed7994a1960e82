#pragma once

#include "parley/actors/protocol.hpp"
#include "parley/config/logging.hpp"

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>

namespace parley::actors {

/// Registers parley's message types and error category with a CAF config. Call before
/// constructing the actor_system.
void register_types(caf::actor_system_config& cfg);

/// Spawns this node's tenant manager. Thread-safe (any thread, typically runtime at start).
tenant_manager_actor spawn_tenant_manager(caf::actor_system& sys, log::logger_ptr logger);

/// Spawns the tenant directory for a single node: every tenant is owned by `local`.
tenant_directory_actor spawn_tenant_directory(caf::actor_system& sys, tenant_manager_actor local);

} // namespace parley::actors
