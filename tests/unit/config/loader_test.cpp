#include "parley/config/loader.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>

using namespace parley;
using parley::test::temp_dir;

namespace {
/// Loads `toml` (written to a file) and the environment `env`.
config::settings load_text(const std::string& toml, std::map<std::string, std::string> env = {}) {
  temp_dir d;
  return config::load(d.write("c.toml", toml), env);
}

std::string error_of(const std::string& toml, std::map<std::string, std::string> env = {}) {
  temp_dir d;
  auto path = toml.empty() ? std::string{} : d.write("c.toml", toml);
  try {
    config::load(path, env);
  } catch (const config::config_error& e) {
    return e.what();
  }
  return {};
}
} // namespace

TEST_CASE("config loads defaults when there is no file and no environment", "[config][unit]") {
  auto s = config::load("", {});
  CHECK(s.http.listen == "127.0.0.1:8080");
  CHECK(s.store.backend == "sqlite");
  CHECK(s.log.level == "info");
  CHECK(s.shutdown.grace_seconds == 20);
}

TEST_CASE("config reads every section of a TOML file into the typed structs", "[config][unit]") {
  temp_dir d;
  auto path = d.write("c.toml", R"(
[http]
listen = "0.0.0.0:9000"
io_threads = 3
cors_allowed_origins = ["https://app.example.com"]
[log]
level = "debug"
[store]
backend = "postgres"
postgres_dsn = "host=db user=parley password=s3cret"
pool_size = 8
migrate_on_start = false
[shutdown]
grace_seconds = 7
)");
  auto s = config::load(path, {});
  CHECK(s.http.listen == "0.0.0.0:9000");
  CHECK(s.http.io_threads == 3);
  REQUIRE(s.http.cors_allowed_origins.size() == 1);
  CHECK(s.http.cors_allowed_origins[0] == "https://app.example.com");
  CHECK(s.log.level == "debug");
  CHECK(s.store.backend == "postgres");
  CHECK(s.store.pool_size == 8);
  CHECK_FALSE(s.store.migrate_on_start);
  CHECK(s.shutdown.grace_seconds == 7);
}

TEST_CASE("environment variables override the file", "[config][unit]") {
  temp_dir d;
  auto path = d.write("c.toml", "[http]\nlisten = \"127.0.0.1:1\"\n[log]\nlevel = \"warn\"\n");
  auto s = config::load(path, {{"PARLEY_HTTP_LISTEN", "127.0.0.1:2"},
                               {"PARLEY_LOG_LEVEL", "error"},
                               {"PARLEY_STORE_MIGRATE_ON_START", "false"},
                               {"PARLEY_HTTP_CORS_ALLOWED_ORIGINS", "https://a.io,https://b.io"},
                               {"PARLEY_SOMETHING_UNRELATED", "ignored"}});
  CHECK(s.http.listen == "127.0.0.1:2");
  CHECK(s.log.level == "error");
  CHECK_FALSE(s.store.migrate_on_start);
  CHECK(s.http.cors_allowed_origins == std::vector<std::string>{"https://a.io", "https://b.io"});
}

TEST_CASE("an unknown key stops start-up with a line naming it", "[config][unit]") {
  auto e = error_of("[http]\nlisten = \"127.0.0.1:1\"\nlistne = \"x\"\n");
  CHECK(e.find("http.listne") != std::string::npos);
  CHECK(e.find("unknown key") != std::string::npos);
  CHECK(e.find('\n') == std::string::npos);
  CHECK(error_of("[htp]\nlisten = \"x\"\n").find("htp.listen") != std::string::npos);
}

TEST_CASE("a value of the wrong type or out of range names the key and the reason",
          "[config][unit]") {
  CHECK(error_of("[http]\nio_threads = \"four\"\n").find("http.io_threads: expected an integer") !=
        std::string::npos);
  CHECK(error_of("[http]\nio_threads = 0\n").find("http.io_threads: 0 is out of range") !=
        std::string::npos);
  CHECK(error_of("[log]\nlevel = \"loud\"\n").find("log.level") != std::string::npos);
  CHECK(error_of("[http]\nlisten = \"nowhere\"\n").find("http.listen") != std::string::npos);
  CHECK(error_of("[http]\nlisten = \"127.0.0.1:99999\"\n").find("http.listen") != std::string::npos);
  CHECK(error_of("[store]\nbackend = \"postgres\"\n").find("store.postgres_dsn") !=
        std::string::npos);
  CHECK(error_of("[http]\ncors_allowed_origins = [\"evil\"]\n").find("http.cors_allowed_origins") !=
        std::string::npos);
  CHECK(error_of("", {{"PARLEY_HTTP_IO_THREADS", "many"}}).find("PARLEY_HTTP_IO_THREADS") !=
        std::string::npos);
  CHECK(error_of("[admin]\nkey = \"short\"\n").find("admin.key") != std::string::npos);
  CHECK(error_of("[http\nlisten=1").find("c.toml:") != std::string::npos);
}

TEST_CASE("describe shows the effective configuration without secrets", "[config][unit]") {
  config::settings s;
  s.store.postgres_dsn = "host=db password=hunter2hunter2";
  s.admin.key = "an-admin-key-that-is-long-enough-000000";
  s.auth.pepper = "";
  std::string all;
  for (auto& line : config::describe(s))
    all += line + "\n";
  CHECK(all.find("hunter2") == std::string::npos);
  CHECK(all.find("an-admin-key") == std::string::npos);
  CHECK(all.find("store.postgres_dsn = \"***\"") != std::string::npos);
  CHECK(all.find("auth.pepper = \"\"") != std::string::npos);
  CHECK(all.find("http.listen = \"127.0.0.1:8080\"") != std::string::npos);
}

TEST_CASE("every known key has an environment name, a type and a meaning", "[config][unit]") {
  for (auto& k : config::known_keys()) {
    INFO(k.section << "." << k.key);
    CHECK(k.env.rfind("PARLEY_", 0) == 0);
    CHECK_FALSE(k.type.empty());
    CHECK_FALSE(k.meaning.empty());
  }
}

TEST_CASE("split_host_port accepts IPv4, names and bracketed IPv6", "[config][unit]") {
  CHECK(config::split_host_port("127.0.0.1:80", "k") == std::make_pair(std::string("127.0.0.1"), uint16_t{80}));
  CHECK(config::split_host_port("[::1]:0", "k") == std::make_pair(std::string("::1"), uint16_t{0}));
  CHECK_THROWS_AS(config::split_host_port("::1", "k"), config::config_error);
  CHECK_THROWS_AS(config::split_host_port("host:", "k"), config::config_error);
}

TEST_CASE("routes are read from [[routes]] tables and validated", "[config][unit]") {
  temp_dir d;
  auto ok = d.write("r.toml", R"(
[[routes]]
model = "gpt-4o-mini"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
context_tokens = 128000

[[routes]]
model = "local"
upstream_model = "llama3"
base_url = "http://127.0.0.1:11434/v1"

[[routes]]
model = "demo"
provider = "builtin"
upstream_model = "parley-echo"
)");
  auto s = config::load(ok, {});
  REQUIRE(s.routes.size() == 3);
  CHECK(s.routes[0].model == "gpt-4o-mini");
  CHECK(s.routes[0].provider == "openai");
  CHECK(s.routes[0].api_key_env == "OPENAI_API_KEY");
  CHECK(s.routes[0].context_tokens == 128000);
  CHECK(s.routes[1].upstream_model == "llama3");
  CHECK(s.routes[2].provider == "builtin");

  CHECK(error_of("[[routes]]\nmodel = \"a\"\n").find("routes[0].base_url") != std::string::npos);
  CHECK(error_of("[[routes]]\nmodel = \"a\"\nbase_url = \"http://x\"\n[[routes]]\nmodel = \"a\"\nbase_url = \"http://x\"\n")
          .find("routed twice") != std::string::npos);
  CHECK(error_of("[[routes]]\nmodel = \"a\"\nprovider = \"magic\"\n").find("routes[0].provider") != std::string::npos);
  CHECK(error_of("[[routes]]\nmodel = \"a\"\nbase_url = \"http://x\"\napi_key = \"sk-secret\"\n")
          .find("routes[0].api_key") != std::string::npos);
  CHECK(error_of("[[routes]]\nmodel = \"a\"\nbase_url = \"http://x\"\napi_key_env = \"lower\"\n")
          .find("routes[0].api_key_env") != std::string::npos);
  CHECK(error_of("[[routes]]\nmodel = \"x\"\nprovider = \"builtin\"\n").find("parley-echo") != std::string::npos);
}

// ---- [resilience], per-route overrides, deployments and fallbacks ----

TEST_CASE("routes start from the effective [resilience] values and override only what they set",
          "[config][unit]") {
  temp_dir d;
  auto path = d.write("c.toml", R"(
[[routes]]
model = "a"
base_url = "http://127.0.0.1:1/v1"
max_attempts = 1
retry_statuses = [503]
fallbacks = ["b", "parley-echo"]

[resilience]
first_byte_timeout_ms = 1234
breaker_failures = 9

[[routes]]
model = "b"
lb = "weighted"
  [[routes.deployments]]
  name = "one"
  base_url = "http://127.0.0.1:2/v1"
  weight = 3
  [[routes.deployments]]
  base_url = "http://127.0.0.1:3/v1"
  upstream_model = "b-large"
)");
  // The environment wins over the file's [resilience], and routes see it.
  auto s = config::load(path, {{"PARLEY_RESILIENCE_BREAKER_FAILURES", "4"}});
  CHECK(s.resilience.first_byte_timeout_ms == 1234);
  CHECK(s.resilience.breaker_failures == 4);
  REQUIRE(s.routes.size() == 2);
  auto& a = s.routes[0];
  CHECK(a.resilience.max_attempts == 1);
  CHECK(a.resilience.retry_statuses == std::vector<int>{503});
  CHECK(a.resilience.first_byte_timeout_ms == 1234);
  CHECK(a.resilience.breaker_failures == 4);
  CHECK(a.fallbacks == std::vector<std::string>{"b", "parley-echo"});
  auto& b = s.routes[1];
  CHECK(b.resilience.lb == "weighted");
  CHECK(b.resilience.max_attempts == 3);
  REQUIRE(b.deployments.size() == 2);
  CHECK(b.deployments[0].name == "one");
  CHECK(b.deployments[0].weight == 3);
  CHECK(b.deployments[1].upstream_model == "b-large");
  CHECK(b.deployments[1].weight == 1);
}

TEST_CASE("invalid resilience settings are refused naming the key", "[config][unit]") {
  CHECK(error_of("[resilience]\nmax_attempts = 0\n").find("resilience.max_attempts") != std::string::npos);
  CHECK(error_of("[resilience]\nlb = \"fastest\"\n").find("resilience.lb") != std::string::npos);
  CHECK(error_of("[resilience]\nretry_statuses = [200]\n").find("resilience.retry_statuses") !=
        std::string::npos);
  CHECK(error_of("[resilience]\nfallback_on = [\"everything\"]\n").find("resilience.fallback_on") !=
        std::string::npos);
  CHECK(error_of("", {{"PARLEY_RESILIENCE_RETRY_STATUSES", "429,abc"}}).find("PARLEY_RESILIENCE_RETRY_STATUSES") !=
        std::string::npos);
  auto route = "[[routes]]\nmodel = \"a\"\nbase_url = \"http://127.0.0.1:1/v1\"\n";
  CHECK(error_of(std::string(route) + "idle_timeout_ms = \"soon\"\n").find("routes[0].idle_timeout_ms") !=
        std::string::npos);
  CHECK(error_of(std::string(route) + "breaker_failure_percent = 101\n").find("routes[0].breaker_failure_percent") !=
        std::string::npos);
  CHECK(error_of(std::string(route) + "fallbacks = [\"nowhere\"]\n").find("'nowhere' is not a routed model") !=
        std::string::npos);
  CHECK(error_of(std::string(route) + "fallbacks = [\"a\"]\n").find("itself") != std::string::npos);
  CHECK(error_of("[[routes]]\nmodel = \"a\"\n[[routes.deployments]]\nbase_url = \"ftp://x\"\n")
          .find("routes[0].deployments[0].base_url") != std::string::npos);
  CHECK(error_of("[[routes]]\nmodel = \"a\"\n[[routes.deployments]]\nbase_url = \"http://x/v1\"\nweight = 0\n")
          .find("routes[0].deployments[0].weight") != std::string::npos);
  CHECK(error_of("[[routes]]\nmodel = \"a\"\n[[routes.deployments]]\nbase_url = \"http://x/v1\"\n"
                 "[[routes.deployments]]\nbase_url = \"http://x/v1\"\n")
          .find("distinct names") != std::string::npos);
  CHECK(error_of("[metrics]\nlisten = \"nowhere\"\n").find("metrics.listen") != std::string::npos);
}

TEST_CASE("edge settings are validated and tenants get finite default limits", "[config][unit]") {
  auto s = config::load("", {});
  CHECK(s.tenant_defaults.requests_per_minute > 0);
  CHECK(s.tenant_defaults.tokens_per_minute > 0);
  CHECK(s.tenant_defaults.tokens_per_day > 0);
  CHECK(s.tenant_defaults.max_concurrent > 0);
  CHECK(s.http.max_connections > 0);
  CHECK(s.http.max_connections_per_client > 0);
  CHECK(s.http.trusted_proxies.empty());
  auto ok = config::load("", {{"PARLEY_HTTP_TRUSTED_PROXIES", "10.0.0.0/8,::1"},
                              {"PARLEY_TENANT_DEFAULTS_TOKENS_PER_DAY", "0"}});
  CHECK(ok.http.trusted_proxies == std::vector<std::string>{"10.0.0.0/8", "::1"});
  CHECK(ok.tenant_defaults.tokens_per_day == 0);
  CHECK(error_of("[http]\ntrusted_proxies = [\"10.0.0.0/33\"]\n").find("http.trusted_proxies") !=
        std::string::npos);
  CHECK(error_of("[http]\ntls_cert_file = \"/x/cert.pem\"\n").find("http.tls_key_file") !=
        std::string::npos);
  CHECK(error_of("[metrics]\nkey = \"short\"\n").find("metrics.key") != std::string::npos);
  std::string same(40, 'k');
  CHECK(error_of("[metrics]\nkey = \"" + same + "\"\n[admin]\nkey = \"" + same + "\"\n")
          .find("metrics.key: must differ") != std::string::npos);
  CHECK(error_of("[tenant_defaults]\nmax_concurrent = -1\n").find("tenant_defaults.max_concurrent") !=
        std::string::npos);
  CHECK(error_of("[chat]\nmax_output_tokens = 0\n").find("chat.max_output_tokens") !=
        std::string::npos);
}

TEST_CASE("cluster settings are validated and a cluster on SQLite is refused with the reason",
          "[config][unit]") {
  auto off = config::load("", {});
  CHECK_FALSE(off.cluster.enabled);
  CHECK(off.cluster.lease_ttl_ms == 10000);
  auto sqlite = error_of("[cluster]\nenabled = true\n");
  CHECK(sqlite.find("cluster.enabled") != std::string::npos);
  CHECK(sqlite.find("single-node") != std::string::npos);
  std::string pg = "[store]\nbackend = \"postgres\"\npostgres_dsn = \"postgresql://x@127.0.0.1/db\"\n";
  auto on = config::load("", {{"PARLEY_STORE_BACKEND", "postgres"},
                              {"PARLEY_STORE_POSTGRES_DSN", "postgresql://x@127.0.0.1/db"},
                              {"PARLEY_CLUSTER_ENABLED", "true"},
                              {"PARLEY_CLUSTER_LISTEN", "10.0.0.1:0"},
                              {"PARLEY_CLUSTER_ALLOW_PLAINTEXT", "true"},
                              {"PARLEY_CLUSTER_NODE_ID", "node-a"}});
  CHECK(on.cluster.enabled);
  CHECK(on.cluster.listen == "10.0.0.1:0");
  CHECK(on.cluster.node_id == "node-a");
  CHECK(error_of(pg + "[cluster]\nlease_ttl_ms = 10\n").find("cluster.lease_ttl_ms") !=
        std::string::npos);
  CHECK(error_of(pg + "[cluster]\nlisten = \"nowhere\"\n").find("cluster.listen") !=
        std::string::npos);
  CHECK(error_of(pg + "[cluster]\ntls_cert_file = \"/x/node.pem\"\n").find("tls_ca_file") !=
        std::string::npos);
  // Plain TCP between nodes only on loopback, unless asked for; TLS anywhere.
  std::string cl = pg + "[cluster]\nenabled = true\n";
  auto plain = error_of(cl + "listen = \"10.0.0.1:7947\"\n");
  CHECK(plain.find("cluster.listen") != std::string::npos);
  CHECK(plain.find("allow_plaintext") != std::string::npos);
  CHECK(error_of(cl + "listen = \"0.0.0.0:7947\"\nadvertise = \"10.0.0.1:7947\"\n")
          .find("cluster.listen") != std::string::npos);
  CHECK(load_text(cl + "listen = \"127.0.0.1:7947\"\n").cluster.listen == "127.0.0.1:7947");
  CHECK(load_text(cl + "listen = \"10.0.0.1:7947\"\nallow_plaintext = true\n")
          .cluster.allow_plaintext);
  CHECK(load_text(cl + "listen = \"10.0.0.1:7947\"\ntls_cert_file = \"/x/n.pem\"\n"
                          "tls_key_file = \"/x/n.key\"\ntls_ca_file = \"/x/ca.pem\"\n")
          .cluster.tls_ca_file == "/x/ca.pem");
}
