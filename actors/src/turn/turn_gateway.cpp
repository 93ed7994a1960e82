// The turn gateway of a cluster node: stateless completions whose tenant another node owns.
// The owner's tenant actor admits them (limits, budget, cache -- exact, it is their single
// owner) and this node runs them: its routes, its upstream connections, its usage ledger.
// Deltas stay on this node; three messages cross the cluster per completion (the admission,
// the grant, the end), all between long-lived actors -- this gateway and the owner's tenant
// actor -- so that CAF announces no per-request actor reference to the other node.
#include "internal.hpp"
#include "turn/turn_core.hpp"

#include "parley/actors/spawn.hpp"

#include <algorithm>
#include <chrono>
#include <unordered_map>
#include <unordered_set>

namespace parley::actors {
namespace {

using clock_type = std::chrono::steady_clock;

struct gateway_state {
  std::shared_ptr<const chat_services> svc;
  std::chrono::milliseconds timeout{3000};
  /// Admissions sent to an owner and not answered yet, by request id. The request keeps its
  /// messages here; the owner got only their token counts.
  struct pending {
    chat_request req;
    turn_sink_actor relay;
    tenant_actor tenant;
    caf::typed_response_promise<turn_control_actor, rate_snapshot> promise;
    clock_type::time_point deadline;
  };
  std::unordered_map<std::string, pending> waiting;
  /// Turns running here, by request id, and the tenant actor that settles each.
  struct running {
    std::shared_ptr<detail::turn_handle> handle;
    tenant_actor tenant;
  };
  std::unordered_map<std::string, running> turns;
  /// Owners' tenant actors we monitor: one that stops, or whose node goes away, fails the
  /// admissions waiting for it at once (not at their deadline).
  std::unordered_set<caf::actor_addr> watched;
  /// Parsed tenant configs by tenant id (the version they came with), so that a turn does not
  /// parse its tenant's JSON again.
  struct parsed {
    int64_t version = -1;
    std::string json;
    std::shared_ptr<const tenants::tenant_config> cfg;
  };
  std::unordered_map<std::string, parsed> configs;
  bool ticking = false;
  static inline const char* name = "parley.turn_gateway";

  ~gateway_state() {
    // CAF 0.17 answers nothing for a dropped promise: tell the relays.
    auto left = std::move(waiting);
    for (auto& [id, p] : left)
      p.promise.deliver(caf::make_error(caf::sec::request_receiver_down));
    auto running_turns = std::move(turns);
    for (auto& [id, r] : running_turns)
      r.handle->cancel();
  }

  std::shared_ptr<const tenants::tenant_config> config(const std::string& tenant_id,
                                                       const std::string& json, int64_t version) {
    auto& c = configs[tenant_id];
    if (!c.cfg || c.version != version || c.json != json) {
      if (configs.size() > 10000) { // bounded: a node serving very many tenants parses again
        configs.clear();
        return config(tenant_id, json, version);
      }
      c.version = version;
      c.json = json;
      c.cfg = std::make_shared<tenants::tenant_config>(tenants::parse_stored_config(json));
    }
    return c.cfg;
  }
};

using gateway_ptr = turn_gateway_actor::stateful_pointer<gateway_state>;

/// What the owner needs to admit a request: everything but the messages' text (their token
/// counts suffice) and the pass-through fields.
chat_request for_admission(const chat_request& req) {
  chat_request slim;
  slim.request_id = req.request_id;
  slim.tenant_id = req.tenant_id;
  slim.key_id = req.key_id;
  slim.model = req.model;
  slim.messages.reserve(req.messages.size());
  for (auto& m : req.messages) {
    chat_message t;
    t.role = m.role;
    t.tokens = m.tokens;
    slim.messages.push_back(std::move(t));
  }
  slim.stream = req.stream;
  slim.include_usage = req.include_usage;
  slim.max_tokens = req.max_tokens;
  slim.extra_tokens = req.extra_tokens;
  slim.tenant_config = req.tenant_config;
  slim.tenant_config_version = req.tenant_config_version;
  slim.cache_mode = req.cache_mode;
  slim.cache_key = req.cache_key;
  return slim;
}

void schedule_tick(gateway_ptr self) {
  auto& st = self->state;
  if (st.ticking)
    return;
  st.ticking = true;
  auto every = std::clamp(st.timeout / 4, std::chrono::milliseconds(10), std::chrono::milliseconds(250));
  self->delayed_send(self, every, tick_atom::value);
}

/// Runs an admitted turn here.
void run(gateway_ptr self, gateway_state::pending p, admission_grant& g) {
  auto& st = self->state;
  auto& req = p.req;
  const auto& json = g.config_json.empty() ? req.tenant_config : g.config_json;
  auto version = g.config_json.empty() ? req.tenant_config_version : g.config_version;
  auto cfg = st.config(req.tenant_id, json, version);
  req.model = g.model;
  auto r = st.svc && st.svc->routes ? st.svc->routes->find(req.model) : std::nullopt;
  if (!r) {
    // The owner knows the model, this node does not (nodes configured differently): nothing
    // ran, so the owner settles it with nothing used.
    chat_failure why{chat_error_kind::model_not_found,
                     "The model `" + req.model + "` is not served by this node.", 0};
    p.promise.deliver(caf::make_error(why.kind, why, g.limits));
    turn_outcome o;
    o.request_id = req.request_id;
    self->send(p.tenant, ended_atom::value, std::move(o));
    return;
  }
  req.max_tokens = g.max_tokens;
  req.completion_cap = g.completion_cap;
  if (!g.fill_cache)
    req.cache_key.clear();
  req.tenant_config = json;
  req.tenant_config_version = version;
  // The relay holds the answer before any of the turn's events (both go to its mailbox, the
  // answer first).
  p.promise.deliver(caf::actor_cast<turn_control_actor>(self), g.limits);
  auto id = req.request_id;
  detail::turn_spec spec;
  spec.req = std::move(req);
  spec.r = *r;
  spec.cfg = std::move(cfg);
  spec.relay = p.relay;
  auto me = caf::actor_cast<turn_gateway_actor>(self);
  auto handle = detail::start_turn(std::move(spec), st.svc, [me](turn_outcome o) {
    caf::anon_send(me, ended_atom::value, std::move(o));
  });
  st.turns[id] = gateway_state::running{std::move(handle), std::move(p.tenant)};
}

turn_gateway_actor::behavior_type gateway_impl(gateway_ptr self,
                                               std::shared_ptr<const chat_services> svc,
                                               std::chrono::milliseconds timeout) {
  self->state.svc = std::move(svc);
  self->state.timeout = timeout;
  // Stopping (the node shuts down): the turns still running here are cancelled and each is
  // settled with its owner for what it really used -- not left for the owner to charge its
  // whole reservation when it sees us go. (A crash leaves that to the owner.)
  self->set_exit_handler([=](caf::exit_msg& em) {
    auto& st = self->state;
    auto running = std::move(st.turns);
    st.turns.clear();
    for (auto& [id, r] : running) {
      r.handle->cancel(); // returns with charged() final
      turn_outcome o;
      o.request_id = id;
      o.tokens = r.handle->charged();
      self->send(r.tenant, ended_atom::value, std::move(o));
    }
    self->quit(em.reason);
  });
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& st = self->state;
    st.watched.erase(dm.source);
    std::vector<std::string> gone;
    for (auto& [id, p] : st.waiting)
      if (p.tenant.address() == dm.source)
        gone.push_back(id);
    for (auto& id : gone) {
      auto p = std::move(st.waiting[id]);
      st.waiting.erase(id);
      p.promise.deliver(caf::make_error(caf::sec::request_receiver_down));
    }
    // Turns running here for that tenant go on: their client is here. Their end finds no one
    // to settle with; the tenant's next owner starts from the usage table.
  });
  return {
    [=](chat_atom, tenant_actor tenant, chat_request& req,
        turn_sink_actor relay) -> caf::result<turn_control_actor, rate_snapshot> {
      auto& st = self->state;
      auto id = req.request_id;
      if (!tenant)
        return caf::make_error(caf::sec::request_receiver_down);
      if (st.waiting.count(id) > 0 || st.turns.count(id) > 0) {
        chat_failure why{chat_error_kind::invalid_request,
                         "A request with id '" + id + "' is already in progress.", 0};
        return caf::make_error(why.kind, why, rate_snapshot{});
      }
      if (st.watched.insert(tenant.address()).second)
        self->monitor(tenant);
      self->send(tenant, admit_atom::value, for_admission(req));
      auto rp = self->make_response_promise<turn_control_actor, rate_snapshot>();
      st.waiting.emplace(id, gateway_state::pending{std::move(req), std::move(relay), tenant, rp,
                                                    clock_type::now() + st.timeout});
      schedule_tick(self);
      return rp;
    },
    [=](admission_grant& g) {
      auto& st = self->state;
      auto it = st.waiting.find(g.request_id);
      if (it == st.waiting.end()) {
        // Past its deadline (the client got a 503): if the owner admitted it, it holds a slot
        // and a reservation for it -- give them back; nothing ran.
        if (g.admitted && !g.cached)
          if (auto owner = caf::actor_cast<tenant_actor>(self->current_sender()))
            self->send(owner, cancel_atom::value, g.request_id);
        return;
      }
      auto sender = caf::actor_cast<caf::actor_addr>(self->current_sender());
      if (sender != it->second.tenant.address()) {
        // Not from the tenant actor we asked (an earlier owner's late grant for a request id
        // that waits again, after a retry, on a new one): hand back what it admitted.
        if (g.admitted && !g.cached)
          if (auto other = caf::actor_cast<tenant_actor>(self->current_sender()))
            self->send(other, cancel_atom::value, g.request_id);
        return;
      }
      auto p = std::move(it->second);
      st.waiting.erase(it);
      if (!g.admitted) {
        p.promise.deliver(caf::make_error(g.refusal.kind, g.refusal, g.limits));
        return;
      }
      if (g.cached) {
        // A cache hit: nothing to cancel or settle; the answer follows the admission.
        p.promise.deliver(turn_control_actor{}, g.limits);
        for (auto& d : g.deltas)
          self->send(p.relay, delta_atom::value, std::move(d));
        self->send(p.relay, done_atom::value, g.done);
        return;
      }
      run(self, std::move(p), g);
    },
    [=](cancel_atom, const std::string& request_id) {
      auto& st = self->state;
      if (auto it = st.turns.find(request_id); it != st.turns.end()) {
        auto handle = it->second.handle;
        handle->cancel(); // ends it: its `ended` comes back to us
      }
    },
    [=](ended_atom, turn_outcome& o) {
      auto& st = self->state;
      auto it = st.turns.find(o.request_id);
      if (it == st.turns.end())
        return;
      auto tenant = std::move(it->second.tenant);
      st.turns.erase(it);
      // The owner settles it (slot, estimate, reservation; the cache on a completed miss)
      // before the client hears the end from us: the connection to the owner keeps the order,
      // so this node's next request for the tenant finds the slot free and the tokens counted.
      turn_outcome settle;
      settle.request_id = o.request_id;
      settle.completed = o.completed;
      settle.done = o.done;
      settle.tokens = o.tokens;
      settle.store = o.store;
      if (o.completed && !o.cache_key.empty()) {
        settle.cache_key = o.cache_key;
        settle.deltas = std::move(o.deltas);
      }
      self->send(tenant, ended_atom::value, std::move(settle));
      detail::tell_end(o);
    },
    [=](tick_atom) {
      auto& st = self->state;
      st.ticking = false;
      auto now = clock_type::now();
      std::vector<std::string> late;
      for (auto& [id, p] : st.waiting)
        if (p.deadline <= now)
          late.push_back(id);
      for (auto& id : late) {
        auto p = std::move(st.waiting[id]);
        st.waiting.erase(id);
        p.promise.deliver(caf::make_error(caf::sec::request_timeout));
      }
      if (!st.waiting.empty())
        schedule_tick(self);
    },
  };
}

} // namespace

turn_gateway_actor spawn_turn_gateway(caf::actor_system& sys,
                                      std::shared_ptr<const chat_services> svc,
                                      std::chrono::milliseconds call_timeout) {
  return sys.spawn(gateway_impl, std::move(svc), call_timeout);
}

} // namespace parley::actors
