#include "node_metrics.hpp"

#include <chrono>

namespace parley::runtime::detail {

namespace {
using metrics::metric_type;
double v(const std::atomic<uint64_t>& a) { return static_cast<double>(a.load(std::memory_order_relaxed)); }
double v(const std::atomic<int64_t>& a) { return static_cast<double>(a.load(std::memory_order_relaxed)); }
} // namespace

void add_node_collectors(metrics::registry& reg, metric_sources src) {
  metrics::add_process_collector(reg);
  auto s = std::make_shared<metric_sources>(std::move(src));

  reg.add_collector([s](metrics::exposition_writer& w) {
    w.family("parley_build_info", "Version and commit of this parley build (value 1)", metric_type::gauge);
    w.sample({{"version", s->version}, {"commit", s->commit}}, 1);
  });

  if (s->admission)
    reg.add_collector([s](metrics::exposition_writer& w) {
      auto& c = *s->admission;
      w.family("parley_admission_rejections_total",
               "Chat requests refused at admission, by reason", metric_type::counter);
      w.sample({{"reason", "rate_limited"}}, v(c.rate_limited));
      w.sample({{"reason", "quota"}}, v(c.quota_rejected));
      w.sample({{"reason", "shed_tenant"}}, v(c.shed_tenant));
      w.sample({{"reason", "shed_node"}}, v(c.shed_node));
      w.family("parley_admitted_total", "Chat requests admitted by tenant actors", metric_type::counter);
      w.sample(v(c.admitted));
      w.family("parley_cache_requests_total", "Response cache lookups, by result", metric_type::counter);
      w.sample({{"result", "hit"}}, v(c.cache_hits));
      w.sample({{"result", "miss"}}, v(c.cache_misses));
      w.family("parley_budget_cutoffs_total",
               "Completions cut off at the tenant's daily token budget", metric_type::counter);
      w.sample(v(c.budget_cutoffs));
    });

  if (!s->routes.empty())
    reg.add_collector([s](metrics::exposition_writer& w) {
      auto now = std::chrono::steady_clock::now();
      static const char* outcomes[] = {"ok", "error", "timeout", "rate_limited", "breaker_open"};
      static const char* phases[] = {"connect", "tls", "first_byte", "idle", "total"};
      // One pass over the deployments; the writer gathers each family's samples under it.
      for (auto& r : s->routes) {
        std::string rn = r->model().empty() ? std::string("*") : r->model();
        for (auto& d : r->deployments()) {
          auto& c = d->counters;
          metrics::label route{"route", rn}, dep{"deployment", d->name};
          const std::atomic<uint64_t>* by_outcome[] = {&c.ok, &c.error, &c.timeout, &c.rate_limited,
                                                       &c.breaker_open};
          w.family("parley_upstream_attempts_total", "Upstream attempts by route, deployment and outcome",
                   metric_type::counter);
          for (std::size_t i = 0; i < 5; ++i)
            w.sample({route, dep, {"outcome", outcomes[i]}}, v(*by_outcome[i]));
          w.family("parley_upstream_retries_total", "Upstream retries by route and deployment",
                   metric_type::counter);
          w.sample({route, dep}, v(c.retries));
          w.family("parley_upstream_retry_budget_exhausted_total",
                   "Retries not made because the deployment's retry budget was spent", metric_type::counter);
          w.sample({route, dep}, v(c.budget_exhausted));
          w.family("parley_upstream_timeouts_total", "Upstream timeouts by route, deployment and phase",
                   metric_type::counter);
          for (std::size_t p = 0; p < net::deployment_counters::phases; ++p)
            w.sample({route, dep, {"phase", phases[p]}}, v(c.timeouts[p]));
          w.family("parley_upstream_breaker_state",
                   "Circuit breaker of each deployment: 0 closed, 1 half-open, 2 open", metric_type::gauge);
          w.sample({route, dep}, static_cast<double>(static_cast<int>(d->breaker.current(now))));
          w.family("parley_upstream_in_flight", "Upstream attempts in flight by route and deployment",
                   metric_type::gauge);
          w.sample({route, dep}, v(d->outstanding));
        }
        w.family("parley_upstream_fallbacks_total", "Calls served by a fallback model, by route and fallback",
                 metric_type::counter);
        for (std::size_t i = 0; i < r->fallbacks().size(); ++i)
          w.sample({{"from", rn}, {"to", r->fallbacks()[i]->model()}},
                   static_cast<double>(r->fallbacks_served(i)));
      }
    });

  if (s->actors)
    reg.add_collector([s](metrics::exposition_writer& w) {
      auto& a = *s->actors;
      w.family("parley_actors", "Live actors by kind", metric_type::gauge);
      w.sample({{"kind", "tenant"}}, v(a.tenants));
      w.sample({{"kind", "conversation"}}, v(a.conversations));
      w.sample({{"kind", "turn"}}, v(a.turns));
      w.family("parley_actor_passivations_total", "Actors stopped after their idle timeout, by kind",
               metric_type::counter);
      w.sample({{"kind", "conversation"}}, v(a.conversation_passivations));
      w.family("parley_actor_restarts_total", "Actors restarted after a crash, by kind", metric_type::counter);
      w.sample({{"kind", "tenant"}}, v(a.tenant_restarts));
    });

  if (s->locator && s->lease_held)
    reg.add_collector([s](metrics::exposition_writer& w) {
      auto& r = s->locator->remote();
      w.family("parley_cluster_lease_held", "1 while this node holds a live cluster lease",
               metric_type::gauge);
      w.sample(s->lease_held() ? 1.0 : 0.0);
      w.family("parley_cluster_members", "Live nodes at the last reading of the nodes table",
               metric_type::gauge);
      w.sample(static_cast<double>(s->live_members()));
      w.family("parley_cluster_forwarded_admissions_total",
               "Chat admissions this node sent to a tenant owned by another node", metric_type::counter);
      w.sample(static_cast<double>(r.forwarded.load(std::memory_order_relaxed)));
      w.family("parley_cluster_unavailable_total",
               "Chat requests answered 503 because their tenant could not be reached (owner "
               "unreachable, no lease, ownership changing hands, tenant isolated)",
               metric_type::counter);
      w.sample(static_cast<double>(r.failed.load(std::memory_order_relaxed)));
    });

  if (s->load)
    reg.add_collector([s](metrics::exposition_writer& w) {
      w.family("parley_tenant_in_flight", "Chat requests in flight of the busiest tenants",
               metric_type::gauge);
      for (auto& [tenant, n] : s->load->top(static_cast<std::size_t>(s->top_tenants)))
        if (n > 0)
          w.sample({{"tenant", tenant}}, static_cast<double>(n));
    });

  if (s->server)
    reg.add_collector([s](metrics::exposition_writer& w) {
      auto* srv = s->server();
      w.family("parley_http_in_flight", "HTTP requests read and not yet fully answered", metric_type::gauge);
      w.sample(srv ? static_cast<double>(srv->in_flight()) : 0.0);
      w.family("parley_streams_active", "Server-sent event streams being written", metric_type::gauge);
      w.sample(srv ? static_cast<double>(srv->streams()) : 0.0);
      w.family("parley_http_connections", "Open client connections", metric_type::gauge);
      w.sample(srv ? static_cast<double>(srv->open_sessions()) : 0.0);
      w.family("parley_http_connections_refused_total",
               "Connections reset at accept because they were over http.max_connections or "
               "http.max_connections_per_client", metric_type::counter);
      w.sample(srv ? static_cast<double>(srv->connections_refused()) : 0.0);
      w.family("parley_http_accept_errors_total",
               "Failed accepts (out of file descriptors or memory: the listener backs off)",
               metric_type::counter);
      w.sample(srv ? static_cast<double>(srv->accept_errors()) : 0.0);
    });

  if (s->store)
    reg.add_collector([s](metrics::exposition_writer& w) {
      auto in_use = s->store->pool_in_use();
      auto size = s->store->pool_size();
      w.family("parley_store_pool_connections", "Store connections by state", metric_type::gauge);
      w.sample({{"state", "in_use"}}, in_use);
      w.sample({{"state", "idle"}}, size > in_use ? size - in_use : 0);
      if (s->store_up) {
        w.family("parley_store_up", "1 when the last store health check succeeded", metric_type::gauge);
        w.sample(s->store_up->load() ? 1 : 0);
      }
      if (s->store_errors) {
        w.family("parley_store_errors_total", "Failed store health checks",
                 metric_type::counter);
        w.sample(v(*s->store_errors));
      }
    });

  if (s->writer)
    reg.add_collector([s](metrics::exposition_writer& w) {
      auto* tw = s->writer();
      auto c = tw ? tw->stats() : persistence::turn_writer::counters{};
      w.family("parley_turn_commits_total",
               "Group-commit transactions of turn messages and usage ledger rows", metric_type::counter);
      w.sample(static_cast<double>(c.batches));
      w.family("parley_usage_parked_rows",
               "Usage ledger rows waiting for the store to come back (retried every second)",
               metric_type::gauge);
      w.sample(static_cast<double>(c.parked));
      w.family("parley_usage_parked_dropped_total",
               "Usage ledger rows dropped because too many waited for the store", metric_type::counter);
      w.sample(static_cast<double>(c.parked_dropped));
    });
}

} // namespace parley::runtime::detail
