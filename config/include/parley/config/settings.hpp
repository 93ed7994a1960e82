#pragma once

#include <cstdint>
#include <string>
#include <vector>

/// Typed settings, one struct per module. Each module receives only its own struct; only
/// runtime sees the whole tree. Defaults here are the embedded single-node defaults.
/// docs/configuration.md lists every key, its environment name and meaning.
namespace parley::config {

/// [http]: the Beast listener and sessions (net).
struct http_settings {
  std::string listen = "127.0.0.1:8080";   ///< HOST:PORT; port 0 picks a free port
  int io_threads = 2;
  std::size_t max_body_bytes = 4u << 20;   ///< larger bodies answer 413
  std::size_t max_header_bytes = 16u << 10; ///< larger header blocks answer 431
  int read_timeout_seconds = 30;           ///< a request must arrive completely within this
  int idle_timeout_seconds = 75;           ///< keep-alive connections idle longer are closed
  int write_timeout_seconds = 30;          ///< one write to a slow client may take this long
  std::vector<std::string> cors_allowed_origins; ///< exact origins or "*"; empty = no CORS
  int max_connections = 10000;             ///< open connections per listener; beyond: closed at once
  int max_connections_per_client = 256;    ///< open connections per client address; 0 = no cap
  /// Addresses or CIDR blocks of reverse proxies whose X-Forwarded-For / Forwarded headers
  /// name the client; empty = the peer address is the client, headers are ignored.
  std::vector<std::string> trusted_proxies;
  std::string tls_cert_file;               ///< PEM certificate chain; set with tls_key_file = HTTPS
  std::string tls_key_file;                ///< PEM private key (secret file)
};

/// [log]
struct log_settings {
  std::string level = "info";              ///< trace|debug|info|warn|error|critical|off
  std::string file;                        ///< "" = stdout only; else also a rotating file
  std::size_t file_max_bytes = 64u << 20;
  int file_count = 5;
};

/// [store]: persistence backend and its pool.
struct store_settings {
  std::string backend = "sqlite";          ///< "sqlite" | "postgres"
  std::string sqlite_path;                 ///< "" = <data.dir>/parley.db
  std::string postgres_dsn;                ///< libpq connection string or URI (secret)
  int pool_size = 4;                       ///< connections (and worker threads)
  int acquire_timeout_ms = 2000;           ///< waiting longer for a connection fails with timeout
  int statement_timeout_ms = 5000;         ///< PostgreSQL statement_timeout
  int busy_timeout_ms = 5000;              ///< SQLite busy_timeout
  std::string sqlite_synchronous = "normal"; ///< "normal" | "full": SQLite fsync per commit or per checkpoint
  bool migrate_on_start = true;            ///< `serve` applies pending migrations at start
};

/// [data]
struct data_settings {
  std::string dir = "var";                 ///< SQLite file, generated admin key and pepper
};

/// [actors]: the CAF actor system.
struct actor_settings {
  int scheduler_threads = 0;               ///< 0: actors run on the io threads; N: CAF's own N threads
  int max_throughput = 300;                ///< messages per actor per scheduling run
};

/// [shutdown]
struct shutdown_settings {
  int grace_seconds = 20;                  ///< in-flight requests get this long to finish
};

/// [admin]
struct admin_settings {
  std::string key;                         ///< admin bearer key (secret); "" = generated file
};

/// [auth]: tenant API keys.
struct auth_settings {
  std::string pepper;                      ///< HMAC key for secrets (secret); "" = generated file
  int key_cache_size = 100000;             ///< entries in the in-memory key cache
  int key_cache_ttl_seconds = 60;          ///< a cached key is re-read after this long
  int failed_auth_per_minute = 30;         ///< failures per client address before 429
  int last_used_flush_seconds = 10;        ///< write-behind period of keys' last_used_at
};

/// [chat]: models served by this node and conversation behaviour.
struct chat_settings {
  bool echo_enabled = true;                ///< serve the built-in `parley-echo` demo model
  int echo_tokens_per_second = 50;         ///< pace of parley-echo's stream (0 = no pacing)
  int context_tokens = 8192;               ///< default prompt budget of a model, in tokens
  int conversation_idle_seconds = 300;     ///< an idle conversation actor passivates after this
  int max_in_flight = 20000;               ///< chat requests in flight per node; beyond: 503
  int tenant_max_in_flight = 2000;         ///< per tenant without its own max_concurrent; beyond: 429
  int max_output_tokens = 4096;            ///< completion cap of a model without its own; sent upstream as max_tokens
};

/// [tenant_defaults]: the limits a new tenant gets unless its creator sets others. Finite by
/// default: a tenant without limits must be created so on purpose (0 = no limit).
struct tenant_default_settings {
  int64_t requests_per_minute = 600;
  int64_t tokens_per_minute = 200000;
  int64_t tokens_per_day = 2000000;
  int64_t max_concurrent = 20;
  int64_t max_request_tokens = 0;
};

/// [upstream]: quick start -- forward every model not served otherwise to one
/// OpenAI-compatible endpoint.
struct upstream_settings {
  std::string url;                         ///< e.g. "https://api.openai.com/v1"; "" = none
  std::string key;                         ///< bearer key sent upstream (secret)
};

/// [metrics]: Prometheus exposition.
struct metrics_settings {
  bool enabled = true;                     ///< serve GET /metrics
  std::string listen;                      ///< "" = on http.listen, admin key required; else its own HOST:PORT, no auth
  bool tenant_label = true;                ///< per-tenant labels (off: "-", for cardinality)
  std::string key;                         ///< bearer credential that may read /metrics and nothing else (secret)
  int top_tenants = 20;                    ///< tenants in parley_tenant_in_flight
};

/// [cluster]: several nodes on one PostgreSQL, each tenant owned by exactly one of them
/// (docs/cluster.md). Off: a single node that owns every tenant.
struct cluster_settings {
  bool enabled = false;                    ///< join the cluster (needs store.backend = postgres)
  std::string node_id;                     ///< stable name of this node; "" = the advertised address
  std::string listen = "127.0.0.1:7947";   ///< HOST:PORT of the node-to-node listener (CAF middleman; port 0 = any)
  std::string advertise;                   ///< HOST:PORT other nodes dial; "" = listen's host and bound port
  int lease_ttl_ms = 10000;                ///< a node's lease; renewed every TTL/4
  int call_timeout_ms = 3000;              ///< a remote call (a tenant lookup, an admission) fails after this
  int heartbeat_ms = 500;                  ///< node-to-node heartbeat; a silent peer is dropped after 6 of them
  /// Mutual TLS between nodes: all three set (every node's certificate signed by the CA), or
  /// none (plain TCP: keep cluster.listen on a private network).
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_ca_file;
  /// Plain TCP between nodes on a cluster.listen that is not a loopback address. Off: such a
  /// node refuses to start without cluster.tls_* (any peer that reaches a plain cluster port
  /// is taken for a node, and CAF 0.17 lets one forged header make it allocate gigabytes).
  bool allow_plaintext = false;
};

/// [resilience]: how upstream calls are timed out, retried, balanced and failed over. Every
/// key is a default that a [[routes]] entry may override for its route.
struct resilience_settings {
  int connect_timeout_ms = 5000;           ///< DNS + TCP connect
  int tls_timeout_ms = 5000;               ///< TLS handshake
  int first_byte_timeout_ms = 60000;       ///< request sent -> response header
  int idle_timeout_ms = 30000;             ///< longest silence inside a streamed body
  int total_timeout_ms = 300000;           ///< non-streaming calls, all attempts included
  int max_attempts = 3;                    ///< tries per model, the first included
  int backoff_base_ms = 100;               ///< full-jitter backoff: first cap, doubling
  int backoff_max_ms = 2000;               ///< largest backoff
  int retry_after_max_ms = 10000;          ///< longest upstream Retry-After honoured
  int retry_budget_percent = 20;           ///< retries at most this % of requests...
  int retry_budget_min_per_second = 3;     ///< ...or this many per second
  std::vector<int> retry_statuses{429, 500, 502, 503, 504};
  int breaker_failures = 5;                ///< consecutive failures that open the circuit; 0 = off
  int breaker_failure_percent = 50;        ///< failure % in the window that opens it; 0 = off
  int breaker_window_seconds = 10;
  int breaker_min_requests = 20;           ///< the % trigger needs this many requests
  int breaker_open_ms = 10000;             ///< open this long, then half-open
  int breaker_half_open_probes = 1;        ///< concurrent probes while half-open
  std::string lb = "least_outstanding";    ///< "least_outstanding" | "weighted"
  std::vector<std::string> fallback_on{"connect", "rate_limited", "server_error", "timeout",
                                       "breaker_open"};
};

/// One deployment of a route ([[routes.deployments]]).
struct deployment_settings {
  std::string name;             ///< "" = its base_url's host:port
  std::string provider = "openai"; ///< "openai" or "builtin"
  std::string base_url;
  std::string api_key_env;
  std::string upstream_model;   ///< "" = the route's upstream_model
  int weight = 1;
};

/// One [[routes]] entry: a model name this node serves and where it goes.
struct route_settings {
  std::string model;            ///< client-facing model name (unique)
  std::string provider = "openai"; ///< "openai" (any OpenAI-compatible endpoint) or "builtin"
  std::string upstream_model;   ///< name sent upstream; "" = model
  std::string base_url;         ///< e.g. "https://api.openai.com/v1" (openai provider)
  std::string api_key_env;      ///< environment variable holding the upstream key; "" = none
  int context_tokens = 0;       ///< prompt budget; 0 = chat.context_tokens
  int max_output_tokens = 0;    ///< completion cap; 0 = chat.max_output_tokens
  /// Several deployments; when empty, the route's own provider/base_url/api_key_env is its
  /// one deployment.
  std::vector<deployment_settings> deployments;
  std::vector<std::string> fallbacks; ///< other routes' models, tried in order
  resilience_settings resilience; ///< [resilience] with this route's overrides (after load)
  std::vector<std::string> overridden; ///< resilience keys this route sets itself
};

/// The whole tree. Only runtime holds it.
struct settings {
  http_settings http;
  log_settings log;
  store_settings store;
  data_settings data;
  actor_settings actors;
  shutdown_settings shutdown;
  admin_settings admin;
  auth_settings auth;
  chat_settings chat;
  tenant_default_settings tenant_defaults;
  upstream_settings upstream;
  resilience_settings resilience;
  metrics_settings metrics;
  cluster_settings cluster;
  std::vector<route_settings> routes;
};

} // namespace parley::config
