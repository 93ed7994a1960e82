#pragma once

#include "parley/actors/protocol.hpp"
#include "parley/actors/services.hpp"
#include "parley/net/middleware.hpp"
#include "parley/net/router.hpp"
#include "parley/net/tenant_locator.hpp"
#include "parley/persistence/executor.hpp"
#include "parley/persistence/store.hpp"

#include <caf/actor_system.hpp>

#include <atomic>
#include <memory>

namespace parley::net {

/// What the chat and conversation routes need; owned by runtime, outlives the server.
struct chat_deps {
  caf::actor_system& sys;
  std::shared_ptr<tenant_locator> tenants; ///< finds tenant actors (runtime owns it)
  persistence::store& store;
  persistence::store_executor& executor;
  /// Chat requests in flight on this node (relays alive), and the bound beyond which new
  /// ones are shed with 503.
  std::shared_ptr<std::atomic<int64_t>> in_flight;
  int64_t max_in_flight = 20000;
  actors::admission_counters* counters = nullptr;
};

/// Adds POST /v1/chat/completions: validates the body, spawns a relay actor (the only bridge
/// between Asio and CAF) that asks the tenant's actor to run the completion and writes its
/// events back as one JSON body or as an SSE stream. A client that goes away cancels the
/// upstream call.
void add_chat_routes(router& r, chat_deps deps);

/// Adds OpenAI's x-ratelimit-* headers and the IETF draft's RateLimit-Policy / RateLimit for
/// the limits the snapshot shows configured (call before the exchange responds).
void add_rate_headers(exchange& ex, const actors::rate_snapshot& r);

/// Middleware: every authenticated /v1 response other than chat completions (which get them
/// from admission) carries the tenant's rate-limit headers, asked of its tenant actor.
std::unique_ptr<middleware> make_rate_headers(caf::actor_system& sys,
                                              std::shared_ptr<tenant_locator> tenants);

/// Adds the server-side conversations API: POST/GET /v1/conversations,
/// GET/DELETE /v1/conversations/{id}, GET /v1/conversations/{id}/items. Every id is looked
/// up within the caller's tenant: another tenant's id answers 404 like a missing one.
void add_conversation_routes(router& r, chat_deps deps);

} // namespace parley::net
