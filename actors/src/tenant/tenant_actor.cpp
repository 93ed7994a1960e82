// The tenant actor: the single owner of one tenant's limits, budget, response cache and
// conversations. It admits completions (model, concurrency, rates, budget, cache), starts
// stateless turns itself and hands conversation turns to their conversation actor, which
// passivates only with its agreement (passivate_atom; see conversation_actor.cpp). It settles
// every turn it admitted exactly once: at the turn's `ended`, or -- for a conversation turn
// whose actor stopped first (deleted, or a crash) -- at that actor's down message.
#include "internal.hpp"
#include "turn/turn_core.hpp"

#include "parley/persistence/ids.hpp"
#include "parley/tenants/rate_limiter.hpp"
#include "parley/tenants/response_cache.hpp"
#include "parley/tenants/token_budget.hpp"

#include <algorithm>
#include <functional>
#include <optional>
#include <unordered_map>
#include <unordered_set>

namespace parley::actors {
namespace {

struct tenant_state {
  live_count live;
  std::shared_ptr<std::atomic<int64_t>> load; ///< our in_flight, published on the load board
  tenant_load_board* board = nullptr;
  std::string tenant_id;
  std::string config_json;
  int64_t config_version = 0; ///< the tenant row's updated_at that config_json came with
  std::shared_ptr<const tenants::tenant_config> cfg = std::make_shared<tenants::tenant_config>();
  std::shared_ptr<const chat_services> svc;
  /// A live conversation actor, and how many turns we sent it (the passivation handshake).
  struct conversation_entry {
    conversation_actor actor;
    uint64_t turns_sent = 0;
  };
  std::unordered_map<std::string, conversation_entry> conversations;
  std::unordered_map<caf::actor_addr, std::string> conversation_by_addr;
  std::unordered_set<caf::actor_addr> children; ///< linked conversations alive
  std::unordered_map<std::string, std::shared_ptr<detail::turn_handle>> turns; ///< stateless calls by request id
  /// Cluster: stateless turns we admitted that another node's turn gateway runs (by request
  /// id), until its ended_atom; and the gateways we monitor (their node going away settles
  /// their turns).
  std::unordered_map<std::string, caf::actor_addr> remote_turns;
  std::unordered_set<caf::actor_addr> gateways;
  /// A conversation turn we sent and have not seen end. If its conversation actor stops
  /// first, we settle it at the actor's down message and tell its relay why.
  struct sent_turn {
    caf::actor_addr conversation;
    turn_sink_actor relay;
    int64_t charged = 0; ///< what its engine charged, when the stopping actor said (charged_atom)
  };
  std::unordered_map<std::string, sent_turn> sent_turns; ///< by request id
  /// Per conversation actor, until its down message: the turns we sent it and have not seen
  /// end (request ids, in the order sent), and whether we stopped it because it was deleted.
  struct actor_turns {
    std::vector<std::string> unended;
    bool deleted = false;
  };
  std::unordered_map<caf::actor_addr, actor_turns> turns_by_actor;
  int64_t in_flight = 0;
  // The tenant's limits: this actor is their single owner, so they are exact.
  tenants::rate_limiter requests;
  tenants::rate_limiter tokens;
  std::unordered_map<std::string, int64_t> estimates; ///< request id -> tokens taken at admission
  tenants::token_budget budget;
  std::unordered_map<std::string, int64_t> reservations; ///< request id -> budget reserved
  enum class budget_phase { unloaded, loading, loaded } budget_state = budget_phase::unloaded;
  struct waiting {
    chat_request req;
    turn_sink_actor relay;
    caf::typed_response_promise<turn_control_actor, rate_snapshot> promise;
    /// A remote admission (admit_atom): its gateway and its promise instead.
    caf::actor_addr gateway;
    caf::typed_response_promise<admission_grant> grant;
  };
  std::vector<waiting> waiting_for_budget;
  tenants::response_cache cache;
  static inline const char* name = "parley.tenant";

  ~tenant_state() {
    if (board && load)
      board->leave(tenant_id, load);
    // Admissions parked for today's budget: their relays ask without a timeout, and CAF 0.17
    // answers nothing for a promise that is dropped. Tell them we are gone (the relay looks
    // the tenant up afresh once, or answers 503).
    auto parked = std::move(waiting_for_budget);
    for (auto& w : parked)
      if (!w.gateway) // a gateway monitors us: our down answers its admissions (and retries)
        w.promise.deliver(caf::make_error(caf::sec::request_receiver_down));
    remote_count(-static_cast<int64_t>(remote_turns.size()));
    // Stopping (shutdown or a crash): the stateless calls stop with us.
    auto calls = std::move(turns);
    for (auto& [id, call] : calls)
      call->cancel();
  }
  /// Keeps the node's count of remote turns (actor_counters::remote_turns) in step.
  void remote_count(int64_t delta) {
    if (delta != 0 && svc && svc->actors)
      svc->actors->remote_turns.fetch_add(delta, std::memory_order_relaxed);
  }
  void publish_in_flight() {
    if (load)
      load->store(in_flight, std::memory_order_relaxed);
  }

  /// Applies a config that requests bring (from their node's key cache) unless it is older
  /// than ours: in a cluster, a node may still hold an old one for a moment after a change
  /// (docs/cluster.md), and going back to it would also restart every changed limit.
  void update_config(const std::string& json, int64_t version) {
    if (json.empty() || version < config_version)
      return;
    config_version = version;
    if (json == config_json)
      return;
    config_json = json;
    auto next = std::make_shared<tenants::tenant_config>(tenants::parse_stored_config(json));
    // A changed limit starts afresh; an unchanged one keeps its state.
    if (next->limits.requests_per_minute != cfg->limits.requests_per_minute ||
        requests.limit() != next->limits.requests_per_minute)
      requests = tenants::rate_limiter(next->limits.requests_per_minute, 60000);
    if (next->limits.tokens_per_minute != cfg->limits.tokens_per_minute ||
        tokens.limit() != next->limits.tokens_per_minute)
      tokens = tenants::rate_limiter(next->limits.tokens_per_minute, 60000);
    if (next->cache_ttl_seconds != cfg->cache_ttl_seconds)
      cache.clear();
    if (budget.limit() != next->limits.tokens_per_day) {
      budget = tenants::token_budget(next->limits.tokens_per_day);
      reservations.clear();
      budget_state = budget_phase::unloaded; // today's spending is read again
    }
    cfg = std::move(next);
  }

  /// Takes an admitted turn out of flight: true once per turn (a stateless turn, or a
  /// conversation turn we sent and have not settled); false for anything else.
  /// A remote turn is taken only by the gateway that runs it (`sender`).
  bool take_in_flight(const std::string& request_id, const caf::actor_addr& sender = {}) {
    if (turns.erase(request_id) > 0)
      return true;
    if (auto r = remote_turns.find(request_id); r != remote_turns.end()) {
      if (r->second != sender)
        return false;
      remote_turns.erase(r);
      remote_count(-1);
      return true;
    }
    auto it = sent_turns.find(request_id);
    if (it == sent_turns.end())
      return false;
    if (auto a = turns_by_actor.find(it->second.conversation); a != turns_by_actor.end()) {
      auto& ids = a->second.unended;
      ids.erase(std::remove(ids.begin(), ids.end(), request_id), ids.end());
    }
    sent_turns.erase(it);
    return true;
  }

  /// Settles a turn taken out of flight: frees its slot, and settles its admission estimate
  /// and budget reservation with the tokens it really `used` (what its ledger rows charge).
  void settle(const std::string& request_id, int64_t used, int64_t now) {
    if (in_flight > 0)
      --in_flight;
    publish_in_flight();
    if (auto b = reservations.find(request_id); b != reservations.end()) {
      budget.settle(now, b->second, used);
      reservations.erase(b);
    }
    if (auto e = estimates.find(request_id); e != estimates.end()) {
      if (e->second > 0)
        tokens.adjust(now, used - e->second);
      estimates.erase(e);
    }
  }

  rate_snapshot snapshot(const tenants::rate_limiter::decision& r,
                         const tenants::rate_limiter::decision& t) const {
    return {r.limit, r.remaining, r.reset_ms, t.limit, t.remaining, t.reset_ms};
  }
};

/// Tokens a request may use, estimated before the call: its prompt plus its max_tokens (or a
/// default completion allowance when it sets none); settled with the real usage afterwards.
constexpr int64_t default_completion_allowance = 256;
int64_t prompt_estimate(const chat_request& req, const tenants::tenant_config& cfg) {
  int64_t n = detail::system_prompt_tokens(cfg);
  n += req.extra_tokens;
  for (auto& m : req.messages)
    n += m.tokens;
  return n;
}

int64_t admission_estimate(const chat_request& req, const tenants::tenant_config& cfg) {
  return prompt_estimate(req, cfg) +
         (req.max_tokens > 0 ? req.max_tokens : default_completion_allowance);
}

/// What the upstream is asked for, decided here and never left to the upstream's default:
/// the least of the client's max_tokens, the model's cap, what the tenant's per-request token
/// limit leaves after the prompt, and what the daily budget leaves (completion_cap).
int64_t upstream_max_tokens(const chat_request& req, const route& r,
                            const tenants::tenant_limits& lim, int64_t prompt) {
  int64_t cap = 0;
  auto lower = [&cap](int64_t v) {
    if (v > 0 && (cap == 0 || v < cap))
      cap = v;
  };
  lower(req.max_tokens);
  lower(r.max_output_tokens);
  if (lim.max_request_tokens > 0)
    lower(std::max<int64_t>(1, lim.max_request_tokens - prompt));
  lower(req.completion_cap);
  return cap;
}

/// The tenant's answer to a completion: the producer to cancel and the rate-limit state, or
/// a refusal; and what starts the turn once the answer is on its way (so the relay holds the
/// answer before any of the turn's events).
struct admission {
  bool refused = false;
  chat_failure why; ///< when refused
  turn_control_actor producer;
  rate_snapshot limits;
  std::function<void()> go;
  /// A remote admission's cache hit (the gateway replays it).
  std::optional<tenants::cached_completion> hit;
};

admission refuse(chat_error_kind kind, std::string msg, rate_snapshot snap = {},
                 int64_t retry_after_ms = 0) {
  admission a;
  a.refused = true;
  a.why = chat_failure{kind, std::move(msg), 0, retry_after_ms};
  a.limits = snap;
  return a;
}

/// Answers a completion request through `rp`, then starts the turn.
void answer(caf::typed_response_promise<turn_control_actor, rate_snapshot>& rp, admission a) {
  if (a.refused)
    rp.deliver(caf::make_error(a.why.kind, a.why, a.limits));
  else
    rp.deliver(std::move(a.producer), std::move(a.limits));
  if (a.go)
    a.go();
}

/// Answers a remote admission (admit_atom) through `rp`: what admission decided about `req`.
void answer_grant(caf::typed_response_promise<admission_grant>& rp, admission a,
                  const chat_request& req, int64_t sent_config_version,
                  const tenant_state& st) {
  admission_grant g;
  g.request_id = req.request_id;
  g.limits = a.limits;
  if (a.refused) {
    g.refusal = std::move(a.why);
    rp.deliver(std::move(g));
    return;
  }
  g.admitted = true;
  g.model = req.model;
  if (sent_config_version < st.config_version) {
    g.config_json = st.config_json;
    g.config_version = st.config_version;
  }
  if (a.hit) {
    g.cached = true;
    g.deltas = std::move(a.hit->deltas);
    g.done = chat_done{a.hit->finish_reason, a.hit->prompt_tokens, a.hit->completion_tokens,
                       req.model, ""};
  } else {
    g.max_tokens = req.max_tokens;
    g.completion_cap = req.completion_cap;
    g.fill_cache = !req.cache_key.empty();
  }
  rp.deliver(std::move(g));
}

/// Admits a completion. `gateway` is set for a remote admission (admit_atom): a stateless
/// turn that the gateway's node runs; we only count it in flight until its end.
admission admit(tenant_actor::stateful_pointer<tenant_state> self, chat_request& req,
                turn_sink_actor relay, const caf::actor_addr& gateway = {}) {
  auto& st = self->state;
  if (!st.svc || !st.svc->routes)
    return refuse(chat_error_kind::unavailable, "chat is not configured on this node");
  // A cluster node admits only while its lease is valid (the watchdog's fence, which stops
  // this actor, may still be on its way after a pause longer than the lease).
  if (st.svc->cluster && !st.svc->cluster->lease_valid())
    return refuse(chat_error_kind::unavailable, "This node holds no cluster lease; retry.", {},
                  1000);
  // A draining cluster node takes no more work from other nodes: it is about to leave, and
  // their clients retry (by then another node owns the tenant).
  if (st.svc->draining && st.svc->draining->load(std::memory_order_relaxed) &&
      (gateway || (relay && relay.node() != self->node())))
    return refuse(chat_error_kind::unavailable, "The tenant's node is shutting down; retry.", {},
                  1000);
  if (req.model.empty())
    req.model = st.cfg->default_model;
  if (req.model.empty())
    return refuse(chat_error_kind::invalid_request, "you must provide a model parameter");
  auto r = st.svc->routes->find(req.model);
  if (!r || !st.cfg->allows(req.model))
    return refuse(chat_error_kind::model_not_found,
                  "The model `" + req.model + "` does not exist or you do not have access to it.");
  // Admission: concurrency, then requests per minute, then tokens per minute. A refused
  // request takes nothing from any limit.
  auto now = persistence::now_millis();
  auto& lim = st.cfg->limits;
  auto est = admission_estimate(req, *st.cfg);
  if (lim.max_request_tokens > 0 && est > lim.max_request_tokens)
    return refuse(chat_error_kind::invalid_request,
                  "This request may use up to " + std::to_string(est) +
                    " tokens (prompt plus max_tokens); the limit is " +
                    std::to_string(lim.max_request_tokens) + ".");
  // Every admitted turn is accounted (slot, reservation, estimate) and settled exactly once by
  // its request id (net generates one per request; an id already in flight is refused).
  if (gateway && !req.conversation_id.empty())
    return refuse(chat_error_kind::invalid_request,
                  "Conversation turns run on the tenant's node, not through a gateway.");
  if (st.turns.count(req.request_id) > 0 || st.sent_turns.count(req.request_id) > 0 ||
      st.remote_turns.count(req.request_id) > 0)
    return refuse(chat_error_kind::invalid_request,
                  "A request with id '" + req.request_id + "' is already in progress.");
  // Bounded in-flight work: the tenant's own limit, else the node's default per tenant.
  auto max_concurrent = lim.max_concurrent > 0 ? lim.max_concurrent : st.svc->tenant_max_in_flight;
  auto count = [&](std::atomic<uint64_t> admission_counters::*c) {
    if (st.svc->counters)
      (st.svc->counters->*c).fetch_add(1, std::memory_order_relaxed);
  };
  if (max_concurrent > 0 && st.in_flight >= max_concurrent) {
    count(&admission_counters::shed_tenant);
    return refuse(chat_error_kind::rate_limited,
                  "Too many concurrent requests (limit " + std::to_string(max_concurrent) + ").",
                  st.snapshot(st.requests.peek(now), st.tokens.peek(now)), 1000);
  }
  if (st.tokens.limit() > 0 && st.tokens.peek(now).remaining < est) {
    auto t = st.tokens.take(now, est); // denied: computes retry-after, takes nothing
    if (!t.allowed) {
      count(&admission_counters::rate_limited);
      return refuse(chat_error_kind::rate_limited,
                    "Rate limit reached for tokens per minute (limit " +
                      std::to_string(lim.tokens_per_minute) + ").",
                    st.snapshot(st.requests.peek(now), t), t.retry_after_ms);
    }
  }
  // The daily budget: reserve what this call may spend; refused when even its prompt
  // does not fit. The reservation caps the completion (the stream is cut off there).
  auto prompt = prompt_estimate(req, *st.cfg);
  auto grant = st.budget.reserve(now, est, prompt + 1);
  if (!grant.allowed) {
    count(&admission_counters::quota_rejected);
    return refuse(chat_error_kind::quota_exceeded,
                  "You exceeded your daily token budget (" +
                    std::to_string(lim.tokens_per_day) + " tokens); it resets at 00:00 UTC.",
                  st.snapshot(st.requests.peek(now), st.tokens.peek(now)), grant.retry_after_ms);
  }
  auto rq = st.requests.take(now, 1);
  if (!rq.allowed) {
    count(&admission_counters::rate_limited);
    st.budget.settle(now, grant.reserved, 0); // refused: give the reservation back
    return refuse(chat_error_kind::rate_limited,
                  "Rate limit reached for requests per minute (limit " +
                    std::to_string(lim.requests_per_minute) + ").",
                  st.snapshot(rq, st.tokens.peek(now)), rq.retry_after_ms);
  }
  // The response cache: a hit counts toward the request limit (taken above) but not toward
  // the token limits or the budget, and never calls the upstream.
  int8_t cache_status = 0;
  if (st.cfg->cache_ttl_seconds > 0 && req.conversation_id.empty()) {
    if (req.cache_mode == 1) {
      if (auto* hit = st.cache.find(req.cache_key, now)) {
        count(&admission_counters::cache_hits);
        st.budget.settle(now, grant.reserved, 0);
        admission a;
        a.limits = st.snapshot(rq, st.tokens.peek(now));
        a.limits.cache = 1;
        if (gateway) {
          a.hit = *hit; // replayed by the gateway
          return a;
        }
        // Replayed by us after the answer: the upstream is not called, nothing to cancel.
        a.go = [self, relay, hit = *hit, model = req.model] {
          for (auto& d : hit.deltas)
            self->send(relay, delta_atom::value, d);
          self->send(relay, done_atom::value,
                     chat_done{hit.finish_reason, hit.prompt_tokens, hit.completion_tokens, model, ""});
        };
        return a;
      }
      cache_status = 2;
      count(&admission_counters::cache_misses);
    } else {
      cache_status = 3;
    }
  }
  if (cache_status != 2)
    req.cache_key.clear(); // only a miss fills the cache
  if (grant.reserved > 0) {
    st.reservations[req.request_id] = grant.reserved;
    req.completion_cap = std::max<int64_t>(1, grant.reserved - prompt);
  }
  req.max_tokens = upstream_max_tokens(req, *r, lim, prompt);
  auto tk = st.tokens.take(now, est);
  st.estimates[req.request_id] = st.tokens.limit() > 0 ? est : 0;
  auto snap = st.snapshot(rq, tk);
  snap.cache = cache_status;
  count(&admission_counters::admitted);
  ++st.in_flight;
  st.publish_in_flight();
  admission a;
  a.limits = snap;
  if (gateway) {
    // Run by the gateway's node, settled by its ended_atom; should that node go away first,
    // its gateway's down message settles it (see settle_gateway_turns).
    st.remote_turns[req.request_id] = gateway;
    st.remote_count(1);
    if (st.gateways.insert(gateway).second)
      self->monitor(gateway);
    a.limits = snap;
    return a;
  }
  if (req.conversation_id.empty()) {
    // A stateless turn runs without an actor of its own; we are its producer (the relay
    // sends us cancel_atom when the client goes away) and its owner (it ends with `ended`).
    a.producer = caf::actor_cast<turn_control_actor>(self);
    auto r_copy = *r;
    a.go = [self, r_copy, relay, req = std::move(req)]() mutable {
      auto& st = self->state;
      auto id = req.request_id;
      auto me = caf::actor_cast<tenant_actor>(self);
      detail::turn_spec spec;
      spec.req = std::move(req);
      spec.r = r_copy;
      spec.cfg = st.cfg;
      spec.relay = relay;
      st.turns[id] = detail::start_turn(std::move(spec), st.svc, [me](turn_outcome o) {
        caf::anon_send(me, ended_atom::value, std::move(o));
      });
    };
    return a;
  }
  auto it = st.conversations.find(req.conversation_id);
  if (it == st.conversations.end()) {
    auto conv = detail::spawn_conversation(self, st.tenant_id, req.conversation_id,
                                           caf::actor_cast<tenant_actor>(self), st.svc);
    self->monitor(conv);
    st.children.insert(conv.address());
    st.conversation_by_addr.emplace(conv.address(), req.conversation_id);
    it = st.conversations.emplace(req.conversation_id, tenant_state::conversation_entry{conv})
           .first;
  }
  auto conv = it->second.actor;
  ++it->second.turns_sent; // sent below (a.go runs in this same handler, right after the answer)
  st.sent_turns[req.request_id] = tenant_state::sent_turn{conv.address(), relay, 0};
  st.turns_by_actor[conv.address()].unended.push_back(req.request_id);
  a.producer = conv;
  a.go = [self, conv, relay, req = std::move(req)]() mutable {
    self->send(conv, chat_atom::value, std::move(req), relay);
  };
  return a;
}

/// Reads today's spent tokens from the usage table off the scheduler; the answer comes back as
/// a budget_atom message.
void load_budget(tenant_actor::stateful_pointer<tenant_state> self) {
  auto& st = self->state;
  st.budget_state = tenant_state::budget_phase::loading;
  auto me = caf::actor_cast<tenant_actor>(self);
  auto svc = st.svc;
  auto tenant_id = st.tenant_id;
  auto day = tenants::utc_day_start(persistence::now_millis());
  bool queued = svc->executor->try_post([=] {
    int64_t spent = 0;
    auto rows = svc->store->query_usage(tenant_id, day, day + 86400000);
    if (!rows.ok())
      spent = -1;
    else
      for (auto& r : *rows)
        spent += r.prompt_tokens + r.completion_tokens;
    caf::anon_send(me, budget_atom::value, day, spent);
  });
  if (!queued)
    caf::anon_send(me, budget_atom::value, day, int64_t{-1});
}

/// A conversation actor stopped (at its down message): settles the turns we sent it and have
/// not seen end -- the one it ran with what its engine charged (charged_atom, which came
/// first), the others (queued, or still in its mailbox) with nothing -- and tells their
/// clients a clean failure. An end for one of them that comes later is ignored (ended_atom).
void settle_lost_turns(tenant_actor::stateful_pointer<tenant_state> self,
                       const caf::actor_addr& conversation) {
  auto& st = self->state;
  auto a = st.turns_by_actor.find(conversation);
  if (a == st.turns_by_actor.end())
    return;
  auto lost = std::move(a->second);
  st.turns_by_actor.erase(a);
  auto now = persistence::now_millis();
  for (auto& id : lost.unended) {
    auto it = st.sent_turns.find(id);
    if (it == st.sent_turns.end())
      continue;
    turn_outcome o;
    o.request_id = id;
    o.tokens = it->second.charged;
    o.tell = true;
    o.relay = it->second.relay;
    o.failure = lost.deleted
                  ? chat_failure{chat_error_kind::not_found, "The conversation was deleted.", 0}
                  : chat_failure{chat_error_kind::unavailable,
                                 "The conversation was closed unexpectedly; retry later.", 0, 1000};
    st.sent_turns.erase(it);
    st.settle(id, o.tokens, now);
    detail::tell_end(o);
  }
}

/// A gateway we admitted turns for went away (its node stopped or the connection broke): its
/// turns will never report their end. Each is charged what admission reserved for it -- the
/// most it could have used; its ledger rows, if its node wrote them, are in the usage table.
void settle_gateway_turns(tenant_actor::stateful_pointer<tenant_state> self,
                          const caf::actor_addr& gateway) {
  auto& st = self->state;
  if (st.gateways.erase(gateway) == 0)
    return;
  auto now = persistence::now_millis();
  std::vector<std::string> lost;
  for (auto& [id, g] : st.remote_turns)
    if (g == gateway)
      lost.push_back(id);
  for (auto& id : lost) {
    st.remote_turns.erase(id);
    st.remote_count(-1);
    int64_t charge = 0;
    if (auto r = st.reservations.find(id); r != st.reservations.end())
      charge = std::max(charge, r->second);
    if (auto e = st.estimates.find(id); e != st.estimates.end())
      charge = std::max(charge, e->second);
    st.settle(id, charge, now);
  }
  if (!lost.empty() && st.svc && st.svc->logger)
    log::event(st.svc->logger, spdlog::level::warn, "remote turns lost")
      .str("tenant_id", st.tenant_id)
      .num("turns", static_cast<int64_t>(lost.size()));
}

tenant_actor::behavior_type tenant_impl(tenant_actor::stateful_pointer<tenant_state> self,
                                        std::string tenant_id,
                                        std::shared_ptr<const chat_services> svc) {
  self->state.tenant_id = std::move(tenant_id);
  self->state.svc = std::move(svc);
  if (self->state.svc && self->state.svc->actors)
    self->state.live.attach(&self->state.svc->actors->tenants);
  if (self->state.svc && self->state.svc->load) {
    self->state.board = self->state.svc->load;
    self->state.load = self->state.board->join(self->state.tenant_id);
  }
  // Turns and conversations are linked to us so that they stop with us; one of them failing
  // must not take the tenant down.
  detail::absorb_child_exits(self);
  // A conversation actor stopped (a crash; a deleted or passivating one was forgotten
  // already): forget it, the next turn re-activates the conversation; and settle the turns it
  // took with it.
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& st = self->state;
    if (auto it = st.conversation_by_addr.find(dm.source); it != st.conversation_by_addr.end()) {
      st.conversations.erase(it->second);
      st.conversation_by_addr.erase(it);
    }
    settle_lost_turns(self, dm.source);
    settle_gateway_turns(self, dm.source);
  });
  return {
    [=](caf::get_atom) { return self->state.tenant_id; },
    [=](config_atom, std::string config_json, int64_t version) {
      self->state.update_config(config_json, version);
    },
    [=](chat_atom, chat_request& req, turn_sink_actor relay)
      -> caf::result<turn_control_actor, rate_snapshot> {
      auto& st = self->state;
      st.update_config(req.tenant_config, req.tenant_config_version);
      // The turn runs with the config admission uses (a conversation actor reads it here).
      if (req.tenant_config_version < st.config_version) {
        req.tenant_config = st.config_json;
        req.tenant_config_version = st.config_version;
      }
      auto rp = self->make_response_promise<turn_control_actor, rate_snapshot>();
      if (st.cfg->limits.tokens_per_day > 0 && st.budget_state != tenant_state::budget_phase::loaded) {
        // Today's spending is not known yet: admit once the usage table has answered.
        tenant_state::waiting w;
      w.req = std::move(req);
      w.relay = std::move(relay);
      w.promise = rp;
      st.waiting_for_budget.push_back(std::move(w));
        if (st.budget_state == tenant_state::budget_phase::unloaded)
          load_budget(self);
        return rp;
      }
      answer(rp, admit(self, req, std::move(relay)));
      return rp;
    },
    [=](admit_atom, chat_request& req) -> caf::result<admission_grant> {
      auto& st = self->state;
      auto gateway = caf::actor_cast<caf::actor_addr>(self->current_sender());
      auto sent_version = req.tenant_config_version;
      st.update_config(req.tenant_config, req.tenant_config_version);
      auto rp = self->make_response_promise<admission_grant>();
      if (!gateway) {
        admission_grant g;
        g.request_id = req.request_id;
        g.refusal = {chat_error_kind::internal, "an admission without a gateway", 0};
        rp.deliver(std::move(g));
        return rp;
      }
      if (st.cfg->limits.tokens_per_day > 0 && st.budget_state != tenant_state::budget_phase::loaded) {
        tenant_state::waiting w;
        w.req = std::move(req);
        w.gateway = gateway;
        w.grant = rp;
        st.waiting_for_budget.push_back(std::move(w));
        if (st.budget_state == tenant_state::budget_phase::unloaded)
          load_budget(self);
        return rp;
      }
      auto a = admit(self, req, {}, gateway);
      answer_grant(rp, std::move(a), req, sent_version, st);
      return rp;
    },
    [=](budget_atom, int64_t day_start, int64_t spent) {
      auto& st = self->state;
      auto waiting = std::move(st.waiting_for_budget);
      st.waiting_for_budget.clear();
      if (spent < 0) {
        st.budget_state = tenant_state::budget_phase::unloaded; // retried by the next request
        for (auto& w : waiting) {
          auto a = refuse(chat_error_kind::unavailable,
                          "The usage store is unavailable; retry later.", {}, 1000);
          if (w.gateway)
            answer_grant(w.grant, std::move(a), w.req, w.req.tenant_config_version, st);
          else
            answer(w.promise, std::move(a));
        }
        return;
      }
      auto now = persistence::now_millis();
      if (tenants::utc_day_start(now) == day_start)
        st.budget.set_spent(now, spent);
      st.budget_state = tenant_state::budget_phase::loaded;
      for (auto& w : waiting) {
        if (w.gateway) {
          auto version = w.req.tenant_config_version;
          auto a = admit(self, w.req, {}, w.gateway);
          answer_grant(w.grant, std::move(a), w.req, version, st);
        } else {
          answer(w.promise, admit(self, w.req, std::move(w.relay)));
        }
      }
    },
    [=](limits_atom, const std::string& config_json, int64_t version) {
      auto& st = self->state;
      st.update_config(config_json, version);
      auto now = persistence::now_millis();
      return st.snapshot(st.requests.peek(now), st.tokens.peek(now));
    },
    [=](flush_atom) -> int64_t {
      auto n = static_cast<int64_t>(self->state.cache.size());
      self->state.cache.clear();
      return n;
    },
    [=](forget_atom, const std::string& conversation_id) {
      auto& st = self->state;
      auto it = st.conversations.find(conversation_id);
      if (it == st.conversations.end())
        return;
      // Forget it now, not at its down message: a turn arriving meanwhile must not be sent
      // to the dying actor, but to a fresh one that finds the conversation gone.
      auto conv = it->second.actor;
      st.conversation_by_addr.erase(conv.address());
      st.conversations.erase(it);
      if (auto a = st.turns_by_actor.find(conv.address()); a != st.turns_by_actor.end())
        a->second.deleted = true; // its unended turns fail with not_found at its down message
      caf::anon_send_exit(conv, caf::exit_reason::user_shutdown);
    },
    [=](passivate_atom, uint64_t turns_received) -> bool {
      // An idle conversation asks to passivate. Every turn we send it is counted; if it has
      // received them all, nothing is on its way to it, and once we forget it (now, in this
      // handler) nothing ever will be: it may quit. Otherwise it must serve what is coming.
      auto& st = self->state;
      auto asker = caf::actor_cast<caf::actor_addr>(self->current_sender());
      auto by_addr = st.conversation_by_addr.find(asker);
      if (by_addr == st.conversation_by_addr.end())
        return true; // forgotten already (its conversation was deleted)
      auto it = st.conversations.find(by_addr->second);
      if (it != st.conversations.end()) {
        if (it->second.turns_sent != turns_received)
          return false;
        st.conversations.erase(it);
      }
      st.conversation_by_addr.erase(by_addr);
      return true;
    },
    [=](charged_atom, const std::string& request_id, int64_t tokens) {
      // A stopping conversation actor's running turn; settled at the actor's down message.
      auto& st = self->state;
      if (auto it = st.sent_turns.find(request_id); it != st.sent_turns.end())
        it->second.charged = tokens;
    },
    [=](cancel_atom, const std::string& request_id) {
      // The client of a stateless turn went away.
      auto& st = self->state;
      if (auto it = st.turns.find(request_id); it != st.turns.end()) {
        auto call = it->second;
        call->cancel(); // ends it: its `ended` comes back to us
        return;
      }
      // A remote turn whose gateway gave up on our grant (past its deadline): it never ran.
      auto sender = caf::actor_cast<caf::actor_addr>(self->current_sender());
      if (auto r = st.remote_turns.find(request_id); r != st.remote_turns.end() && r->second == sender) {
        st.remote_turns.erase(r);
        st.remote_count(-1);
        st.settle(request_id, 0, persistence::now_millis());
      }
    },
    [=](ended_atom, turn_outcome& o) {
      auto& st = self->state;
      // Settled once: a conversation turn whose actor stopped first was settled (and its
      // client told) at the actor's down message.
      if (!st.take_in_flight(o.request_id,
                             caf::actor_cast<caf::actor_addr>(self->current_sender())))
        return;
      auto now = persistence::now_millis();
      st.settle(o.request_id, o.tokens, now);
      if (o.completed && !o.cache_key.empty() && st.cfg->cache_ttl_seconds > 0)
        st.cache.put(o.cache_key,
                     tenants::cached_completion{std::move(o.deltas), o.done.finish_reason,
                                                o.done.prompt_tokens, o.done.completion_tokens},
                     now, st.cfg->cache_ttl_seconds * 1000);
      // Settled: only now does the client learn the end, so that its next request finds the
      // turn's slot free, its tokens counted and its answer cached.
      detail::tell_end(o);
    },
  };
}

} // namespace

namespace detail {
tenant_actor spawn_tenant(caf::local_actor* parent, std::string tenant_id,
                          std::shared_ptr<const chat_services> svc) {
  return parent->spawn<caf::linked>(tenant_impl, std::move(tenant_id), std::move(svc));
}
} // namespace detail

} // namespace parley::actors
