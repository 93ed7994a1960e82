#include "parley/actors/spawn.hpp"

#include <algorithm>
#include <cctype>
#include "internal.hpp"
#include "parley/persistence/ids.hpp"
#include "parley/tenants/rate_limiter.hpp"
#include "parley/tenants/token_budget.hpp"
#include "parley/tenants/response_cache.hpp"

#include <caf/all.hpp>

#include <deque>
#include <unordered_map>
#include <unordered_set>

namespace parley::actors {

const char* to_string(actor_errc code) noexcept {
  switch (code) {
    case actor_errc::tenant_isolated: return "tenant_isolated";
    case actor_errc::overloaded: return "overloaded";
    case actor_errc::draining: return "draining";
    case actor_errc::unknown_tenant: return "unknown_tenant";
  }
  return "unknown";
}

void register_types(caf::actor_system_config& cfg) {
  cfg.add_message_type<manager_stats>("parley.manager_stats");
  cfg.add_message_type<chat_message>("parley.chat_message");
  cfg.add_message_type<chat_request>("parley.chat_request");
  cfg.add_message_type<chat_done>("parley.chat_done");
  cfg.add_message_type<chat_failure>("parley.chat_failure");
  cfg.add_message_type<rate_snapshot>("parley.rate_snapshot");
  cfg.add_error_category(caf::atom("parley"),
                         [](uint8_t code, caf::atom_value, const caf::message&) -> std::string {
                           return std::string("parley::") +
                                  to_string(static_cast<actor_errc>(code));
                         });
}

namespace {

/// Restarts allowed per window before a tenant is isolated for one window.
constexpr std::size_t restart_budget = 5;
constexpr std::chrono::seconds restart_window{60};

struct tenant_state {
  live_count live;
  std::shared_ptr<std::atomic<int64_t>> load; ///< our in_flight, published on the load board
  tenant_load_board* board = nullptr;
  std::string tenant_id;
  std::string config_json;
  std::shared_ptr<const tenants::tenant_config> cfg = std::make_shared<tenants::tenant_config>();
  std::shared_ptr<const chat_services> svc;
  std::unordered_map<std::string, caf::actor> conversations;
  std::unordered_map<caf::actor_addr, std::string> conversation_by_addr;
  std::unordered_set<caf::actor_addr> children; ///< linked conversations alive
  std::unordered_map<std::string, std::shared_ptr<call_handle>> turns; ///< stateless calls by request id
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
    caf::actor relay;
    caf::typed_response_promise<caf::actor, rate_snapshot, chat_failure> promise;
  };
  std::vector<waiting> waiting_for_budget;
  tenants::response_cache cache;
  static inline const char* name = "parley.tenant";

  ~tenant_state() {
    if (board && load)
      board->leave(tenant_id, load);
    // Stopping (shutdown or a crash): the stateless calls stop with us.
    auto calls = std::move(turns);
    for (auto& [id, call] : calls)
      call->cancel();
  }
  void publish_in_flight() {
    if (load)
      load->store(in_flight, std::memory_order_relaxed);
  }

  void update_config(const std::string& json) {
    if (json.empty() || json == config_json)
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

  rate_snapshot snapshot(const tenants::rate_limiter::decision& r,
                         const tenants::rate_limiter::decision& t) const {
    return {r.limit, r.remaining, r.reset_ms, t.limit, t.remaining, t.reset_ms};
  }
};

/// Tokens a request may use, estimated before the call: its prompt plus its max_tokens (or a
/// default completion allowance when it sets none); settled with the real usage afterwards.
constexpr int64_t default_completion_allowance = 256;
int64_t prompt_estimate(const chat_request& req, const tenants::tenant_config& cfg) {
  int64_t n = cfg.system_prompt.empty() ? 0 : estimate_tokens(cfg.system_prompt) + 4;
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

/// Supervisor exit handling, shared by the tenant manager and tenant actors. Every linked
/// child's exit (normal or not) arrives here exactly once and only removes it from
/// state.children -- the down message or `ended` does the rest of the bookkeeping, in any
/// order. An exit request for ourselves or a non-normal exit of anyone else (our supervisor
/// shutting down) ends us.
template <class Self>
void absorb_child_exits(Self* self) {
  self->set_exit_handler([=](caf::exit_msg& em) {
    if (em.source != self->address()) {
      if (self->state.children.erase(em.source) > 0 || !em.reason)
        return;
    }
    self->quit(em.reason);
  });
}

/// A tenant id as the store makes them: 1-64 characters of [A-Za-z0-9_-].
bool valid_tenant_id(const std::string& id) {
  if (id.empty() || id.size() > 64)
    return false;
  return std::all_of(id.begin(), id.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '_' || c == '-';
  });
}

using admission = std::tuple<caf::actor, rate_snapshot, chat_failure>;

admission refuse(chat_error_kind kind, std::string msg, rate_snapshot snap = {},
                 int64_t retry_after_ms = 0) {
  return {caf::actor{}, snap, chat_failure{kind, std::move(msg), 0, retry_after_ms}};
}

admission admit(tenant_actor::stateful_pointer<tenant_state> self, chat_request& req,
            caf::actor relay) {
  auto& st = self->state;
  if (!st.svc || !st.svc->routes)
    return refuse(chat_error_kind::unavailable, "chat is not configured on this node");
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
        auto snap = st.snapshot(rq, st.tokens.peek(now));
        snap.cache = 1;
        return {detail::spawn_replay(self, *hit, req.model, std::move(relay)), snap, chat_failure{}};
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
  auto me = caf::actor_cast<caf::actor>(self);
  if (req.conversation_id.empty()) {
    // A stateless turn runs without an actor of its own; we are its producer (the relay
    // sends us cancel_atom when the client goes away).
    auto id = req.request_id;
    st.turns[id] = detail::start_turn(std::move(req), *r, st.cfg, std::move(relay),
                                      caf::actor_cast<tenant_actor>(self), st.svc);
    return {me, snap, chat_failure{}};
  }
  auto it = st.conversations.find(req.conversation_id);
  if (it == st.conversations.end()) {
    auto conv = detail::spawn_conversation(self, st.tenant_id, req.conversation_id, me, st.svc);
    self->monitor(conv);
    st.children.insert(conv.address());
    st.conversation_by_addr.emplace(conv.address(), req.conversation_id);
    it = st.conversations.emplace(req.conversation_id, conv).first;
  }
  caf::anon_send(it->second, chat_atom::value, std::move(req), std::move(relay));
  return {it->second, snap, chat_failure{}};
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
  absorb_child_exits(self);
  // Conversation actors passivate (or crash): forget them; the next turn re-activates.
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& st = self->state;
    auto it = st.conversation_by_addr.find(dm.source);
    if (it == st.conversation_by_addr.end())
      return;
    st.conversations.erase(it->second);
    st.conversation_by_addr.erase(it);
  });
  return {
    [=](caf::get_atom) { return self->state.tenant_id; },
    [=](config_atom, std::string config_json) { self->state.update_config(config_json); },
    [=](chat_atom, chat_request& req, caf::actor relay)
      -> caf::result<caf::actor, rate_snapshot, chat_failure> {
      auto& st = self->state;
      st.update_config(req.tenant_config);
      if (st.cfg->limits.tokens_per_day > 0 && st.budget_state != tenant_state::budget_phase::loaded) {
        // Today's spending is not known yet: admit once the usage table has answered.
        auto rp = self->make_response_promise<caf::actor, rate_snapshot, chat_failure>();
        st.waiting_for_budget.push_back({std::move(req), std::move(relay), rp});
        if (st.budget_state == tenant_state::budget_phase::unloaded)
          load_budget(self);
        return rp;
      }
      auto [producer, snap, failure] = admit(self, req, std::move(relay));
      return caf::result<caf::actor, rate_snapshot, chat_failure>(std::move(producer), std::move(snap),
                                                                  std::move(failure));
    },
    [=](budget_atom, int64_t day_start, int64_t spent) {
      auto& st = self->state;
      auto waiting = std::move(st.waiting_for_budget);
      st.waiting_for_budget.clear();
      if (spent < 0) {
        st.budget_state = tenant_state::budget_phase::unloaded; // retried by the next request
        for (auto& w : waiting)
          w.promise.deliver(caf::actor{}, rate_snapshot{},
                            chat_failure{chat_error_kind::unavailable,
                                         "The usage store is unavailable; retry later.", 0, 1000});
        return;
      }
      auto now = persistence::now_millis();
      if (tenants::utc_day_start(now) == day_start)
        st.budget.set_spent(now, spent);
      st.budget_state = tenant_state::budget_phase::loaded;
      for (auto& w : waiting) {
        auto [producer, snap, failure] = admit(self, w.req, std::move(w.relay));
        w.promise.deliver(producer, snap, failure);
      }
    },
    [=](cache_atom, const std::string& key, std::vector<std::string>& deltas,
        const std::string& finish, int64_t prompt, int64_t completion) {
      auto& st = self->state;
      if (st.cfg->cache_ttl_seconds <= 0)
        return;
      st.cache.put(key, tenants::cached_completion{std::move(deltas), finish, prompt, completion},
                   persistence::now_millis(), st.cfg->cache_ttl_seconds * 1000);
    },
    [=](limits_atom, const std::string& config_json) {
      auto& st = self->state;
      st.update_config(config_json);
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
      auto conv = it->second;
      st.conversation_by_addr.erase(conv.address());
      st.conversations.erase(it);
      caf::anon_send_exit(conv, caf::exit_reason::user_shutdown);
    },
    [=](cancel_atom, const std::string& request_id) {
      // The client of a stateless turn went away.
      auto& st = self->state;
      if (auto it = st.turns.find(request_id); it != st.turns.end()) {
        auto call = it->second;
        call->cancel(); // ends it: its `ended` comes back to us
      }
    },
    [=](ended_atom, const std::string& request_id, int64_t actual_tokens) {
      auto& st = self->state;
      st.turns.erase(request_id);
      if (st.in_flight > 0)
        --st.in_flight;
      st.publish_in_flight();
      // Settle the admission estimate and reservation with what the call really used.
      if (auto b = st.reservations.find(request_id); b != st.reservations.end()) {
        st.budget.settle(persistence::now_millis(), b->second, actual_tokens);
        st.reservations.erase(b);
      }
      if (auto e = st.estimates.find(request_id); e != st.estimates.end()) {
        if (e->second > 0)
          st.tokens.adjust(persistence::now_millis(), actual_tokens - e->second);
        st.estimates.erase(e);
      }
    },
  };
}

/// A tenant whose actor crashed: crash times within the budget window, and until when it is
/// isolated once the budget is spent.
struct crash_record {
  std::deque<caf::timestamp> crashes;
  caf::timestamp isolated_until{};
};

struct manager_state {
  std::unordered_map<std::string, tenant_actor> tenants;
  std::unordered_map<std::string, crash_record> crashed;
  std::unordered_map<caf::actor_addr, std::string> by_addr;
  std::unordered_set<caf::actor_addr> children; ///< linked children whose exit is pending
  manager_stats stats;
  log::logger_ptr logger;
  static inline const char* name = "parley.tenant_manager";
};

tenant_manager_actor::behavior_type
manager_impl(tenant_manager_actor::stateful_pointer<manager_state> self, log::logger_ptr logger,
             std::shared_ptr<const chat_services> svc) {
  self->state.logger = std::move(logger);
  // Tenants are linked so that they die with their manager; a tenant that dies must not take
  // the manager (and every other tenant) with it. (A child ending with exit_reason::kill
  // cannot be trapped by anyone in CAF: nothing in parley sends kill to a tenant.)
  absorb_child_exits(self);
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& st = self->state;
    auto it = st.by_addr.find(dm.source);
    if (it == st.by_addr.end())
      return;
    log::event(st.logger, dm.reason ? spdlog::level::warn : spdlog::level::debug,
               "tenant actor stopped")
      .str("tenant_id", it->second)
      .str("reason", to_string(dm.reason));
    auto tenant_id = it->second;
    st.tenants.erase(tenant_id);
    st.by_addr.erase(it);
    st.stats.active_tenants = st.tenants.size();
    if (!dm.reason || dm.reason == caf::exit_reason::user_shutdown)
      return;
    // A crash: the next request restarts the tenant, within a budget of restarts per window;
    // a tenant that keeps crashing is isolated for a window (503 for it, others unharmed).
    auto now = caf::make_timestamp();
    auto& rec = st.crashed[tenant_id];
    rec.crashes.push_back(now);
    while (!rec.crashes.empty() && now - rec.crashes.front() > restart_window)
      rec.crashes.pop_front();
    if (rec.crashes.size() > restart_budget) {
      rec.isolated_until = now + restart_window;
      rec.crashes.clear();
      log::event(st.logger, spdlog::level::err, "tenant isolated after repeated crashes")
        .str("tenant_id", tenant_id)
        .num("isolated_seconds", std::chrono::duration_cast<std::chrono::seconds>(restart_window).count());
    }
  });
  return {
    [=](tenant_atom, const std::string& tenant_id) -> caf::result<tenant_actor> {
      auto& st = self->state;
      // Only authentication names tenants, with ids read from the store: an empty or
      // malformed id is a bug upstream, never a reason to invent a tenant (with no limits).
      if (!valid_tenant_id(tenant_id))
        return caf::make_error(actor_errc::unknown_tenant);
      auto it = st.tenants.find(tenant_id);
      if (it != st.tenants.end())
        return it->second;
      if (auto c = st.crashed.find(tenant_id); c != st.crashed.end()) {
        if (caf::make_timestamp() < c->second.isolated_until)
          return caf::make_error(actor_errc::tenant_isolated);
        if (c->second.crashes.empty())
          st.crashed.erase(c);
        else {
          ++st.stats.restarts;
          if (svc && svc->actors)
            svc->actors->tenant_restarts.fetch_add(1, std::memory_order_relaxed);
        }
      }
      // Linked: the tenants die with their manager; monitored: the manager learns of
      // every tenant that stops, to forget it (and, with the chat work, restart it).
      auto t = self->spawn<caf::linked + caf::monitored>(tenant_impl, tenant_id, svc);
      st.tenants.emplace(tenant_id, t);
      st.by_addr.emplace(t.address(), tenant_id);
      st.children.insert(t.address());
      ++st.stats.spawned;
      st.stats.active_tenants = st.tenants.size();
      return t;
    },
    [=](stats_atom) { return self->state.stats; },
  };
}

struct directory_state {
  tenant_manager_actor local;
  static inline const char* name = "parley.tenant_directory";
};

tenant_directory_actor::behavior_type
directory_impl(tenant_directory_actor::stateful_pointer<directory_state> self,
               tenant_manager_actor local) {
  self->state.local = std::move(local);
  return {
    [=](locate_atom, const std::string&) { return self->state.local; },
  };
}

} // namespace

tenant_manager_actor spawn_tenant_manager(caf::actor_system& sys, log::logger_ptr logger,
                                          std::shared_ptr<const chat_services> svc) {
  return sys.spawn(manager_impl, std::move(logger), std::move(svc));
}

tenant_directory_actor spawn_tenant_directory(caf::actor_system& sys, tenant_manager_actor local) {
  return sys.spawn(directory_impl, std::move(local));
}

std::shared_ptr<std::atomic<int64_t>> tenant_load_board::join(const std::string& tenant_id) {
  auto cell = std::make_shared<std::atomic<int64_t>>(0);
  std::lock_guard<std::mutex> lock(mu_);
  cells_[tenant_id] = cell; // a restarted tenant replaces its old cell
  return cell;
}

void tenant_load_board::leave(const std::string& tenant_id,
                              const std::shared_ptr<std::atomic<int64_t>>& cell) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = cells_.find(tenant_id);
  if (it != cells_.end() && it->second == cell)
    cells_.erase(it);
}

std::vector<std::pair<std::string, int64_t>> tenant_load_board::top(std::size_t n) const {
  std::vector<std::pair<std::string, int64_t>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    all.reserve(cells_.size());
    for (auto& [id, c] : cells_)
      all.emplace_back(id, c->load(std::memory_order_relaxed));
  }
  auto k = std::min(n, all.size());
  std::partial_sort(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(k), all.end(),
                    [](auto& a, auto& b) { return a.second > b.second; });
  all.resize(k);
  return all;
}

} // namespace parley::actors
