#include "parley/runtime/app.hpp"

#include "parley/actors/spawn.hpp"
#include "parley/config/loader.hpp"
#include "parley/net/admin_api.hpp"
#include "parley/net/auth.hpp"
#include "parley/net/chat_api.hpp"
#include "parley/net/middlewares.hpp"
#include "parley/net/openai_provider.hpp"
#include "parley/net/resilience.hpp"
#include "parley/net/ops.hpp"
#include "parley/net/server.hpp"
#include "parley/persistence/executor.hpp"
#include "parley/persistence/ids.hpp"
#include "parley/persistence/open.hpp"
#include "parley/runtime/secrets.hpp"
#include "batch_sink.hpp"
#include "cluster_membership.hpp"
#include "invalidation_listener.hpp"
#include "io_scheduler.hpp"
#include "wiring.hpp"
#include "node_metrics.hpp"
#include "parley/net/metrics.hpp"
#include "parley/runtime/version.hpp"
#include "parley/tenants/admin_ops.hpp"
#include "parley/tenants/key_cache.hpp"
#include "parley/tenants/last_used.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/steady_timer.hpp>
#include <caf/all.hpp>
#include <caf/io/middleman.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/openssl/publish.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/async.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/rotating_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <algorithm>
#include <cstdlib>
#include <dlfcn.h>
#include <malloc.h>
#include <filesystem>
#include <map>
#include <thread>

namespace parley::runtime {

net::route_policy to_route_policy(const config::resilience_settings& r) {
  net::route_policy p;
  p.lb = r.lb;
  p.total_timeout_ms = r.total_timeout_ms;
  p.retry.max_attempts = r.max_attempts;
  p.retry.backoff_base_ms = r.backoff_base_ms;
  p.retry.backoff_max_ms = r.backoff_max_ms;
  p.retry.retry_after_max_ms = r.retry_after_max_ms;
  p.retry.budget_ratio = r.retry_budget_percent / 100.0;
  p.retry.budget_min_per_second = r.retry_budget_min_per_second;
  p.retry.statuses = r.retry_statuses;
  p.fallback_on.clear();
  for (auto& c : r.fallback_on)
    p.fallback_on.push_back(net::parse_failure_class(c));
  return p;
}

log::logger_ptr make_logger(const config::log_settings& s, bool async) {
  std::vector<spdlog::sink_ptr> sinks;
  sinks.push_back(std::make_shared<spdlog::sinks::stdout_sink_mt>());
  if (!s.file.empty())
    sinks.push_back(std::make_shared<spdlog::sinks::rotating_file_sink_mt>(
      s.file, s.file_max_bytes, static_cast<std::size_t>(s.file_count)));
  log::logger_ptr logger;
  if (async) {
    // One background thread writes, every 20 ms or at once after a warning: a line costs
    // the logging thread a copy, not a wake-up of another thread (batch_sink.hpp).
    std::vector<spdlog::sink_ptr> batched{std::make_shared<batch_sink>(
      std::move(sinks), std::chrono::milliseconds(20), 65536)};
    logger = std::make_shared<spdlog::logger>("parley", batched.begin(), batched.end());
  } else {
    logger = std::make_shared<spdlog::logger>("parley", sinks.begin(), sinks.end());
    logger->flush_on(spdlog::level::warn);
  }
  logger->set_formatter(std::make_unique<spdlog::pattern_formatter>(
    log::json_pattern, spdlog::pattern_time_type::utc, "\n"));
  logger->set_level(spdlog::level::from_str(s.level));
  return logger;
}

namespace {

/// Hands the heap's free pages back to the OS. With jemalloc (linked into the parley
/// executable, or preloaded) that is a purge of every arena -- it would also return them by
/// itself after its decay time; with glibc's malloc, malloc_trim (glibc keeps them otherwise).
void give_back_free_heap() {
  using mallctl_fn = int (*)(const char*, void*, std::size_t*, void*, std::size_t);
  static const auto mallctl = reinterpret_cast<mallctl_fn>(dlsym(RTLD_DEFAULT, "mallctl"));
  if (mallctl) {
    // "arena.<MALLCTL_ARENAS_ALL>.purge"; MALLCTL_ARENAS_ALL is 4096 in jemalloc 5.
    (void)mallctl("arena.4096.purge", nullptr, nullptr, nullptr, 0);
    return;
  }
  malloc_trim(0);
}

/// Readiness of this node: not draining, store reachable, migrations applied. The store
/// round trip runs on the persistence workers, never on the io thread that asked.
class node_readiness final : public net::readiness_source {
public:
  node_readiness(persistence::store& store, persistence::store_executor& exec,
                 std::atomic<bool>& draining, const std::unique_ptr<cluster_membership>* cluster)
    : store_(store), exec_(exec), draining_(draining), cluster_(cluster) {}

  std::vector<net::dependency_status> instant() override {
    std::vector<net::dependency_status> deps{
      {"node", !draining_.load(), draining_.load() ? "draining" : "serving"}};
    // A cluster node without a live lease serves no tenants: not ready.
    if (cluster_) {
      bool held = *cluster_ && (*cluster_)->has_lease();
      deps.push_back({"cluster", held, held ? "lease held" : "no lease"});
    }
    return deps;
  }

  void check(std::function<void(std::vector<net::dependency_status>)> done) override {
    auto job = [this, done] {
      std::vector<net::dependency_status> deps;
      auto ping = store_.ping();
      deps.push_back({"store", ping.ok(),
                      ping.ok() ? std::string(store_.backend()) + " reachable"
                                : std::string(store_.backend()) + " " +
                                    persistence::to_string(ping.code())});
      if (ping.ok()) {
        auto pending = store_.pending_migrations();
        bool ok = pending.ok() && pending->empty();
        deps.push_back({"migrations", ok,
                        !pending.ok() ? "unknown"
                        : ok          ? "up to date"
                                      : std::to_string(pending->size()) + " pending"});
      } else {
        deps.push_back({"migrations", false, "unknown"});
      }
      done(std::move(deps));
    };
    if (!exec_.try_post(job))
      done({{"store", false, "persistence workers saturated"}, {"migrations", false, "unknown"}});
  }

private:
  persistence::store& store_;
  persistence::store_executor& exec_;
  std::atomic<bool>& draining_;
  const std::unique_ptr<cluster_membership>* cluster_; ///< null: not a cluster
};

} // namespace

struct app::impl {
  config::settings settings;
  log::logger_ptr logger;
  std::atomic<bool> draining{false};
  bool started = false;
  bool stopped = false;
  uint16_t port = 0;

  // Start order (destroyed in reverse): store, workers, actor system, io, listener.
  std::string admin_key;
  std::string pepper;
  std::unique_ptr<persistence::store> store;
  std::unique_ptr<persistence::store_executor> executor;
  std::unique_ptr<persistence::turn_writer> writer;
  std::unique_ptr<tenants::key_cache> keys;
  std::unique_ptr<tenants::failure_throttle> throttle;
  std::unique_ptr<tenants::last_used_recorder> last_used;
  std::unique_ptr<tenants::admin_ops> ops;
  std::shared_ptr<const actors::route_table> routes;
  std::vector<std::shared_ptr<net::resilient_route>> resilient_routes;
  std::unique_ptr<caf::actor_system_config> caf_cfg;
  std::unique_ptr<caf::actor_system> sys;
  actors::tenant_manager_actor tenant_manager;
  actors::tenant_directory_actor tenant_directory;
  std::shared_ptr<net::tenant_locator> tenants; ///< the tenant actors the handlers found
  std::unique_ptr<net::io_pool> io; ///< one io_context per io thread
  std::vector<net::asio::executor_work_guard<net::asio::io_context::executor_type>> work;
  std::vector<std::thread> io_threads;
  std::unique_ptr<net::server> server;
  std::shared_ptr<const net::pipeline> api_pipeline;
  std::shared_ptr<std::atomic<int64_t>> chat_in_flight = std::make_shared<std::atomic<int64_t>>(0);
  actors::admission_counters counters;
  actors::actor_counters actor_counts;
  actors::tenant_load_board tenant_load;
  std::shared_ptr<metrics::registry> registry = std::make_shared<metrics::registry>();
  std::shared_ptr<net::request_metrics> request_metrics;
  std::unique_ptr<net::server> metrics_server;
  uint16_t metrics_port = 0;
  std::atomic<uint64_t> io_escapes{0}; ///< exceptions that unwound out of io_context::run
  std::atomic<bool> store_up{true};
  std::atomic<uint64_t> store_errors{0};
  uint64_t trimmed_at = 0; ///< passivations counted at the last malloc_trim (io thread only)
  std::unique_ptr<net::asio::steady_timer> health_timer;
  std::unique_ptr<net::asio::steady_timer> flush_timer;
  // Cluster (cluster.enabled): this node's identity, its membership loop, the lease watchdog,
  // and the listener that keeps the key cache true to changes made through other nodes.
  std::shared_ptr<actors::cluster_identity> identity;
  std::unique_ptr<cluster_membership> membership;
  std::unique_ptr<invalidation_listener> invalidation;
  std::unique_ptr<net::asio::steady_timer> lease_timer;
  uint16_t cluster_port = 0;

  void load_secrets() {
    std::string generated;
    admin_key = detail::resolve_admin_key(settings, &generated);
    if (!generated.empty()) // the path, never the key
      log::event(logger, spdlog::level::info, "admin key file").str("path", generated);
    pepper = detail::resolve_pepper(settings);
  }

  /// Writes the batched last_used_at times (on a persistence worker).
  void flush_last_used() {
    auto batch = last_used->take();
    if (batch.empty())
      return;
    auto* st = store.get();
    auto lg = logger;
    bool queued = executor->try_post([st, lg, batch = std::move(batch)] {
      auto r = st->touch_keys(batch);
      if (!r.ok())
        log::event(lg, spdlog::level::warn, "last_used_at flush failed")
          .str("error", r.error().detail);
    });
    if (!queued)
      log::event(logger, spdlog::level::warn, "last_used_at flush skipped: workers saturated");
  }

  void schedule_flush() {
    flush_timer->expires_after(std::chrono::seconds(settings.auth.last_used_flush_seconds));
    flush_timer->async_wait([this](boost::system::error_code ec) {
      if (ec)
        return;
      flush_last_used();
      schedule_flush();
    });
  }

  /// Every 5 s a store ping on a persistence worker keeps parley_store_up current.
  void schedule_health() {
    health_timer->expires_after(std::chrono::seconds(5));
    health_timer->async_wait([this](boost::system::error_code ec) {
      if (ec)
        return;
      auto* st = store.get();
      auto* up = &store_up;
      auto* errors = &store_errors;
      (void)executor->try_post([st, up, errors] {
        bool ok = st->ping().ok();
        up->store(ok);
        if (!ok)
          errors->fetch_add(1, std::memory_order_relaxed);
      });
      // After a wave of passivations, hand the freed heap back to the OS (glibc keeps it
      // otherwise). On a persistence worker: trimming a large heap takes milliseconds.
      auto passivated = actor_counts.conversation_passivations.load(std::memory_order_relaxed);
      if (passivated - trimmed_at >= 100) {
        trimmed_at = passivated;
        (void)executor->try_post([] { give_back_free_heap(); });
      }
      schedule_health();
    });
  }

  void setup_metrics() {
    if (!settings.metrics.enabled)
      return;
    request_metrics = std::make_shared<net::request_metrics>(*registry, settings.metrics.tenant_label);
    executor->observe_with(&registry
                             ->histogram_family("parley_store_query_duration_seconds",
                                                "Time of store operations on the persistence workers")
                             .with());
    detail::metric_sources src;
    src.version = version_string();
    src.commit = git_commit();
    src.admission = &counters;
    src.actors = &actor_counts;
    src.load = &tenant_load;
    src.top_tenants = settings.metrics.top_tenants;
    src.routes = resilient_routes;
    src.server = [this]() -> const net::server* { return server.get(); };
    src.store = store.get();
    src.store_up = &store_up;
    src.store_errors = &store_errors;
    src.writer = [this]() -> const persistence::turn_writer* { return writer.get(); };
    if (identity) {
      tenants->remote().latency =
        &registry
           ->histogram_family("parley_cluster_remote_admission_seconds",
                              "Round trip of a chat admission sent to the tenant's owner on "
                              "another node (request to its answer)",
                              {}, {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                   0.05, 0.1, 0.25, 0.5, 1, 2.5})
           .with();
      src.locator = tenants;
      // The membership starts after the metrics (once the HTTP listener is bound).
      src.lease_held = [this] { return membership && membership->has_lease(); };
      src.live_members = [this] { return membership ? membership->live_members() : 0; };
    }
    detail::add_node_collectors(*registry, std::move(src));
  }

  void open_store() {
    auto& st = settings.store;
    store = detail::open_configured_store(settings);
    log::event(logger, spdlog::level::info, "store opened")
      .str("backend", store->backend())
      .str("location", st.backend == "postgres" ? persistence::redact_dsn(st.postgres_dsn)
                                                : detail::sqlite_path(settings));
    if (st.migrate_on_start) {
      auto applied = store->migrate();
      if (!applied.ok())
        // Unreachable database: serve anyway and report not-ready; anything else is fatal.
        if (applied.code() != persistence::persistence_errc::unavailable)
          throw std::runtime_error(std::string("migrations failed: ") +
                                   persistence::to_string(applied.code()) + ": " +
                                   applied.error().detail);
      if (applied.ok() && !applied->empty())
        log::event(logger, spdlog::level::info, "migrations applied")
          .num("count", static_cast<int64_t>(applied->size()))
          .num("latest", applied->back());
      if (!applied.ok())
        log::event(logger, spdlog::level::err, "store unreachable at start; not ready")
          .str("error", applied.error().detail);
    }
  }

  /// Every model this node serves becomes a resilient route over its deployments; then the
  /// fallbacks are linked by name. Upstream clients (connection pools) are shared by
  /// deployments with the same URL, key and timeouts.
  std::shared_ptr<const actors::route_table> build_routes(const std::shared_ptr<actors::provider_port>& echo) {
    std::vector<actors::route> named_routes;
    std::shared_ptr<actors::provider_port> any_model;
    std::map<std::string, std::shared_ptr<actors::provider_port>> clients;
    auto client_for = [&](const std::string& url, const std::string& key,
                          const config::resilience_settings& r) {
      net::upstream_client_settings cs;
      cs.connect_timeout_ms = r.connect_timeout_ms;
      cs.tls_timeout_ms = r.tls_timeout_ms;
      cs.first_byte_timeout_ms = r.first_byte_timeout_ms;
      cs.idle_timeout_ms = r.idle_timeout_ms;
      auto id = url + '\n' + key + '\n' + std::to_string(cs.connect_timeout_ms) + '/' +
                std::to_string(cs.tls_timeout_ms) + '/' + std::to_string(cs.first_byte_timeout_ms) +
                '/' + std::to_string(cs.idle_timeout_ms);
      auto& c = clients[id];
      if (!c)
        c = net::make_openai_provider(*io, url, key, cs, logger);
      return c;
    };
    auto key_from_env = [](const std::string& model, const std::string& var) {
      if (var.empty())
        return std::string();
      const char* v = std::getenv(var.c_str());
      if (!v)
        throw std::runtime_error("route " + model + ": environment variable " + var + " is not set");
      return std::string(v);
    };
    auto make_route = [&](const std::string& model, const std::string& upstream_model,
                          const std::vector<config::deployment_settings>& deps,
                          const config::resilience_settings& r, const std::string* fixed_key = nullptr) {
      auto policy = to_route_policy(r);
      net::breaker_policy bp;
      bp.consecutive_failures = r.breaker_failures;
      bp.failure_ratio = r.breaker_failure_percent / 100.0;
      bp.window_seconds = r.breaker_window_seconds;
      bp.min_requests = r.breaker_min_requests;
      bp.open_ms = r.breaker_open_ms;
      bp.half_open_probes = r.breaker_half_open_probes;
      std::vector<std::shared_ptr<net::deployment>> out;
      for (auto& d : deps) {
        std::shared_ptr<actors::provider_port> client;
        std::string name = d.name;
        if (d.provider == "builtin") {
          client = echo;
          if (name.empty())
            name = "builtin";
        } else {
          client = client_for(d.base_url, fixed_key ? *fixed_key : key_from_env(model, d.api_key_env), r);
          if (name.empty())
            name = d.base_url;
        }
        out.push_back(std::make_shared<net::deployment>(
          model.empty() ? "*" : model, name,
          d.upstream_model.empty() ? upstream_model : d.upstream_model, client, d.weight, bp,
          policy.retry));
      }
      auto route = std::make_shared<net::resilient_route>(*io, model, std::move(policy),
                                                          std::move(out), logger);
      resilient_routes.push_back(route);
      return route;
    };
    std::map<std::string, std::shared_ptr<net::resilient_route>> by_model;
    std::vector<std::pair<std::shared_ptr<net::resilient_route>, std::vector<std::string>>> links;
    if (settings.chat.echo_enabled) {
      config::deployment_settings d;
      d.provider = "builtin";
      auto r = make_route("parley-echo", "parley-echo", {d}, settings.resilience);
      by_model["parley-echo"] = r;
      named_routes.push_back({"parley-echo", "parley-echo", r, settings.chat.context_tokens, "parley",
                              settings.chat.max_output_tokens});
    }
    for (auto& rs : settings.routes) {
      auto deps = rs.deployments;
      if (deps.empty()) {
        config::deployment_settings d;
        d.provider = rs.provider;
        d.base_url = rs.base_url;
        d.api_key_env = rs.api_key_env;
        deps.push_back(d);
      }
      auto upstream_model = rs.upstream_model.empty() ? rs.model : rs.upstream_model;
      auto r = make_route(rs.model, upstream_model, deps, rs.resilience);
      // A configured route replaces the built-in one of the same name.
      named_routes.erase(std::remove_if(named_routes.begin(), named_routes.end(),
                                        [&](const actors::route& x) { return x.model == rs.model; }),
                         named_routes.end());
      by_model[rs.model] = r;
      named_routes.push_back({rs.model, upstream_model, r,
                              rs.context_tokens > 0 ? rs.context_tokens : settings.chat.context_tokens,
                              rs.provider == "builtin" && rs.deployments.empty() ? "parley" : "upstream",
                              rs.max_output_tokens > 0 ? rs.max_output_tokens
                                                       : settings.chat.max_output_tokens});
      links.emplace_back(r, rs.fallbacks);
      for (auto& d : deps)
        log::event(logger, spdlog::level::info, "route")
          .str("model", rs.model)
          .str("provider", d.provider)
          .str("base_url", d.base_url) // never the key
          .num("weight", d.weight);
    }
    for (auto& [route, names] : links) {
      std::vector<std::shared_ptr<net::resilient_route>> fbs;
      for (auto& n : names)
        fbs.push_back(by_model.at(n));
      route->set_fallbacks(std::move(fbs));
    }
    // Quick start: every other model goes to one OpenAI-compatible upstream.
    if (!settings.upstream.url.empty()) {
      config::deployment_settings d;
      d.base_url = settings.upstream.url;
      // Its key comes from the settings, not an environment variable.
      any_model = make_route("", "", {d}, settings.resilience, &settings.upstream.key);
      log::event(logger, spdlog::level::info, "upstream configured")
        .str("url", settings.upstream.url); // the URL, never the key
    }
    return std::make_shared<actors::route_table>(std::move(named_routes), std::move(any_model),
                                                 settings.chat.context_tokens,
                                                 settings.chat.max_output_tokens);
  }

  void start_actors() {
    caf_cfg = std::make_unique<caf::actor_system_config>();
    // 0 (the default): the actors run on the io threads (io_scheduler.hpp); N: on CAF's own
    // N worker threads, a message crossing threads at every io/actor boundary.
    if (settings.actors.scheduler_threads == 0)
      install_io_scheduler(*caf_cfg, *io);
    else
      caf_cfg->set("scheduler.max-threads", settings.actors.scheduler_threads);
    caf_cfg->set("scheduler.max-throughput", settings.actors.max_throughput);
    actors::register_types(*caf_cfg);
    if (settings.cluster.enabled) {
      if (!store->cluster())
        throw std::runtime_error("cluster.enabled needs a store with cluster tables (postgres)");
      // Other nodes' managers are reached over CAF's middleman. Heartbeats detect a silent
      // peer (no FIN, no RST): its connection is dropped after six intervals and the calls
      // on it fail (CAF's default is no heartbeat at all).
      caf_cfg->load<caf::io::middleman>();
      if (!settings.cluster.tls_cert_file.empty()) {
        // Mutual TLS between nodes: with a certificate set, CAF's OpenSSL module requires the
        // peer's certificate to chain to the CA (SSL_VERIFY_PEER | FAIL_IF_NO_PEER_CERT).
        for (auto* f : {&settings.cluster.tls_cert_file, &settings.cluster.tls_key_file,
                        &settings.cluster.tls_ca_file})
          if (!std::filesystem::exists(*f))
            throw std::runtime_error("cluster TLS file not found: " + *f);
        caf_cfg->load<caf::openssl::manager>();
        caf_cfg->openssl_certificate = settings.cluster.tls_cert_file;
        caf_cfg->openssl_key = settings.cluster.tls_key_file;
        caf_cfg->openssl_cafile = settings.cluster.tls_ca_file;
      }
      caf_cfg->set("middleman.heartbeat-interval",
                   caf::timespan{std::chrono::milliseconds(settings.cluster.heartbeat_ms)});
      caf_cfg->set("middleman.connection-timeout",
                   caf::timespan{std::chrono::milliseconds(settings.cluster.heartbeat_ms * 6)});
      identity = std::make_shared<actors::cluster_identity>();
    }
    sys = std::make_unique<caf::actor_system>(*caf_cfg);
    auto echo = actors::make_echo_provider(*sys, settings.chat.echo_tokens_per_second);
    routes = build_routes(echo);
    auto svc = std::make_shared<actors::chat_services>();
    svc->store = store.get();
    svc->executor = executor.get();
    svc->writer = writer.get();
    svc->routes = routes;
    svc->conversation_idle = std::chrono::seconds(settings.chat.conversation_idle_seconds);
    svc->tenant_max_in_flight = settings.chat.tenant_max_in_flight;
    svc->counters = &counters;
    svc->actors = &actor_counts;
    svc->load = &tenant_load;
    svc->logger = logger;
    svc->cluster = identity;
    svc->draining = &draining;
    tenant_manager = actors::spawn_tenant_manager(*sys, logger, svc);
    if (identity) {
      tenant_directory = actors::spawn_cluster_directory(
        *sys, tenant_manager, identity, std::chrono::milliseconds(settings.cluster.call_timeout_ms),
        settings.cluster.tls_cert_file.empty() ? sys->middleman().actor_handle()
                                               : sys->openssl_manager().actor_handle(),
        logger);
      tenants = std::make_shared<net::tenant_locator>(tenant_directory);
      tenants->set_timeout(std::chrono::milliseconds(settings.cluster.call_timeout_ms));
      // Stateless completions for tenants other nodes own run here (docs/cluster.md).
      start_gateway(svc);
    } else {
      tenant_directory = actors::spawn_tenant_directory(*sys, tenant_manager);
      tenants = std::make_shared<net::tenant_locator>(tenant_directory);
    }
  }

  /// Spawns the turn gateway and replaces it should it ever stop unexpectedly (an exception
  /// in a handler): until then the stateless requests for other nodes' tenants would fail.
  void start_gateway(std::shared_ptr<const actors::chat_services> svc) {
    auto g = actors::spawn_turn_gateway(*sys, svc,
                                        std::chrono::milliseconds(settings.cluster.call_timeout_ms));
    auto locator = tenants;
    auto log = logger;
    g->attach_functor([this, svc, locator, log](const caf::error& reason) {
      if (!reason || reason == caf::exit_reason::user_shutdown || draining.load())
        return;
      log::event(log, spdlog::level::err, "turn gateway stopped, restarting it")
        .str("reason", sys->render(reason));
      start_gateway(svc);
    });
    tenants->set_gateway(std::move(g));
  }

  std::shared_ptr<const net::pipeline> build_pipeline() {
    // Order matters; each position says why.
    std::vector<std::unique_ptr<net::middleware>> chain;
    // 1. Request id first: every later step, log line and error carries it.
    chain.push_back(net::make_request_id());
    // 2. The client's address (behind trusted proxies: from their headers) before anything
    //    that keys on it -- the failed-authentication throttle and the access log.
    chain.push_back(net::make_client_address(settings.http.trusted_proxies));
    // 3. Security headers: decorate every response, local replies included.
    chain.push_back(net::make_security_headers());
    // 4. CORS before auth: browsers send preflights without credentials.
    chain.push_back(net::make_cors(settings.http.cors_allowed_origins));
    // 5. Authentication and authorization of the matched route (routing ran before the chain).
    chain.push_back(net::make_auth(net::auth_deps{*store, *executor, *keys, *throttle, *last_used,
                                                  pepper, admin_key, settings.metrics.key,
                                                  logger}));
    // 6. Rate-limit headers on /v1 responses (chat completions get them from admission).
    chain.push_back(net::make_rate_headers(*sys, tenants));
    net::router routes;
    net::admin_deps admin{*ops, *executor, *keys, sys.get(), tenants, &counters, nullptr, {}};
    if (identity) {
      admin.cluster = store->cluster();
      admin.node_id = identity->node_id();
    }
    net::add_admin_routes(routes, std::move(admin));
    auto started_at = persistence::now_millis() / 1000;
    std::vector<net::model_info> models;
    for (auto& r : this->routes->named())
      models.push_back({r.model, r.owned_by, started_at});
    net::add_model_routes(routes, std::move(models));
    net::chat_deps chat{*sys, tenants, *store, *executor, chat_in_flight,
                        settings.chat.max_in_flight, &counters};
    net::add_chat_routes(routes, chat);
    net::add_conversation_routes(routes, chat);
    net::add_ops_routes(routes,
                        std::make_shared<node_readiness>(*store, *executor, draining,
                                                         identity ? &membership : nullptr),
                        net::build_info{version_string(), git_commit(), build_type()},
                        [rr = resilient_routes] { return net::upstream_status(rr); });
    if (settings.metrics.enabled && settings.metrics.listen.empty())
      net::add_metrics_route(routes, registry, net::access::metrics());
    return std::make_shared<net::pipeline>(std::move(chain), std::move(routes), logger,
                                           request_metrics);
  }

  /// An io thread. Handlers catch what they throw (the pipeline's error guard, the session's
  /// own error paths); should anything still unwind out of run(), it is logged and the thread
  /// goes on serving: one bad request never ends the process.
  void run_io(std::size_t i) {
    io->bind(i);
    for (;;) {
      try {
        io->at(i).run();
        io->unbind();
        return;
      } catch (const std::exception& e) {
        log::event(logger, spdlog::level::critical, "exception escaped an io handler")
          .str("error", e.what());
      } catch (...) {
        log::event(logger, spdlog::level::critical, "non-standard exception escaped an io handler");
      }
      io_escapes.fetch_add(1, std::memory_order_relaxed);
    }
  }

  /// Cluster, first half: publishes the tenant manager on the cluster port and names this
  /// node (its advertised address unless cluster.node_id says otherwise).
  std::string cluster_advertise;
  void publish_cluster() {
    auto& c = settings.cluster;
    auto [host, port] = config::split_host_port(c.listen, "cluster.listen"); // validated at load
    auto published = c.tls_cert_file.empty()
                        ? sys->middleman().publish(tenant_manager, port, host.c_str(), true)
                        : caf::openssl::publish(tenant_manager, port, host.c_str(), true);
    if (!published)
      throw std::runtime_error("cannot listen on cluster.listen " + c.listen + ": " +
                               sys->render(published.error()));
    cluster_port = *published;
    std::string advertise = c.advertise;
    if (advertise.empty()) {
      if (host == "0.0.0.0" || host == "::" || host == "[::]" || host.empty())
        throw std::runtime_error("cluster.listen " + c.listen +
                                 " is a wildcard address: set cluster.advertise");
      advertise = host + ":" + std::to_string(cluster_port);
    }
    identity->set_node_id(c.node_id.empty() ? advertise : c.node_id);
    cluster_advertise = advertise;
  }

  /// Cluster, second half: joins (a lease in the nodes table, with the HTTP address now that
  /// the listener is bound) and starts the renewal loop. Before the io threads run: the node
  /// is a member before it answers its first request.
  void join_cluster() {
    auto& c = settings.cluster;
    auto advertise = cluster_advertise;
    auto http_host = settings.http.listen.substr(0, settings.http.listen.rfind(':'));
    auto dir = tenant_directory;
    auto manager = tenant_manager;
    membership = std::make_unique<cluster_membership>(
      *store->cluster(), identity, c, advertise, http_host + ":" + std::to_string(port), logger,
      [dir](std::vector<actors::cluster_member> members) {
        caf::anon_send(dir, actors::members_atom::value, std::move(members));
      },
      [manager] { caf::anon_send(manager, actors::fence_atom::value); });
    membership->join(true);
    membership->start();
    // Other nodes revoke keys and change tenants too: their changes reach our key cache
    // through a connection of its own (docs/cluster.md).
    invalidation = std::make_unique<invalidation_listener>(
      persistence::open_postgres_change_feed(settings.store), *keys, logger,
      invalidation_listener::options{});
    invalidation->start();
    log::event(logger, spdlog::level::info, "cluster listening")
      .str("node_id", identity->node_id())
      .str("advertise", advertise)
      .num("port", cluster_port);
  }

  /// Fences the node as soon as its lease's local deadline passes (a renewal that hangs on
  /// the database must not keep it serving tenants another node may already own).
  void schedule_lease_watch() {
    lease_timer->expires_after(std::chrono::milliseconds(100));
    lease_timer->async_wait([this](boost::system::error_code ec) {
      if (ec)
        return;
      membership->fence_if_expired();
      schedule_lease_watch();
    });
  }

  void start_http() {
    for (std::size_t i = 0; i < io->size(); ++i)
      work.push_back(net::asio::make_work_guard(io->at(i)));
    setup_metrics();
    api_pipeline = build_pipeline();
    server = std::make_unique<net::server>(*io, settings.http, api_pipeline, logger);
    port = server->start();
    if (identity)
      join_cluster();
    if (settings.metrics.enabled && !settings.metrics.listen.empty()) {
      // Its own listener for the scraper: /metrics only, no authentication.
      net::router r;
      net::add_metrics_route(r, registry, net::access::anyone());
      std::vector<std::unique_ptr<net::middleware>> chain;
      chain.push_back(net::make_request_id());
      auto ms = settings.http;
      ms.listen = settings.metrics.listen;
      ms.cors_allowed_origins.clear();
      metrics_server = std::make_unique<net::server>(
        *io, ms, std::make_shared<net::pipeline>(std::move(chain), std::move(r), logger), logger);
      metrics_port = metrics_server->start();
      log::event(logger, spdlog::level::info, "metrics listening")
        .str("address", settings.metrics.listen)
        .num("port", metrics_port);
    }
    health_timer = std::make_unique<net::asio::steady_timer>(io->at(0));
    schedule_health();
    flush_timer = std::make_unique<net::asio::steady_timer>(io->at(0));
    schedule_flush();
    if (membership) {
      lease_timer = std::make_unique<net::asio::steady_timer>(io->at(0));
      schedule_lease_watch();
    }
    for (std::size_t i = 0; i < io->size(); ++i)
      io_threads.emplace_back([this, i] { run_io(i); });
  }
};

app::app(config::settings s, log::logger_ptr logger) : impl_(std::make_unique<impl>()) {
  impl_->settings = std::move(s);
  impl_->logger = std::move(logger);
}

app::~app() { stop(); }

uint16_t app::start() {
  auto& d = *impl_;
  d.started = true;
  d.load_secrets();
  d.open_store();
  d.executor = std::make_unique<persistence::store_executor>(d.settings.store.pool_size, 4096);
  d.writer = std::make_unique<persistence::turn_writer>(*d.store);
  d.keys = std::make_unique<tenants::key_cache>(
    static_cast<std::size_t>(d.settings.auth.key_cache_size),
    int64_t{d.settings.auth.key_cache_ttl_seconds} * 1000);
  d.throttle = std::make_unique<tenants::failure_throttle>(d.settings.auth.failed_auth_per_minute);
  d.last_used = std::make_unique<tenants::last_used_recorder>();
  d.ops = std::make_unique<tenants::admin_ops>(*d.store, d.pepper,
                                               detail::default_limits(d.settings));
  // The io_context exists before the actors (upstream clients live on it); its threads
  // start with the listener.
  d.io = std::make_unique<net::io_pool>(static_cast<std::size_t>(d.settings.http.io_threads));
  d.start_actors();
  if (d.identity)
    d.publish_cluster();
  d.start_http();
  log::event(d.logger, spdlog::level::info, "listening")
    .str("address", d.settings.http.listen)
    .num("port", d.port)
    .str("version", version_string());
  return d.port;
}

void app::begin_shutdown() {
  auto& d = *impl_;
  if (d.draining.exchange(true))
    return;
  log::event(d.logger, spdlog::level::info, "draining")
    .num("in_flight", d.server ? d.server->in_flight() : 0);
  if (d.membership)
    d.membership->drain(); // no new tenants are placed here
  if (d.server)
    d.server->drain();
}

void app::end_in_flight() {
  auto& d = *impl_;
  d.draining = true;
  if (d.server)
    d.server->end_in_flight();
  if (d.metrics_server)
    d.metrics_server->end_in_flight();
}

bool app::drained() const {
  auto& d = *impl_;
  bool http = !d.server || (d.server->in_flight() == 0 && d.server->open_sessions() == 0);
  // A cluster node also runs turns for other nodes' clients (its tenants' owner): those end
  // before it leaves, or their clients would see their stream cut.
  // Likewise the stateless turns it admitted for other nodes, which run there: until they
  // end, their slots and budget reservations are only here (the next owner would not know).
  if (d.membership)
    return http && d.actor_counts.turns.load(std::memory_order_relaxed) == 0 &&
           d.actor_counts.remote_turns.load(std::memory_order_relaxed) == 0;
  return http;
}

uint16_t app::metrics_port() const { return impl_->metrics_port; }

int64_t app::in_flight() const { return impl_->server ? impl_->server->in_flight() : 0; }

void app::stop() {
  auto& d = *impl_;
  if (!d.started || d.stopped)
    return;
  d.stopped = true;
  d.draining = true;
  // Reverse start order. First the listener and io threads, so nothing new comes in; then
  // the actors and the persistence workers, which may still hold exchanges (and through
  // them sockets); only then the sockets' io_context, and last the store.
  if (d.server)
    d.server->drain();
  if (d.metrics_server)
    d.metrics_server->drain();
  // Leave the cluster: our lease ends now, so other nodes may claim our tenants at once
  // (the requests for them through other nodes stop failing).
  if (d.membership)
    d.membership->leave();
  if (d.invalidation)
    d.invalidation->stop();
  // The actors stop while the io threads still run (they may be where the actors run, and
  // the upstream calls that the tenants cancel end there); then the io threads stop.
  auto stop_actors = [&d] {
    if (!d.sys || !d.tenant_manager)
      return;
    caf::anon_send_exit(d.tenant_directory, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(d.tenant_manager, caf::exit_reason::user_shutdown);
    if (d.tenants)
      if (auto g = d.tenants->gateway()) // draining is set: it is not replaced any more
        caf::anon_send_exit(g, caf::exit_reason::user_shutdown);
    d.tenant_directory = nullptr;
    d.tenant_manager = nullptr;
    d.sys->await_all_actors_done();
  };
  if (!d.io_threads.empty())
    stop_actors();
  d.work.clear();
  if (d.io)
    for (std::size_t i = 0; i < d.io->size(); ++i)
      d.io->at(i).stop();
  for (auto& t : d.io_threads)
    t.join();
  d.io_threads.clear();
  if (d.sys)
    if (auto* sched = io_scheduler_of(*d.sys)) {
      // What becomes runnable from now on runs on the calling thread; and what was queued
      // on the io contexts and never ran (a start that failed before the io threads) runs
      // here now, so that the actors can finish.
      sched->set_inline();
      for (std::size_t i = 0; i < d.io->size(); ++i) {
        try {
          d.io->at(i).restart();
          while (d.io->at(i).poll() > 0) {
          }
        } catch (const std::exception& e) {
          log::event(d.logger, spdlog::level::err, "exception in a handler run at shutdown")
            .str("error", e.what());
        }
      }
    }
  stop_actors(); // a start that failed before the io threads
  if (d.executor)
    d.executor->stop();
  if (d.writer) {
    d.writer->stop();
    auto w = d.writer->stats();
    if (w.parked > 0 || w.parked_dropped > 0)
      log::event(d.logger, spdlog::level::err, "usage rows not recorded at shutdown")
        .num("rows", static_cast<int64_t>(w.parked))
        .num("dropped", static_cast<int64_t>(w.parked_dropped));
  }
  // The last batch of last_used_at times, written on this (controlling) thread.
  if (d.last_used && d.store) {
    auto batch = d.last_used->take();
    if (!batch.empty())
      (void)d.store->touch_keys(batch);
  }
  d.flush_timer.reset();
  d.health_timer.reset();
  d.lease_timer.reset();
  d.membership.reset();
  d.invalidation.reset();
  d.metrics_server.reset();
  d.server.reset();
  d.api_pipeline.reset();
  // Everything bound to the io_context goes before it: the actors' services hold the routes,
  // the routes hold upstream clients, and those hold pooled keep-alive sockets whose
  // destructors use the io_context's reactor.
  d.sys.reset();
  d.caf_cfg.reset();
  d.request_metrics.reset();
  d.registry = std::make_shared<metrics::registry>(); // its collectors hold the routes too
  d.routes.reset();
  d.resilient_routes.clear();
  d.io.reset();
  d.executor.reset();
  d.writer.reset();
  d.store.reset();
  log::event(d.logger, spdlog::level::info, "stopped");
  d.logger->flush();
}

uint16_t app::port() const noexcept { return impl_->port; }

std::vector<route_info> app::routes() const {
  std::vector<route_info> out;
  if (!impl_->api_pipeline)
    return out;
  for (auto& r : impl_->api_pipeline->routes().routes())
    out.push_back({std::string(net::http::to_string(r.method)), r.pattern,
                   net::to_string(r.who.who), r.who.scope});
  return out;
}
const config::settings& app::settings() const noexcept { return impl_->settings; }

caf::actor_system& app::actor_system() { return *impl_->sys; }

actors::tenant_directory_actor app::tenant_directory() const { return impl_->tenant_directory; }

} // namespace parley::runtime
