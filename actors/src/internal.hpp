#pragma once

#include "parley/actors/protocol.hpp"
#include "parley/actors/services.hpp"
#include "parley/tenants/response_cache.hpp"
#include "parley/tenants/tenant_config.hpp"

#include <caf/all.hpp>

#include <memory>

/// Declarations shared by the actor implementations (not public).
namespace parley::actors::detail {

/// Starts one stateless completion: it calls the provider, forwards events to `relay`,
/// records usage, and tells `tenant` (ended_atom) when it ends. cancel() on the handle stops
/// it (the client went away). Callable from the tenant actor only.
std::shared_ptr<call_handle> start_turn(chat_request req, const route& r,
                                        std::shared_ptr<const tenants::tenant_config> cfg,
                                        caf::actor relay, tenant_actor tenant,
                                        std::shared_ptr<const chat_services> svc);

/// Spawns an actor that replays a cached completion to `relay` (deltas, then done) -- the
/// upstream is not called.
caf::actor spawn_replay(caf::local_actor* parent, tenants::cached_completion hit, std::string model,
                        caf::actor relay);

/// Spawns the actor of one conversation (history, one turn at a time, passivation).
caf::actor spawn_conversation(caf::local_actor* parent, std::string tenant_id,
                              std::string conversation_id, caf::actor tenant,
                              std::shared_ptr<const chat_services> svc);

/// The prompt of a turn: the tenant's system prompt, then `history` newest-first as far as
/// the budget allows (kept in order), then `fresh`. Fails when `fresh` alone is over budget.
bool build_prompt(const tenants::tenant_config& cfg, const std::vector<chat_message>& history,
                  const std::vector<chat_message>& fresh, int64_t budget_tokens,
                  std::vector<chat_message>& out);

/// Records one finished attempt in the usage batcher.
void record_usage(const chat_services& svc, const chat_request& req, const chat_done& d,
                  bool failed);

/// The message a tenant actor receives when a turn or conversation turn ends.
using turn_end_atom = caf::atom_constant<caf::atom("turnend")>;

} // namespace parley::actors::detail
