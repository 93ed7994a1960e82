#pragma once

#include "parley/actors/chat.hpp"
#include "parley/actors/cluster.hpp"

#include <caf/actor.hpp>
#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include <cstdint>
#include <string>
#include <vector>

/// The message protocol between parley's actors: atoms, error codes and the typed
/// interfaces. Actor code lives in actors/src; only these aliases are public.
namespace parley::actors {

// Atoms: at most 10 characters of [A-Za-z0-9_] (CAF 0.17). caf:: already has get_atom etc.
using locate_atom = caf::atom_constant<caf::atom("locate")>;
using tenant_atom = caf::atom_constant<caf::atom("tenant")>;
using stats_atom = caf::atom_constant<caf::atom("stats")>;
using config_atom = caf::atom_constant<caf::atom("config")>;
/// An idle conversation asks its tenant to let it passivate (see tenant_actor).
using passivate_atom = caf::atom_constant<caf::atom("passivate")>;
/// Cluster: a node (by id), the live members, a lost lease, a claim's outcome.
using node_atom = caf::atom_constant<caf::atom("node")>;
using members_atom = caf::atom_constant<caf::atom("members")>;
using fence_atom = caf::atom_constant<caf::atom("fence")>;
using claimed_atom = caf::atom_constant<caf::atom("claimed")>;
/// Cluster: a stateless completion admitted by its tenant's owner, run by the ingress node.
using admit_atom = caf::atom_constant<caf::atom("admit")>;
/// A periodic check of deadlines (the turn gateway's pending admissions).
using tick_atom = caf::atom_constant<caf::atom("tick")>;

/// Errors that actors answer with (registered with CAF as category "parley").
enum class actor_errc : uint8_t {
  tenant_isolated = 1, ///< the tenant crashed too often and is isolated for a while
  overloaded = 2,      ///< the node or tenant has no room for more in-flight work
  draining = 3,        ///< the node is shutting down
  unknown_tenant = 4,  ///< no such tenant (or not owned by this node)
  not_owner = 5,       ///< another live node owns the tenant (context: its node id, address)
  no_lease = 6,        ///< this node holds no live lease: it serves no tenants now
  node_unreachable = 7,///< the owner node cannot be reached (context: its node id)
};

/// Human-readable name of an actor error code.
const char* to_string(actor_errc code) noexcept;
/// Human-readable name of a chat error kind.
const char* to_string(chat_error_kind kind) noexcept;

/// Counters a tenant manager reports.
struct manager_stats {
  uint64_t active_tenants = 0;  ///< tenant actors alive now
  uint64_t spawned = 0;         ///< tenant actors spawned since start
  uint64_t restarts = 0;        ///< tenant actors restarted after a crash
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, manager_stats& x) {
  return f(caf::meta::type_name("manager_stats"), x.active_tenants, x.spawned, x.restarts);
}

/// Where a turn's events go: the relay that holds the client's exchange. In order: zero or
/// more deltas (a served model first when a fallback serves it), then one done or failed --
/// the end always from the tenant, once it has settled the turn. The tenant tells the end of
/// every turn it admitted, also when a conversation producer stops first (the end it handed the
/// tenant before stopping, or a failure settled at its down message): a sink whose producer (a
/// conversation) stops watches the tenant from then on; only the tenant's down ends it unheard.
using turn_sink_actor = caf::typed_actor<
  caf::reacts_to<delta_atom, std::string>,
  caf::reacts_to<served_atom, std::string>,
  caf::reacts_to<done_atom, chat_done>,
  caf::reacts_to<failed_atom, chat_failure>>;

/// How a turn ended, as its owner (the tenant actor for a stateless completion, the
/// conversation actor for a conversation turn) learns it: after what the turn had to make
/// durable was committed, or failed to be.
struct turn_outcome {
  uint64_t turn_id = 0;         ///< the conversation's turn id (0 for stateless turns)
  std::string request_id;
  bool completed = false;       ///< the client got the whole answer (and it is durable)
  chat_done done;               ///< set when the upstream finished
  /// Tokens the turn really used (its ledger rows summed): settles the admission estimate.
  int64_t tokens = 0;
  /// The commit of the turn's ledger rows (and reply): ok, or why it failed.
  persistence::persistence_errc store = persistence::persistence_errc::ok;
  chat_message reply;           ///< a conversation turn's assistant reply (completed turns)
  int64_t reply_seq = 0;        ///< its seq (0 = no reply written)
  std::string cache_key;        ///< a stateless turn that fills the response cache...
  std::vector<std::string> deltas; ///< ...with these deltas
  /// The end the client is told, by the tenant once it has settled the turn (so that the
  /// next request of a client that saw the end finds the turn's slot free, its tokens counted
  /// and its answer cached): `done` when completed, else `failure`. Nothing when !tell (the
  /// client went away).
  bool tell = false;
  chat_failure failure;
  turn_sink_actor relay;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, turn_outcome& x) {
  return f(caf::meta::type_name("turn_outcome"), x.turn_id, x.request_id, x.completed, x.done,
           x.tokens, x.store, x.reply, x.reply_seq, x.cache_key, x.deltas, x.tell, x.failure,
           x.relay);
}

/// The owner's answer to a stateless completion that another node (the ingress, through its
/// turn gateway) runs itself: refused (why, with the rate-limit state), a cache hit (replayed
/// by the ingress), or admitted with what admission decided. The ingress keeps the request's
/// messages; only the decided fields come back. The ingress reports the turn's end to the
/// owner (ended_atom), which settles it as it settles its own turns.
struct admission_grant {
  std::string request_id;
  bool admitted = false;
  chat_failure refusal;          ///< when !admitted
  rate_snapshot limits;
  std::string model;             ///< the model asked for (the tenant's default applied)
  int64_t max_tokens = 0;        ///< what the upstream is asked for (0 = not capped)
  int64_t completion_cap = 0;    ///< the daily budget's cut-off (0 = none)
  bool fill_cache = false;       ///< a cache miss: the end reports the deltas to fill it
  /// The tenant's config, when the owner holds a newer one than the request brought.
  std::string config_json;
  int64_t config_version = 0;
  /// A cache hit: the answer, replayed by the ingress (nothing to settle).
  bool cached = false;
  std::vector<std::string> deltas;
  chat_done done;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, admission_grant& x) {
  return f(caf::meta::type_name("admission_grant"), x.request_id, x.admitted, x.refusal, x.limits,
           x.model, x.max_tokens, x.completion_cap, x.fill_cache, x.config_json,
           x.config_version, x.cached, x.deltas, x.done);
}

/// What a relay tells the producer of its turn: its client (by request id) went away.
using turn_control_actor = caf::typed_actor<caf::reacts_to<cancel_atom, std::string>>;

/// One live conversation: its history, and its turns one at a time in arrival order. Every
/// store acknowledgement and turn end carries its turn's id; those of other turns are dropped.
using conversation_actor = caf::typed_actor<
  /// A new turn (admitted by the tenant): its events go to the sink.
  caf::reacts_to<chat_atom, chat_request, turn_sink_actor>,
  /// The client of a turn (by request id) went away.
  caf::reacts_to<cancel_atom, std::string>,
  /// The history, loaded off the scheduler (or why not).
  caf::reacts_to<loaded_atom, history_load>,
  /// Turn `id`'s user messages were committed (ok), or the reason they were not.
  caf::reacts_to<saved_atom, uint64_t, persistence::persistence_errc>,
  /// Turn `id`'s engine ended (its reply and usage committed, or not).
  caf::reacts_to<ended_atom, turn_outcome>,
  /// The idle timer of the given generation fired: if still idle, ask the tenant to let it
  /// passivate (passivate_atom), and quit when the tenant agrees.
  caf::reacts_to<idle_atom, uint64_t>>;

/// One tenant: the single owner of its limits, cache and conversations.
using tenant_actor = caf::typed_actor<
  /// The tenant id this actor owns.
  caf::replies_to<caf::get_atom>::with<std::string>,
  /// Replaces the tenant's config (JSON text, version) unless it holds a newer one.
  caf::reacts_to<config_atom, std::string, int64_t>,
  /// Admits a completion (model, limits, budget, cache). Answers with the producer to cancel
  /// when the client goes away and the tenant's rate-limit state; or refuses with an error
  /// whose code is a chat_error_kind and whose context is (chat_failure, rate_snapshot). The
  /// turn's events reach the sink only after this answer.
  caf::replies_to<chat_atom, chat_request, turn_sink_actor>::with<turn_control_actor, rate_snapshot>,
  /// Cluster: admits a stateless completion that the sender (another node's turn gateway)
  /// runs itself. Sent without a request id (the gateway keeps its own deadlines): the grant
  /// comes back as an ordinary message. The tenant counts the turn in flight until the
  /// gateway's ended_atom, or until the gateway's node goes away (then it is charged what
  /// admission reserved).
  caf::replies_to<admit_atom, chat_request>::with<admission_grant>,
  /// Today's spent tokens (day start, tokens; -1 = the store could not say), from the loader.
  caf::reacts_to<budget_atom, int64_t, int64_t>,
  /// The current rate-limit state (after applying the given config JSON and version, unless
  /// the actor holds a newer one), taking nothing.
  caf::replies_to<limits_atom, std::string, int64_t>::with<rate_snapshot>,
  /// Empties the response cache; answers the number of entries dropped.
  caf::replies_to<flush_atom>::with<int64_t>,
  /// A conversation was deleted: stop its actor. Its unended turns fail with not_found.
  caf::reacts_to<forget_atom, std::string>,
  /// An idle conversation actor (the sender), which has received `n` turns, asks to passivate.
  /// The tenant agrees (true) only when it has sent that actor exactly `n` turns, and then
  /// forgets it in the same step: no turn can reach it anymore, the next one spawns a fresh
  /// actor. Otherwise (false) turns are on their way to it and it must stay. An actor the
  /// tenant has already forgotten (a deleted conversation) is agreed to.
  caf::replies_to<passivate_atom, uint64_t>::with<bool>,
  /// The client of a stateless turn (by request id) went away: stop its upstream call.
  caf::reacts_to<cancel_atom, std::string>,
  /// A turn ended (stateless, or from a conversation): settles the admission estimate and
  /// budget reservation with what it really used; fills the response cache; then tells the
  /// client. Every admitted turn is settled exactly once: an end for a turn that is not in
  /// flight (settled already, because its conversation actor stopped first) is ignored.
  caf::reacts_to<ended_atom, turn_outcome>,
  /// A conversation actor that is stopping (deleted, or a crash) cancelled the engine of its
  /// running turn (request id): the tokens that turn's ledger rows charge. Sent from the
  /// actor's cleanup, so it arrives before the actor's down message, at which the tenant
  /// settles the actor's unended turns (this one with these tokens, the others with none) and
  /// tells their clients it failed.
  caf::reacts_to<charged_atom, std::string, int64_t>>;

/// Supervises the tenant actors of this node: spawns one on first use, monitors it.
using tenant_manager_actor = caf::typed_actor<
  /// The tenant actor for a tenant id (spawned on first use). In a cluster the node first
  /// claims the tenant in the store; when another live node owns it the answer is the error
  /// not_owner with that node's id as context, and no_lease while this node holds no lease.
  caf::replies_to<tenant_atom, std::string>::with<tenant_actor>,
  caf::replies_to<stats_atom>::with<manager_stats>,
  /// The outcome of a claim this manager started (from the persistence worker): tenant id,
  /// the incarnation it claimed for, epoch (> 0: claimed), else the live owner's node id and
  /// cluster address, or "" and why.
  caf::reacts_to<claimed_atom, std::string, int64_t, int64_t, std::string, std::string,
                 std::string>,
  /// This node lost its lease: stop every tenant actor now (another node may take them).
  caf::reacts_to<fence_atom>>;

/// A cluster node's gateway for stateless completions whose tenant another node owns: it asks
/// the owner to admit (admit_atom), runs the admitted turn here -- this node's routes, upstream
/// connections and usage ledger -- and reports the end to the owner. Three messages cross
/// nodes per completion (admission, grant, end), all between long-lived actors, so no actor
/// reference is announced per request; deltas never cross. One per node.
using turn_gateway_actor = caf::typed_actor<
  /// Like tenant_actor's chat_atom, for the given (remote) tenant: answers with the producer
  /// to cancel (the gateway) and the rate-limit state, or the refusal the owner gave; fails
  /// with request_timeout past the cluster's call timeout and with request_receiver_down when
  /// the owner's tenant actor or node went away.
  caf::replies_to<chat_atom, tenant_actor, chat_request, turn_sink_actor>::with<turn_control_actor,
                                                                                rate_snapshot>,
  /// The client of a turn (by request id) went away: stop it.
  caf::reacts_to<cancel_atom, std::string>,
  /// An owner's answer to an admission.
  caf::reacts_to<admission_grant>,
  /// A turn run here ended.
  caf::reacts_to<ended_atom, turn_outcome>,
  /// Deadlines of pending admissions.
  caf::reacts_to<tick_atom>>;

/// Knows which node's tenant manager owns a tenant. On a single node: always the local one.
/// In a cluster it answers with the owner node's manager (reached over CAF's middleman).
using tenant_directory_actor = caf::typed_actor<
  /// The manager of the node where the tenant is placed.
  caf::replies_to<locate_atom, std::string>::with<tenant_manager_actor>,
  /// The manager of a given node (the owner named by a not_owner answer), dialled at the
  /// given address when this node's member list does not know it yet.
  caf::replies_to<locate_atom, node_atom, std::string, std::string>::with<tenant_manager_actor>,
  /// The live members, from the membership loop (cluster only).
  caf::reacts_to<members_atom, std::vector<cluster_member>>>;

} // namespace parley::actors

CAF_ERROR_CODE_ENUM(parley::actors::actor_errc, "parley")
CAF_ERROR_CODE_ENUM(parley::actors::chat_error_kind, "chat")
