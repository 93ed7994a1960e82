// The tenant manager: spawns one tenant actor per tenant on first use and supervises them --
// a crashed tenant restarts on its next request, within a budget, else it is isolated for a
// while; other tenants never notice.
#include "internal.hpp"
#include "parley/actors/spawn.hpp"
#include "parley/persistence/executor.hpp"
#include "parley/persistence/store.hpp"

#include <algorithm>
#include <cctype>
#include <deque>
#include <unordered_map>
#include <unordered_set>

namespace parley::actors {
namespace {

/// Restarts allowed per window before a tenant is isolated for one window.
constexpr std::size_t restart_budget = 5;
constexpr std::chrono::seconds restart_window{60};

/// A tenant id as the store makes them: 1-64 characters of [A-Za-z0-9_-].
bool valid_tenant_id(const std::string& id) {
  if (id.empty() || id.size() > 64)
    return false;
  return std::all_of(id.begin(), id.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '_' || c == '-';
  });
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
  /// Cluster: lookups waiting for the claim of their tenant (one claim per tenant at a time).
  std::unordered_map<std::string, std::vector<caf::typed_response_promise<tenant_actor>>> claiming;
  static inline const char* name = "parley.tenant_manager";
};

tenant_manager_actor::behavior_type
manager_impl(tenant_manager_actor::stateful_pointer<manager_state> self, log::logger_ptr logger,
             std::shared_ptr<const chat_services> svc) {
  self->state.logger = std::move(logger);
  // Tenants are linked so that they die with their manager; a tenant that dies must not take
  // the manager (and every other tenant) with it. (A child ending with exit_reason::kill
  // cannot be trapped by anyone in CAF: nothing in parley sends kill to a tenant.)
  detail::absorb_child_exits(self);
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
  // Linked: the tenants die with their manager; monitored: the manager learns of every
  // tenant that stops, to forget it (and, after a crash, restart it).
  auto spawn = [=](const std::string& tenant_id) -> tenant_actor {
    auto& st = self->state;
    auto t = detail::spawn_tenant(self, tenant_id, svc);
    self->monitor(t);
    st.tenants.emplace(tenant_id, t);
    st.by_addr.emplace(t.address(), tenant_id);
    st.children.insert(t.address());
    ++st.stats.spawned;
    st.stats.active_tenants = st.tenants.size();
    return t;
  };
  auto start_claim = [=](const std::string& tenant_id) {
    auto me = caf::actor_cast<tenant_manager_actor>(self);
    auto* cs = svc->store ? svc->store->cluster() : nullptr;
    auto cluster = svc->cluster;
    auto job = [me, cs, cluster, tenant_id] {
      // The incarnation the claim is made for travels with its answer: a claim that lands
      // after a fence and a rejoin belongs to a dead incarnation and must not spawn anything.
      auto inc = cluster->incarnation();
      auto reply = [&](int64_t epoch, std::string owner, std::string address, std::string why) {
        caf::anon_send(me, claimed_atom::value, tenant_id, inc, epoch, std::move(owner),
                       std::move(address), std::move(why));
      };
      if (inc == 0)
        return reply(0, {}, {}, "this node holds no lease");
      auto r = cs ? cs->claim_tenant(tenant_id, cluster->node_id(), inc)
                  : persistence::result<persistence::claim_result>(persistence::store_error{
                      persistence::persistence_errc::internal, "the store has no cluster tables"});
      if (!r.ok())
        return reply(0, {}, {}, r.error().detail);
      if (r->claimed)
        return reply(r->owner.epoch, {}, {}, {});
      reply(0, r->owner.node_id, r->owner.address, {});
    };
    if (!svc->executor || !svc->executor->try_post(job))
      caf::anon_send(me, claimed_atom::value, tenant_id, svc->cluster->incarnation(), int64_t{0},
                     std::string(), std::string(), std::string("persistence workers saturated"));
  };
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
      if (!svc || !svc->cluster)
        return spawn(tenant_id);
      // A cluster: the tenant is ours only once the store says so (a conditional claim that
      // fails while another live node holds it). The claim runs on a persistence worker.
      if (!svc->cluster->lease_valid())
        return caf::make_error(actor_errc::no_lease);
      auto promise = self->make_response_promise<tenant_actor>();
      auto& waiting = st.claiming[tenant_id];
      waiting.push_back(promise);
      if (waiting.size() == 1)
        start_claim(tenant_id);
      return promise;
    },
    [=](claimed_atom, const std::string& tenant_id, int64_t incarnation, int64_t epoch,
        const std::string& owner, const std::string& owner_address, const std::string& why) {
      auto& st = self->state;
      auto waiting = std::move(st.claiming[tenant_id]);
      st.claiming.erase(tenant_id);
      if (epoch > 0) {
        // Claimed -- for the incarnation we still are, with a lease still valid? A fence (and
        // perhaps a rejoin) since the claim makes it another incarnation's: then we must not.
        if (svc->cluster->incarnation() != incarnation || !svc->cluster->lease_valid()) {
          for (auto& p : waiting)
            p.deliver(caf::make_error(actor_errc::no_lease));
          return;
        }
        auto it = st.tenants.find(tenant_id);
        tenant_actor t = it != st.tenants.end() ? it->second : spawn(tenant_id);
        for (auto& p : waiting)
          p.deliver(t);
        return;
      }
      if (!owner.empty()) {
        for (auto& p : waiting)
          p.deliver(caf::make_error(actor_errc::not_owner, owner, owner_address));
        return;
      }
      log::event(st.logger, spdlog::level::warn, "tenant claim failed")
        .str("tenant_id", tenant_id)
        .str("error", why);
      for (auto& p : waiting)
        p.deliver(caf::make_error(actor_errc::no_lease));
    },
    [=](fence_atom) {
      // Our lease is gone: another node may own our tenants any moment now. Stop them all;
      // their in-flight turns end (the relays hear their producers stop).
      auto& st = self->state;
      if (!st.tenants.empty())
        log::event(st.logger, spdlog::level::err, "lease lost: stopping every tenant actor")
          .num("tenants", static_cast<int64_t>(st.tenants.size()));
      for (auto& [id, t] : st.tenants)
        self->send_exit(t, caf::exit_reason::user_shutdown);
    },
    [=](stats_atom) { return self->state.stats; },
  };
}

} // namespace

tenant_manager_actor spawn_tenant_manager(caf::actor_system& sys, log::logger_ptr logger,
                                          std::shared_ptr<const chat_services> svc) {
  return sys.spawn(manager_impl, std::move(logger), std::move(svc));
}

} // namespace parley::actors
