#include "parley/config/loader.hpp"
#include "parley/config/cidr.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <functional>
#include <sstream>

extern char** environ;

namespace parley::config {
namespace {

/// How one key reads from TOML and from the environment, and how it prints.
struct field {
  key_info info;
  std::function<void(settings&, const toml::node&)> from_toml;
  std::function<void(settings&, const std::string&)> from_env;
  std::function<std::string(const settings&)> show;
};

[[noreturn]] void fail(const std::string& name, const std::string& why) {
  throw config_error("invalid configuration: " + name + ": " + why);
}

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  return s;
}

const char* toml_type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string: return "string";
    case toml::node_type::integer: return "integer";
    case toml::node_type::floating_point: return "float";
    case toml::node_type::boolean: return "boolean";
    case toml::node_type::array: return "array";
    case toml::node_type::table: return "table";
    default: return "date/time";
  }
}

int64_t parse_env_int(const std::string& name, const std::string& v) {
  try {
    std::size_t pos = 0;
    auto n = std::stoll(v, &pos);
    if (pos != v.size())
      throw std::invalid_argument(v);
    return n;
  } catch (const std::exception&) {
    fail(name, "expected an integer, got '" + v + "'");
  }
}

bool parse_env_bool(const std::string& name, const std::string& v) {
  auto l = upper(v);
  if (l == "TRUE" || l == "1" || l == "YES" || l == "ON")
    return true;
  if (l == "FALSE" || l == "0" || l == "NO" || l == "OFF")
    return false;
  fail(name, "expected true or false, got '" + v + "'");
}

// Typed accessors: T is the member's type. One overload set per supported type.
void read_toml(const std::string& name, const toml::node& n, std::string& out) {
  auto v = n.value<std::string>();
  if (!n.is_string() || !v)
    fail(name, std::string("expected a string, got ") + toml_type_name(n));
  out = *v;
}
void read_toml(const std::string& name, const toml::node& n, int& out) {
  if (!n.is_integer())
    fail(name, std::string("expected an integer, got ") + toml_type_name(n));
  auto v = *n.value<int64_t>();
  if (v < INT32_MIN || v > INT32_MAX)
    fail(name, "integer out of range");
  out = static_cast<int>(v);
}
void read_toml(const std::string& name, const toml::node& n, int64_t& out) {
  if (!n.is_integer())
    fail(name, std::string("expected an integer, got ") + toml_type_name(n));
  out = *n.value<int64_t>();
}
void read_toml(const std::string& name, const toml::node& n, std::size_t& out) {
  if (!n.is_integer())
    fail(name, std::string("expected an integer, got ") + toml_type_name(n));
  auto v = *n.value<int64_t>();
  if (v < 0)
    fail(name, "must not be negative");
  out = static_cast<std::size_t>(v);
}
void read_toml(const std::string& name, const toml::node& n, bool& out) {
  if (!n.is_boolean())
    fail(name, std::string("expected a boolean, got ") + toml_type_name(n));
  out = *n.value<bool>();
}
void read_toml(const std::string& name, const toml::node& n, std::vector<std::string>& out) {
  auto* arr = n.as_array();
  if (!arr)
    fail(name, std::string("expected an array of strings, got ") + toml_type_name(n));
  out.clear();
  for (auto& e : *arr) {
    auto v = e.value<std::string>();
    if (!e.is_string() || !v)
      fail(name, "expected an array of strings");
    out.push_back(*v);
  }
}

void read_toml(const std::string& name, const toml::node& n, std::vector<int>& out) {
  auto* arr = n.as_array();
  if (!arr)
    fail(name, std::string("expected an array of integers, got ") + toml_type_name(n));
  out.clear();
  for (auto& e : *arr) {
    if (!e.is_integer())
      fail(name, "expected an array of integers");
    auto v = *e.value<int64_t>();
    if (v < INT32_MIN || v > INT32_MAX)
      fail(name, "integer out of range");
    out.push_back(static_cast<int>(v));
  }
}

void read_env(const std::string& name, const std::string& v, std::string& out) { out = v; }
void read_env(const std::string& name, const std::string& v, int& out) {
  auto n = parse_env_int(name, v);
  if (n < INT32_MIN || n > INT32_MAX)
    fail(name, "integer out of range");
  out = static_cast<int>(n);
}
void read_env(const std::string& name, const std::string& v, int64_t& out) {
  out = parse_env_int(name, v);
}
void read_env(const std::string& name, const std::string& v, std::size_t& out) {
  auto n = parse_env_int(name, v);
  if (n < 0)
    fail(name, "must not be negative");
  out = static_cast<std::size_t>(n);
}
void read_env(const std::string& name, const std::string& v, bool& out) {
  out = parse_env_bool(name, v);
}
void read_env(const std::string& name, const std::string& v, std::vector<std::string>& out) {
  out.clear();
  std::stringstream ss(v);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty())
      out.push_back(item);
}

void read_env(const std::string& name, const std::string& v, std::vector<int>& out) {
  out.clear();
  std::stringstream ss(v);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) {
      auto n = parse_env_int(name, item);
      if (n < INT32_MIN || n > INT32_MAX)
        fail(name, "integer out of range");
      out.push_back(static_cast<int>(n));
    }
}

std::string show_value(const std::string& v) { return "\"" + v + "\""; }
std::string show_value(int v) { return std::to_string(v); }
std::string show_value(int64_t v) { return std::to_string(v); }
std::string show_value(std::size_t v) { return std::to_string(v); }
std::string show_value(bool v) { return v ? "true" : "false"; }
std::string show_value(const std::vector<std::string>& v) {
  std::string out = "[";
  for (std::size_t i = 0; i < v.size(); ++i)
    out += (i ? ", \"" : "\"") + v[i] + "\"";
  return out + "]";
}

std::string show_value(const std::vector<int>& v) {
  std::string out = "[";
  for (std::size_t i = 0; i < v.size(); ++i)
    out += (i ? ", " : "") + std::to_string(v[i]);
  return out + "]";
}

template <class T> const char* type_name();
template <> const char* type_name<std::vector<int>>() { return "integer list"; }
template <> const char* type_name<std::string>() { return "string"; }
template <> const char* type_name<int>() { return "integer"; }
template <> const char* type_name<int64_t>() { return "integer"; }
template <> const char* type_name<std::size_t>() { return "integer"; }
template <> const char* type_name<bool>() { return "boolean"; }
template <> const char* type_name<std::vector<std::string>>() { return "string list"; }

template <class Section, class T>
field make(const char* section, const char* key, Section settings::*sec, T Section::*mem,
           const char* meaning, bool secret = false) {
  field f;
  f.info.section = section;
  f.info.key = key;
  f.info.env = "PARLEY_" + upper(section) + "_" + upper(key);
  f.info.type = type_name<T>();
  f.info.meaning = meaning;
  f.info.secret = secret;
  settings defaults;
  f.info.default_value = show_value(defaults.*sec.*mem);
  std::string name = std::string(section) + "." + key;
  f.from_toml = [=](settings& s, const toml::node& n) { read_toml(name, n, s.*sec.*mem); };
  f.from_env = [=](settings& s, const std::string& v) {
    read_env(f.info.env, v, s.*sec.*mem);
  };
  f.show = [=](const settings& s) {
    const auto& v = s.*sec.*mem;
    if (secret)
      return show_value(std::string(show_value(v) == show_value(T{}) ? "" : "***"));
    return show_value(v);
  };
  return f;
}

const std::vector<field>& fields() {
  // Function-local static: built on first use, no global constructor.
  static const std::vector<field> all = {
    make("http", "listen", &settings::http, &http_settings::listen,
         "Address the HTTP API listens on, HOST:PORT ([::1]:PORT for IPv6); port 0 picks a free port"),
    make("http", "io_threads", &settings::http, &http_settings::io_threads,
         "Threads running the HTTP io_context"),
    make("http", "max_body_bytes", &settings::http, &http_settings::max_body_bytes,
         "Largest accepted request body; larger bodies are answered 413"),
    make("http", "max_header_bytes", &settings::http, &http_settings::max_header_bytes,
         "Largest accepted request header block; larger ones are answered 431"),
    make("http", "read_timeout_seconds", &settings::http, &http_settings::read_timeout_seconds,
         "A request (headers and body) must arrive within this time, else the connection closes"),
    make("http", "idle_timeout_seconds", &settings::http, &http_settings::idle_timeout_seconds,
         "Keep-alive connections idle for longer are closed"),
    make("http", "write_timeout_seconds", &settings::http, &http_settings::write_timeout_seconds,
         "One write to a slow client may take this long before the connection is dropped"),
    make("http", "cors_allowed_origins", &settings::http, &http_settings::cors_allowed_origins,
         "Origins allowed by CORS (exact, or \"*\"); empty disables CORS"),
    make("http", "max_connections", &settings::http, &http_settings::max_connections,
         "Open connections per listener; a connection beyond it is closed at once"),
    make("http", "max_connections_per_client", &settings::http,
         &http_settings::max_connections_per_client,
         "Open connections per client address (after trusted proxies: the peer); 0 = no cap"),
    make("http", "trusted_proxies", &settings::http, &http_settings::trusted_proxies,
         "Addresses or CIDR blocks of reverse proxies whose X-Forwarded-For/Forwarded name the "
         "client; empty = headers ignored, the peer is the client"),
    make("http", "tls_cert_file", &settings::http, &http_settings::tls_cert_file,
         "PEM certificate chain; with tls_key_file the listener speaks HTTPS (TLS 1.2+, AEAD ciphers)"),
    make("http", "tls_key_file", &settings::http, &http_settings::tls_key_file,
         "PEM private key of tls_cert_file"),
    make("log", "level", &settings::log, &log_settings::level,
         "Log level: trace, debug, info, warn, error, critical or off"),
    make("log", "file", &settings::log, &log_settings::file,
         "Also write logs to this file, rotated by size; empty = stdout only"),
    make("log", "file_max_bytes", &settings::log, &log_settings::file_max_bytes,
         "Size at which the log file rotates"),
    make("log", "file_count", &settings::log, &log_settings::file_count,
         "Rotated log files kept"),
    make("store", "backend", &settings::store, &store_settings::backend,
         "Persistence backend: sqlite (embedded default) or postgres"),
    make("store", "sqlite_path", &settings::store, &store_settings::sqlite_path,
         "SQLite database file; empty = <data.dir>/parley.db"),
    make("store", "postgres_dsn", &settings::store, &store_settings::postgres_dsn,
         "PostgreSQL connection string or URI (multi-host with target_session_attrs accepted)",
         true),
    make("store", "pool_size", &settings::store, &store_settings::pool_size,
         "Database connections, and threads of the persistence worker pool"),
    make("store", "acquire_timeout_ms", &settings::store, &store_settings::acquire_timeout_ms,
         "Waiting longer than this for a pooled connection fails the call"),
    make("store", "statement_timeout_ms", &settings::store, &store_settings::statement_timeout_ms,
         "PostgreSQL statement_timeout for every statement; 0 disables"),
    make("store", "busy_timeout_ms", &settings::store, &store_settings::busy_timeout_ms,
         "SQLite busy timeout when another connection holds the write lock"),
    make("store", "sqlite_synchronous", &settings::store, &store_settings::sqlite_synchronous,
         "SQLite durability: normal (a commit survives a crash of parley; a power loss may roll "
         "back the last ones) or full (every commit waits for fsync and survives a power loss)"),
    make("store", "migrate_on_start", &settings::store, &store_settings::migrate_on_start,
         "Apply pending migrations when `parley serve` starts"),
    make("data", "dir", &settings::data, &data_settings::dir,
         "Directory for the SQLite file and generated secrets (admin.key, pepper)"),
    make("actors", "scheduler_threads", &settings::actors, &actor_settings::scheduler_threads,
         "0: actors run on the io threads (no thread hand-off per message); N: on CAF's own N worker threads"),
    make("actors", "max_throughput", &settings::actors, &actor_settings::max_throughput,
         "Messages an actor handles per scheduling run before yielding its thread"),
    make("shutdown", "grace_seconds", &settings::shutdown, &shutdown_settings::grace_seconds,
         "On SIGTERM/SIGINT, in-flight requests get this long to finish"),
    make("admin", "key", &settings::admin, &admin_settings::key,
         "Admin API bearer key (at least 32 characters); empty = generated into <data.dir>/admin.key",
         true),
    make("auth", "pepper", &settings::auth, &auth_settings::pepper,
         "Server secret for HMAC of API key secrets (at least 32 characters); empty = generated "
         "into <data.dir>/pepper",
         true),
    make("auth", "key_cache_size", &settings::auth, &auth_settings::key_cache_size,
         "API keys kept in the in-memory cache"),
    make("auth", "key_cache_ttl_seconds", &settings::auth, &auth_settings::key_cache_ttl_seconds,
         "A cached API key is re-read from the store after this long"),
    make("auth", "failed_auth_per_minute", &settings::auth, &auth_settings::failed_auth_per_minute,
         "Failed authentications per client address per minute before answering 429"),
    make("auth", "last_used_flush_seconds", &settings::auth,
         &auth_settings::last_used_flush_seconds,
         "Period of the batched write-behind of API keys' last_used_at"),
    make("chat", "echo_enabled", &settings::chat, &chat_settings::echo_enabled,
         "Serve the built-in parley-echo demo model (repeats the last user message)"),
    make("chat", "echo_tokens_per_second", &settings::chat, &chat_settings::echo_tokens_per_second,
         "Pace of parley-echo's stream in tokens per second; 0 = no pacing"),
    make("chat", "context_tokens", &settings::chat, &chat_settings::context_tokens,
         "Prompt budget of a model in tokens: conversation history is trimmed to fit"),
    make("chat", "conversation_idle_seconds", &settings::chat,
         &chat_settings::conversation_idle_seconds,
         "An idle conversation actor passivates (frees its memory) after this long"),
    make("chat", "max_in_flight", &settings::chat, &chat_settings::max_in_flight,
         "Chat requests in flight on this node; beyond it requests answer 503 with Retry-After"),
    make("chat", "tenant_max_in_flight", &settings::chat, &chat_settings::tenant_max_in_flight,
         "In-flight chat requests of one tenant that sets no limits.max_concurrent; beyond: 429"),
    make("chat", "max_output_tokens", &settings::chat, &chat_settings::max_output_tokens,
         "Completion cap of a model whose route sets none: max_tokens sent upstream is the least "
         "of the request's, the tenant's max_request_tokens and this"),
    make("tenant_defaults", "requests_per_minute", &settings::tenant_defaults,
         &tenant_default_settings::requests_per_minute,
         "Requests per minute of a new tenant that sets none (0 = no limit)"),
    make("tenant_defaults", "tokens_per_minute", &settings::tenant_defaults,
         &tenant_default_settings::tokens_per_minute,
         "Tokens per minute of a new tenant that sets none (0 = no limit)"),
    make("tenant_defaults", "tokens_per_day", &settings::tenant_defaults,
         &tenant_default_settings::tokens_per_day,
         "Daily token budget of a new tenant that sets none (0 = no limit)"),
    make("tenant_defaults", "max_concurrent", &settings::tenant_defaults,
         &tenant_default_settings::max_concurrent,
         "Concurrent requests of a new tenant that sets none (0 = no limit)"),
    make("tenant_defaults", "max_request_tokens", &settings::tenant_defaults,
         &tenant_default_settings::max_request_tokens,
         "Tokens one request may reserve, for a new tenant that sets none (0 = no limit)"),
    make("upstream", "url", &settings::upstream, &upstream_settings::url,
         "OpenAI-compatible base URL (e.g. https://api.openai.com/v1) that serves every model "
         "not served otherwise; empty = none"),
    make("upstream", "key", &settings::upstream, &upstream_settings::key,
         "Bearer key sent to the upstream (never logged)", true),
    make("cluster", "enabled", &settings::cluster, &cluster_settings::enabled,
         "Join a cluster of nodes sharing store.postgres_dsn; each tenant is owned by exactly one node"),
    make("cluster", "node_id", &settings::cluster, &cluster_settings::node_id,
         "Stable name of this node in the cluster; empty: its advertised address"),
    make("cluster", "listen", &settings::cluster, &cluster_settings::listen,
         "HOST:PORT of the node-to-node listener (port 0: any free port); keep it on a private network"),
    make("cluster", "advertise", &settings::cluster, &cluster_settings::advertise,
         "HOST:PORT that other nodes dial to reach this one; empty: listen's host and bound port"),
    make("cluster", "lease_ttl_ms", &settings::cluster, &cluster_settings::lease_ttl_ms,
         "Lease of a node in the nodes table, renewed every TTL/4; a node that cannot renew stops serving its tenants"),
    make("cluster", "call_timeout_ms", &settings::cluster, &cluster_settings::call_timeout_ms,
         "Deadline of a call to another node (tenant lookup, admission)"),
    make("cluster", "heartbeat_ms", &settings::cluster, &cluster_settings::heartbeat_ms,
         "Node-to-node heartbeat interval; a peer silent for six intervals is dropped"),
    make("cluster", "tls_cert_file", &settings::cluster, &cluster_settings::tls_cert_file,
         "PEM certificate of this node for mutual TLS between nodes (with tls_key_file and tls_ca_file)"),
    make("cluster", "tls_key_file", &settings::cluster, &cluster_settings::tls_key_file,
         "PEM private key of cluster.tls_cert_file"),
    make("cluster", "tls_ca_file", &settings::cluster, &cluster_settings::tls_ca_file,
         "PEM CA certificate(s) that every node's certificate must chain to"),
    make("cluster", "allow_plaintext", &settings::cluster, &cluster_settings::allow_plaintext,
         "Allow plain TCP between nodes on a cluster.listen that is not loopback (no tls_*): only on a network no one else can reach"),
    make("metrics", "enabled", &settings::metrics, &metrics_settings::enabled,
         "Serve GET /metrics (Prometheus text format)"),
    make("metrics", "listen", &settings::metrics, &metrics_settings::listen,
         "Empty: /metrics is served on http.listen and needs the admin key; HOST:PORT: served there instead, without authentication (bind it to a private address)"),
    make("metrics", "tenant_label", &settings::metrics, &metrics_settings::tenant_label,
         "Label request and token metrics with the tenant id; false records \"-\" (fewer series)"),
    make("metrics", "key", &settings::metrics, &metrics_settings::key,
         "Bearer credential that may read GET /metrics on http.listen and nothing else (at least "
         "32 characters); empty = only the admin key may",
         true),
    make("metrics", "top_tenants", &settings::metrics, &metrics_settings::top_tenants,
         "How many tenants, the busiest first, parley_tenant_in_flight reports"),
    make("resilience", "connect_timeout_ms", &settings::resilience, &resilience_settings::connect_timeout_ms,
         "Upstream DNS lookup and TCP connect must finish within this; else the attempt fails (retried)"),
    make("resilience", "tls_timeout_ms", &settings::resilience, &resilience_settings::tls_timeout_ms,
         "Upstream TLS handshake must finish within this; else the attempt fails (retried)"),
    make("resilience", "first_byte_timeout_ms", &settings::resilience, &resilience_settings::first_byte_timeout_ms,
         "After the request is sent, the upstream's response header must arrive within this; else 504"),
    make("resilience", "idle_timeout_ms", &settings::resilience, &resilience_settings::idle_timeout_ms,
         "Longest silence inside an upstream's streamed body; else 504, or an error event mid-stream"),
    make("resilience", "total_timeout_ms", &settings::resilience, &resilience_settings::total_timeout_ms,
         "A non-streaming call must complete within this, all attempts and fallbacks included; else 504"),
    make("resilience", "max_attempts", &settings::resilience, &resilience_settings::max_attempts,
         "Tries per model, the first included (1 = no retries)"),
    make("resilience", "backoff_base_ms", &settings::resilience, &resilience_settings::backoff_base_ms,
         "Retry backoff: uniform random in [0, min(backoff_max_ms, backoff_base_ms x 2^(retry-1))]"),
    make("resilience", "backoff_max_ms", &settings::resilience, &resilience_settings::backoff_max_ms,
         "Largest retry backoff"),
    make("resilience", "retry_after_max_ms", &settings::resilience, &resilience_settings::retry_after_max_ms,
         "An upstream Retry-After up to this is waited for before the retry; a longer one is not retried"),
    make("resilience", "retry_budget_percent", &settings::resilience, &resilience_settings::retry_budget_percent,
         "Retries to one deployment may be at most this percentage of its requests in the last 10 s..."),
    make("resilience", "retry_budget_min_per_second", &settings::resilience, &resilience_settings::retry_budget_min_per_second,
         "...or this many per second, whichever is more"),
    make("resilience", "retry_statuses", &settings::resilience, &resilience_settings::retry_statuses,
         "Upstream HTTP statuses that are retried (connect failures and resets before the first byte always are)"),
    make("resilience", "breaker_failures", &settings::resilience, &resilience_settings::breaker_failures,
         "Consecutive failures of a deployment that open its circuit breaker; 0 = off"),
    make("resilience", "breaker_failure_percent", &settings::resilience, &resilience_settings::breaker_failure_percent,
         "Failure percentage in the breaker window that opens the circuit; 0 = off"),
    make("resilience", "breaker_window_seconds", &settings::resilience, &resilience_settings::breaker_window_seconds,
         "Sliding window of the failure percentage"),
    make("resilience", "breaker_min_requests", &settings::resilience, &resilience_settings::breaker_min_requests,
         "The failure percentage counts only with at least this many requests in the window"),
    make("resilience", "breaker_open_ms", &settings::resilience, &resilience_settings::breaker_open_ms,
         "An open circuit fails calls at once for this long, then lets probes through (half-open)"),
    make("resilience", "breaker_half_open_probes", &settings::resilience, &resilience_settings::breaker_half_open_probes,
         "Concurrent probe calls while half-open; a successful probe closes the circuit, a failed one reopens it"),
    make("resilience", "lb", &settings::resilience, &resilience_settings::lb,
         "Balancing over a route's deployments: least_outstanding (two random choices by in-flight x latency / weight) or weighted (random by weight)"),
    make("resilience", "fallback_on", &settings::resilience, &resilience_settings::fallback_on,
         "Failure classes that move a call to the route's next fallback model: connect, rate_limited, server_error, timeout, breaker_open"),
  };
  return all;
}

void check_range(const std::string& name, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo || v > hi)
    fail(name, std::to_string(v) + " is out of range [" + std::to_string(lo) + ", " +
                 std::to_string(hi) + "]");
}

/// A [[routes]] key that overrides a [resilience] key for that route: read through the
/// [resilience] field on a scratch tree, so types and messages stay the same.
bool read_route_resilience(const std::string& name, const std::string& k, const toml::node& value,
                           route_settings& r) {
  auto it = std::find_if(fields().begin(), fields().end(), [&](const field& f) {
    return f.info.section == "resilience" && f.info.key == k;
  });
  if (it == fields().end())
    return false;
  settings scratch;
  scratch.resilience = r.resilience;
  try {
    it->from_toml(scratch, value);
  } catch (const config_error& e) {
    std::string msg = e.what();
    auto pos = msg.find("resilience." + k);
    if (pos != std::string::npos)
      msg.replace(pos, k.size() + 11, name);
    throw config_error(msg);
  }
  r.resilience = scratch.resilience;
  r.overridden.push_back(k);
  return true;
}

/// Calls fn(item, table) for every table of an array of tables called `name`; item is
/// "name[i]", for error messages. `form` says what was expected ("[[routes]]").
template <class Fn>
void for_each_table(const std::string& name, const toml::node& node, const char* form, Fn fn) {
  auto* arr = node.as_array();
  if (!arr)
    fail(name, std::string("expected ") + form + " tables");
  for (std::size_t i = 0; i < arr->size(); ++i) {
    auto item = name + "[" + std::to_string(i) + "]";
    auto* t = (*arr)[i].as_table();
    if (!t)
      fail(item, "expected a table");
    fn(item, *t);
  }
}

void read_deployments(const std::string& name, const toml::node& node, route_settings& r) {
  for_each_table(name, node, "[[routes.deployments]]", [&](const std::string& dname, const toml::table& t) {
    deployment_settings d;
    for (auto& [key, value] : t) {
      std::string k(key.str());
      auto field = dname + "." + k;
      if (k == "name") read_toml(field, value, d.name);
      else if (k == "provider") read_toml(field, value, d.provider);
      else if (k == "base_url") read_toml(field, value, d.base_url);
      else if (k == "api_key_env") read_toml(field, value, d.api_key_env);
      else if (k == "upstream_model") read_toml(field, value, d.upstream_model);
      else if (k == "weight") read_toml(field, value, d.weight);
      else fail(field, "unknown key (name, provider, base_url, api_key_env, upstream_model, weight)");
    }
    r.deployments.push_back(std::move(d));
  });
}

/// [[routes]]: an array of tables, each a route_settings. Read after [resilience] and the
/// environment, so a route starts from the effective [resilience] values.
void read_routes(const toml::node& node, const resilience_settings& defaults,
                 std::vector<route_settings>& out) {
  for_each_table("routes", node, "[[routes]]", [&](const std::string& name, const toml::table& t) {
    route_settings r;
    r.resilience = defaults;
    for (auto& [key, value] : t) {
      std::string k(key.str());
      auto field = name + "." + k;
      if (k == "model") read_toml(field, value, r.model);
      else if (k == "provider") read_toml(field, value, r.provider);
      else if (k == "upstream_model") read_toml(field, value, r.upstream_model);
      else if (k == "base_url") read_toml(field, value, r.base_url);
      else if (k == "api_key_env") read_toml(field, value, r.api_key_env);
      else if (k == "context_tokens") read_toml(field, value, r.context_tokens);
      else if (k == "max_output_tokens") read_toml(field, value, r.max_output_tokens);
      else if (k == "fallbacks") read_toml(field, value, r.fallbacks);
      else if (k == "deployments") read_deployments(field, value, r);
      else if (!read_route_resilience(field, k, value, r))
        fail(field, "unknown key (model, provider, upstream_model, base_url, api_key_env, "
                    "context_tokens, max_output_tokens, fallbacks, deployments, or a [resilience] key)");
    }
    out.push_back(std::move(r));
  });
}

void validate_resilience(const std::string& prefix, const resilience_settings& r) {
  auto k = [&](const char* key) { return prefix + key; };
  check_range(k("connect_timeout_ms"), r.connect_timeout_ms, 1, 600000);
  check_range(k("tls_timeout_ms"), r.tls_timeout_ms, 1, 600000);
  check_range(k("first_byte_timeout_ms"), r.first_byte_timeout_ms, 1, 3600000);
  check_range(k("idle_timeout_ms"), r.idle_timeout_ms, 1, 3600000);
  check_range(k("total_timeout_ms"), r.total_timeout_ms, 1, 3600000);
  check_range(k("max_attempts"), r.max_attempts, 1, 10);
  check_range(k("backoff_base_ms"), r.backoff_base_ms, 0, 60000);
  check_range(k("backoff_max_ms"), r.backoff_max_ms, 0, 600000);
  check_range(k("retry_after_max_ms"), r.retry_after_max_ms, 0, 600000);
  check_range(k("retry_budget_percent"), r.retry_budget_percent, 0, 100);
  check_range(k("retry_budget_min_per_second"), r.retry_budget_min_per_second, 0, 100000);
  for (auto st : r.retry_statuses)
    if (st < 400 || st > 599)
      fail(k("retry_statuses"), std::to_string(st) + " is not an HTTP error status (400-599)");
  check_range(k("breaker_failures"), r.breaker_failures, 0, 1000000);
  check_range(k("breaker_failure_percent"), r.breaker_failure_percent, 0, 100);
  check_range(k("breaker_window_seconds"), r.breaker_window_seconds, 1, 3600);
  check_range(k("breaker_min_requests"), r.breaker_min_requests, 1, 1000000);
  check_range(k("breaker_open_ms"), r.breaker_open_ms, 1, 3600000);
  check_range(k("breaker_half_open_probes"), r.breaker_half_open_probes, 1, 1000);
  if (r.lb != "least_outstanding" && r.lb != "weighted")
    fail(k("lb"), "'" + r.lb + "' is not least_outstanding or weighted");
  static const char* classes[] = {"connect", "rate_limited", "server_error", "timeout", "breaker_open"};
  for (auto& c : r.fallback_on)
    if (std::find_if(std::begin(classes), std::end(classes), [&](const char* x) { return c == x; }) ==
        std::end(classes))
      fail(k("fallback_on"), "'" + c + "' is not connect, rate_limited, server_error, timeout or breaker_open");
}

bool valid_env_name(const std::string& v) {
  return std::all_of(v.begin(), v.end(), [](unsigned char c) {
    return std::isupper(c) || std::isdigit(c) || c == '_';
  });
}

/// The checks a route's own upstream and each of its deployments share: a known provider,
/// an http(s) base_url for openai (when `base_url` is given), an environment variable name.
void check_upstream(const std::string& name, const std::string& provider, const std::string* base_url,
                    const std::string& api_key_env, const char* url_problem) {
  if (provider != "openai" && provider != "builtin")
    fail(name + ".provider", "'" + provider + "' is not openai or builtin");
  if (base_url && provider == "openai" && base_url->rfind("http://", 0) != 0 &&
      base_url->rfind("https://", 0) != 0)
    fail(name + ".base_url", url_problem);
  if (!valid_env_name(api_key_env))
    fail(name + ".api_key_env", "must be an environment variable name (A-Z, 0-9, _)");
}

} // namespace

const std::vector<key_info>& known_keys() {
  static const std::vector<key_info> keys = [] {
    std::vector<key_info> out;
    for (auto& f : fields())
      out.push_back(f.info);
    return out;
  }();
  return keys;
}

std::pair<std::string, uint16_t> split_host_port(const std::string& value,
                                                 const std::string& key) {
  std::string host, port;
  if (!value.empty() && value.front() == '[') {
    auto close = value.find(']');
    if (close == std::string::npos || close + 1 >= value.size() || value[close + 1] != ':')
      fail(key, "expected [IPv6]:PORT, got '" + value + "'");
    host = value.substr(1, close - 1);
    port = value.substr(close + 2);
  } else {
    auto colon = value.rfind(':');
    if (colon == std::string::npos || colon == 0)
      fail(key, "expected HOST:PORT, got '" + value + "'");
    host = value.substr(0, colon);
    port = value.substr(colon + 1);
    if (host.find(':') != std::string::npos)
      fail(key, "write IPv6 addresses in brackets, like [::1]:8080; got '" + value + "'");
  }
  if (port.empty() || port.size() > 5 ||
      !std::all_of(port.begin(), port.end(), [](unsigned char c) { return std::isdigit(c); }))
    fail(key, "port must be a number 0-65535, got '" + port + "'");
  auto n = std::stoul(port);
  if (n > 65535)
    fail(key, "port must be a number 0-65535, got '" + port + "'");
  return {host, static_cast<uint16_t>(n)};
}

void validate(const settings& s) {
  split_host_port(s.http.listen, "http.listen");
  check_range("http.io_threads", s.http.io_threads, 1, 64);
  check_range("http.max_body_bytes", static_cast<int64_t>(s.http.max_body_bytes), 1024,
              int64_t{1} << 30);
  check_range("http.max_header_bytes", static_cast<int64_t>(s.http.max_header_bytes), 1024,
              int64_t{1} << 20);
  check_range("http.read_timeout_seconds", s.http.read_timeout_seconds, 1, 3600);
  check_range("http.idle_timeout_seconds", s.http.idle_timeout_seconds, 1, 3600);
  check_range("http.write_timeout_seconds", s.http.write_timeout_seconds, 1, 3600);
  for (auto& o : s.http.cors_allowed_origins)
    if (o != "*" && o.rfind("http://", 0) != 0 && o.rfind("https://", 0) != 0)
      fail("http.cors_allowed_origins", "'" + o + "' is not \"*\" or an http(s):// origin");
  static const char* levels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
  if (std::find(std::begin(levels), std::end(levels), s.log.level) == std::end(levels))
    fail("log.level", "'" + s.log.level +
                        "' is not one of trace, debug, info, warn, error, critical, off");
  check_range("log.file_max_bytes", static_cast<int64_t>(s.log.file_max_bytes), 4096,
              int64_t{1} << 40);
  check_range("log.file_count", s.log.file_count, 1, 1000);
  if (s.store.backend != "sqlite" && s.store.backend != "postgres")
    fail("store.backend", "'" + s.store.backend + "' is not sqlite or postgres");
  if (s.store.backend == "postgres" && s.store.postgres_dsn.empty())
    fail("store.postgres_dsn", "required when store.backend is postgres");
  check_range("store.pool_size", s.store.pool_size, 1, 256);
  check_range("store.acquire_timeout_ms", s.store.acquire_timeout_ms, 1, 600000);
  check_range("store.statement_timeout_ms", s.store.statement_timeout_ms, 0, 3600000);
  check_range("store.busy_timeout_ms", s.store.busy_timeout_ms, 0, 600000);
  if (s.store.sqlite_synchronous != "normal" && s.store.sqlite_synchronous != "full")
    fail("store.sqlite_synchronous", "'" + s.store.sqlite_synchronous + "' is not normal or full");
  if (s.data.dir.empty())
    fail("data.dir", "must not be empty");
  check_range("actors.scheduler_threads", s.actors.scheduler_threads, 0, 256);
  check_range("actors.max_throughput", s.actors.max_throughput, 1, 1000000);
  check_range("shutdown.grace_seconds", s.shutdown.grace_seconds, 0, 3600);
  if (!s.admin.key.empty() && s.admin.key.size() < 32)
    fail("admin.key", "must be at least 32 characters");
  if (!s.auth.pepper.empty() && s.auth.pepper.size() < 32)
    fail("auth.pepper", "must be at least 32 characters");
  check_range("auth.key_cache_size", s.auth.key_cache_size, 1, 100000000);
  check_range("auth.key_cache_ttl_seconds", s.auth.key_cache_ttl_seconds, 1, 86400);
  check_range("auth.failed_auth_per_minute", s.auth.failed_auth_per_minute, 1, 1000000);
  check_range("auth.last_used_flush_seconds", s.auth.last_used_flush_seconds, 1, 3600);
  check_range("chat.echo_tokens_per_second", s.chat.echo_tokens_per_second, 0, 1000000);
  check_range("chat.context_tokens", s.chat.context_tokens, 16, 10000000);
  check_range("chat.conversation_idle_seconds", s.chat.conversation_idle_seconds, 1, 86400);
  check_range("chat.max_in_flight", s.chat.max_in_flight, 1, 10000000);
  check_range("chat.tenant_max_in_flight", s.chat.tenant_max_in_flight, 1, 10000000);
  check_range("chat.max_output_tokens", s.chat.max_output_tokens, 1, 10000000);
  for (auto [name, v] : {std::pair<const char*, int64_t>{"tenant_defaults.requests_per_minute",
                                                         s.tenant_defaults.requests_per_minute},
                         {"tenant_defaults.tokens_per_minute", s.tenant_defaults.tokens_per_minute},
                         {"tenant_defaults.tokens_per_day", s.tenant_defaults.tokens_per_day},
                         {"tenant_defaults.max_concurrent", s.tenant_defaults.max_concurrent},
                         {"tenant_defaults.max_request_tokens", s.tenant_defaults.max_request_tokens}})
    check_range(name, v, 0, 1'000'000'000'000LL);
  check_range("http.max_connections", s.http.max_connections, 1, 10000000);
  check_range("http.max_connections_per_client", s.http.max_connections_per_client, 0, 10000000);
  for (auto& p : s.http.trusted_proxies)
    if (!valid_cidr(p))
      fail("http.trusted_proxies", "'" + p + "' is not an IP address or CIDR block");
  if (s.http.tls_cert_file.empty() != s.http.tls_key_file.empty())
    fail(s.http.tls_cert_file.empty() ? "http.tls_cert_file" : "http.tls_key_file",
         "set both tls_cert_file and tls_key_file, or neither");
  if (!s.metrics.key.empty() && s.metrics.key.size() < 32)
    fail("metrics.key", "must be at least 32 characters");
  if (!s.metrics.key.empty() && s.metrics.key == s.admin.key)
    fail("metrics.key", "must differ from admin.key");
  std::vector<std::string> models;
  for (std::size_t i = 0; i < s.routes.size(); ++i) {
    auto& r = s.routes[i];
    auto name = "routes[" + std::to_string(i) + "]";
    if (r.model.empty() || r.model.size() > 128)
      fail(name + ".model", "must be a model name of 1-128 characters");
    if (std::find(models.begin(), models.end(), r.model) != models.end())
      fail(name + ".model", "'" + r.model + "' is routed twice");
    models.push_back(r.model);
    check_upstream(name, r.provider, r.deployments.empty() ? &r.base_url : nullptr, r.api_key_env,
                   "an openai route needs an http:// or https:// base_url (or deployments)");
    if (r.provider == "builtin" &&
        (r.upstream_model.empty() ? r.model : r.upstream_model) != "parley-echo")
      fail(name + ".upstream_model", "the builtin provider serves only parley-echo");
    if (r.context_tokens < 0 || r.context_tokens > 10000000)
      fail(name + ".context_tokens", "must be between 0 and 10000000");
    if (r.max_output_tokens < 0 || r.max_output_tokens > 10000000)
      fail(name + ".max_output_tokens", "must be between 0 and 10000000");
    validate_resilience(name + ".", r.resilience);
    std::vector<std::string> names;
    for (std::size_t j = 0; j < r.deployments.size(); ++j) {
      auto& d = r.deployments[j];
      auto dn = name + ".deployments[" + std::to_string(j) + "]";
      check_upstream(dn, d.provider, &d.base_url, d.api_key_env,
                     "an openai deployment needs an http:// or https:// base_url");
      check_range(dn + ".weight", d.weight, 1, 1000000);
      auto label = d.name.empty() ? d.base_url : d.name;
      if (std::find(names.begin(), names.end(), label) != names.end())
        fail(dn + ".name", "two deployments of one route need distinct names");
      names.push_back(label);
    }
  }
  for (std::size_t i = 0; i < s.routes.size(); ++i) {
    auto name = "routes[" + std::to_string(i) + "].fallbacks";
    for (auto& fb : s.routes[i].fallbacks) {
      if (fb == s.routes[i].model)
        fail(name, "a route cannot fall back to itself");
      bool known = std::find(models.begin(), models.end(), fb) != models.end() ||
                   (fb == "parley-echo" && s.chat.echo_enabled);
      if (!known)
        fail(name, "'" + fb + "' is not a routed model");
    }
  }
  validate_resilience("resilience.", s.resilience);
  check_range("metrics.top_tenants", s.metrics.top_tenants, 0, 1000);
  if (!s.metrics.listen.empty())
    split_host_port(s.metrics.listen, "metrics.listen");
  if (s.cluster.enabled && s.store.backend != "postgres")
    fail("cluster.enabled", "a cluster needs store.backend = postgres (SQLite deployments are "
                            "single-node)");
  split_host_port(s.cluster.listen, "cluster.listen");
  if (!s.cluster.advertise.empty())
    split_host_port(s.cluster.advertise, "cluster.advertise");
  check_range("cluster.lease_ttl_ms", s.cluster.lease_ttl_ms, 1000, 600000);
  check_range("cluster.call_timeout_ms", s.cluster.call_timeout_ms, 100, 600000);
  check_range("cluster.heartbeat_ms", s.cluster.heartbeat_ms, 50, 60000);
  {
    int set = !s.cluster.tls_cert_file.empty() + !s.cluster.tls_key_file.empty() +
              !s.cluster.tls_ca_file.empty();
    if (set != 0 && set != 3)
      fail("cluster.tls_cert_file", "set all of cluster.tls_cert_file, tls_key_file and "
                                    "tls_ca_file for mutual TLS between nodes, or none");
    // Plain TCP beyond loopback only when asked for: the cluster port has no authentication
    // of its own (docs/cluster.md, docs/security.md).
    auto host = split_host_port(s.cluster.listen, "cluster.listen").first;
    bool loopback = host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
    if (s.cluster.enabled && set == 0 && !loopback && !s.cluster.allow_plaintext)
      fail("cluster.listen", "is not a loopback address: set cluster.tls_cert_file, tls_key_file "
                             "and tls_ca_file (mutual TLS between nodes), or cluster.allow_plaintext "
                             "= true on a network that only the nodes can reach");
  }
  if (!s.upstream.url.empty() && s.upstream.url.rfind("http://", 0) != 0 &&
      s.upstream.url.rfind("https://", 0) != 0)
    fail("upstream.url", "must start with http:// or https://");
}

settings load(const std::string& path, const std::map<std::string, std::string>& env) {
  settings s;
  const toml::node* routes_node = nullptr;
  toml::table root;
  if (!path.empty()) {
    try {
      root = toml::parse_file(path);
    } catch (const toml::parse_error& e) {
      std::ostringstream msg;
      msg << "invalid configuration: " << path << ":" << e.source().begin.line << ":"
          << e.source().begin.column << ": " << e.description();
      throw config_error(msg.str());
    }
    for (auto& [sec_key, sec_node] : root) {
      std::string section(sec_key.str());
      if (section == "routes") {
        routes_node = &sec_node;
        continue;
      }
      auto* table = sec_node.as_table();
      if (!table)
        fail(section, "expected a [" + section + "] table");
      for (auto& [key, node] : *table) {
        std::string k(key.str());
        auto it = std::find_if(fields().begin(), fields().end(), [&](const field& f) {
          return f.info.section == section && f.info.key == k;
        });
        if (it == fields().end())
          fail(section + "." + k, "unknown key in " + path);
        it->from_toml(s, node);
      }
    }
  }
  for (auto& f : fields()) {
    auto it = env.find(f.info.env);
    if (it != env.end())
      f.from_env(s, it->second);
  }
  if (routes_node)
    read_routes(*routes_node, s.resilience, s.routes);
  validate(s);
  return s;
}

std::map<std::string, std::string> process_environment() {
  std::map<std::string, std::string> out;
  for (char** e = environ; e && *e; ++e) {
    std::string kv(*e);
    if (kv.rfind("PARLEY_", 0) != 0)
      continue;
    auto eq = kv.find('=');
    if (eq != std::string::npos)
      out.emplace(kv.substr(0, eq), kv.substr(eq + 1));
  }
  return out;
}

std::vector<std::string> describe(const settings& s) {
  std::vector<std::string> out;
  for (auto& f : fields())
    out.push_back(f.info.section + "." + f.info.key + " = " + f.show(s));
  return out;
}

} // namespace parley::config
