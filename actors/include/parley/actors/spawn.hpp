#pragma once

#include "parley/actors/protocol.hpp"
#include "parley/actors/services.hpp"
#include "parley/config/logging.hpp"

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/io/middleman_actor.hpp>

namespace parley::actors {

/// Registers parley's message types and error category with a CAF config. Call before
/// constructing the actor_system.
void register_types(caf::actor_system_config& cfg);

/// Spawns this node's tenant manager. Thread-safe (any thread, typically runtime at start).
/// `svc` may be null for tests that exercise supervision only.
tenant_manager_actor spawn_tenant_manager(caf::actor_system& sys, log::logger_ptr logger,
                                          std::shared_ptr<const chat_services> svc = nullptr);

/// The built-in `parley-echo` provider (streams the last user message back word by word,
/// `tokens_per_second` per second; 0 = as fast as possible).
std::shared_ptr<provider_port> make_echo_provider(caf::actor_system& sys, int tokens_per_second);

/// Spawns the tenant directory for a single node: every tenant is owned by `local`.
tenant_directory_actor spawn_tenant_directory(caf::actor_system& sys, tenant_manager_actor local);

/// Spawns a cluster node's turn gateway (one per node): stateless completions for tenants
/// that other nodes own are admitted there and run here, with `svc`'s routes and ledger; an
/// admission not answered within `call_timeout` fails with request_timeout.
turn_gateway_actor spawn_turn_gateway(caf::actor_system& sys,
                                      std::shared_ptr<const chat_services> svc,
                                      std::chrono::milliseconds call_timeout);

/// Spawns the tenant directory of a cluster node: tenants are placed over the members it is
/// sent (members_atom), and other nodes' managers are reached over the middleman (which must
/// be loaded), each call within `call_timeout`.
/// `connector` dials other nodes: the middleman's actor (plain TCP) or the OpenSSL manager's
/// (mutual TLS); null: the middleman's.
tenant_directory_actor spawn_cluster_directory(caf::actor_system& sys, tenant_manager_actor local,
                                               std::shared_ptr<const cluster_identity> cluster,
                                               std::chrono::milliseconds call_timeout,
                                               caf::io::middleman_actor connector = {},
                                               log::logger_ptr logger = nullptr);

} // namespace parley::actors
