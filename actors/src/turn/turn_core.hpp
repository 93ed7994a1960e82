#pragma once

#include "parley/actors/protocol.hpp"
#include "parley/actors/services.hpp"
#include "parley/tenants/tenant_config.hpp"

#include <functional>
#include <memory>
#include <vector>

/// The one turn engine: what a completion does between admission and its end, for stateless
/// completions (owned by the tenant actor) and conversation turns (owned by the conversation
/// actor) alike. Not an actor: provider events arrive on the provider's thread and go straight
/// to the relay (one message per token), under one mutex.
namespace parley::actors::detail {

/// What a turn starts from.
struct turn_spec {
  chat_request req;
  route r;
  std::shared_ptr<const tenants::tenant_config> cfg;
  turn_sink_actor relay;
  uint64_t turn_id = 0;            ///< the conversation's turn id (0 for stateless turns)
  /// Conversation turns: the committed history the prompt may draw on, and the seq the
  /// assistant reply takes (committed with the turn's usage before the client sees the end).
  std::vector<chat_message> history;
  int64_t reply_seq = 0;
};

/// Called exactly once when the turn has ended and what it must make durable was committed
/// (or failed to be): from a writer, provider or actor thread -- hand off only.
using turn_end_fn = std::function<void(turn_outcome)>;

/// Tells the relay how its turn ended (done or failed), when `o.tell`. The tenant calls it
/// after settling the turn; see turn_outcome.
void tell_end(const turn_outcome& o);

/// A started turn, as its owner holds it: cancel() it (the client went away, or the owner
/// stops), or read what it has charged.
class turn_handle : public call_handle {
public:
  /// The tokens the turn's ledger rows charge so far (its closed attempts). Final once the
  /// turn has finished: it ended by itself, or cancel() returned (which closes the running
  /// attempt, charged for what the client received). Any thread.
  virtual int64_t charged() const = 0;
};

/// Starts a turn: builds the prompt (system prompt, history newest first within the model's
/// context, the new messages), calls the provider, forwards deltas to the relay, cuts the
/// completion off at the tenant's budget, records one usage ledger row per upstream attempt,
/// and commits the ledger rows (and a conversation's reply) before the relay sees the end.
/// The handle cancels it (the client went away, or its owner stops): what the upstream
/// already produced still counts; nothing more reaches the relay.
std::shared_ptr<turn_handle> start_turn(turn_spec spec, std::shared_ptr<const chat_services> svc,
                                        turn_end_fn on_end);

/// The prompt of a turn: the tenant's system prompt, then `history` newest-first as far as
/// the budget allows (kept in order), then `fresh`. Fails when `fresh` alone is over budget.
bool build_prompt(const tenants::tenant_config& cfg, const std::vector<chat_message>& history,
                  const std::vector<chat_message>& fresh, int64_t budget_tokens,
                  std::vector<chat_message>& out);

/// The estimated prompt cost of the tenant's system prompt (0 when it has none).
int64_t system_prompt_tokens(const tenants::tenant_config& cfg);

} // namespace parley::actors::detail
