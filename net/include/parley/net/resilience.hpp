#pragma once

// Upstream resilience: circuit breakers, retry budgets, load balancing over a route's
// deployments, retries with backoff, fallbacks to other models, and the total deadline of
// non-streaming calls. Semantics follow Envoy's circuit breaking and retry budgets, gRPC's
// retry design (no retry once the response has begun; server pushback honoured) and AWS's
// "exponential backoff with full jitter".

#include "parley/actors/provider.hpp"
#include "parley/config/logging.hpp"
#include "parley/net/http.hpp"
#include "parley/net/io_pool.hpp"

#include <nlohmann/json_fwd.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace parley::net {

using steady_time = std::chrono::steady_clock::time_point;

/// When and how often a call is tried again on the same model.
struct retry_policy {
  int max_attempts = 3;          ///< tries per model, the first included (1 = no retries)
  int backoff_base_ms = 100;     ///< first backoff cap; doubles per retry (full jitter)
  int backoff_max_ms = 2000;     ///< backoff cap
  int retry_after_max_ms = 10000;///< longest Retry-After honoured; longer: no retry here
  double budget_ratio = 0.2;     ///< retries may be at most this share of requests...
  int budget_min_per_second = 3; ///< ...or this many per second, whichever is more
  std::vector<int> statuses{429, 500, 502, 503, 504}; ///< retried upstream statuses
};

/// When a deployment's circuit opens and closes. 0 disables a trigger.
struct breaker_policy {
  int consecutive_failures = 5;  ///< open after this many failures in a row
  double failure_ratio = 0.5;    ///< open when failures / requests in the window reach this
  int window_seconds = 10;       ///< the ratio's sliding window
  int min_requests = 20;         ///< the ratio needs this many requests in the window
  int open_ms = 10000;           ///< how long the circuit stays open before a probe
  int half_open_probes = 1;      ///< concurrent probe calls while half-open
};

/// A circuit breaker (closed -> open -> half-open -> closed). Thread-safe.
class circuit_breaker {
public:
  enum class state : uint8_t { closed = 0, half_open = 1, open = 2 };
  enum class admission : uint8_t { deny, allow, probe };

  explicit circuit_breaker(breaker_policy p);
  /// May a call go through now? `probe`: it is a half-open probe, and its result (or
  /// abandon()) must be reported with probe = true.
  admission admit(steady_time now);
  void on_success(bool probe, steady_time now);
  void on_failure(bool probe, steady_time now);
  /// A probe was cancelled before it had a result.
  void abandon(bool probe);
  state current(steady_time now) const;
  uint64_t times_opened() const;

private:
  void open_locked(steady_time now);
  void roll_locked(steady_time now);

  breaker_policy p_;
  mutable std::mutex mu_;
  state state_ = state::closed;
  int consecutive_ = 0;
  int probes_ = 0;
  steady_time open_until_{};
  int64_t window_head_ = 0; ///< the second of the newest bucket
  std::vector<std::array<uint32_t, 2>> window_; ///< per second: {requests, failures}
  uint64_t opened_ = 0;
};

/// A retry budget (Finagle / Envoy style): in a sliding window, retries may be at most
/// ratio x requests + min_per_second x window. Thread-safe.
class retry_budget {
public:
  retry_budget(double ratio, int min_per_second, int window_seconds = 10);
  void on_request(steady_time now);
  /// Takes one retry from the budget; false when it is spent.
  bool try_retry(steady_time now);

private:
  void roll_locked(steady_time now);

  double ratio_;
  int min_per_second_;
  std::mutex mu_;
  int64_t head_ = 0;
  std::vector<std::array<uint32_t, 2>> window_; ///< per second: {requests, retries}
};

/// Upstream timeouts of a deployment (the total applies to non-streaming calls, over all
/// attempts and fallbacks).
struct timeout_policy {
  int connect_ms = 5000;
  int tls_ms = 5000;
  int first_byte_ms = 60000;
  int idle_ms = 30000;
  int total_ms = 300000;
};

/// Per-deployment counters, read by metrics and /readyz. Relaxed atomics.
struct deployment_counters {
  enum phase { connect = 0, tls, first_byte, idle, total, phases };
  std::atomic<uint64_t> ok{0}, error{0}, timeout{0}, rate_limited{0}, breaker_open{0};
  std::atomic<uint64_t> retries{0}, budget_exhausted{0};
  std::array<std::atomic<uint64_t>, phases> timeouts{};
};

/// One upstream serving a route: a client, the model name it is called with, a weight.
struct deployment {
  deployment(std::string route, std::string name, std::string upstream_model,
             std::shared_ptr<actors::provider_port> client, int weight, breaker_policy bp,
             const retry_policy& rp);

  const std::string route;
  const std::string name;
  const std::string upstream_model;
  const std::shared_ptr<actors::provider_port> client;
  const int weight;
  circuit_breaker breaker;
  retry_budget budget;
  std::atomic<int64_t> outstanding{0};
  std::atomic<int64_t> ewma_us{0}; ///< smoothed time to first token (0 = no sample yet)
  deployment_counters counters;
};

/// Failure classes that may move a call to the next fallback model.
enum class failure_class : uint8_t { none, connect, rate_limited, server_error, timeout, breaker_open };
/// Reads "connect", "rate_limited", "server_error", "timeout", "breaker_open".
failure_class parse_failure_class(const std::string& s);
failure_class classify(const actors::chat_failure& f);

struct route_policy {
  std::string lb = "least_outstanding"; ///< or "weighted"
  retry_policy retry;
  int total_timeout_ms = 300000;        ///< non-streaming calls, all attempts included
  std::vector<failure_class> fallback_on{failure_class::connect, failure_class::rate_limited,
                                         failure_class::server_error, failure_class::timeout,
                                         failure_class::breaker_open};
};

/// A route: a client-facing model served by one or more deployments, with its retry and
/// fallback behaviour. It is itself a provider_port, so actors call it like any provider.
/// Fallbacks are other routes, tried in order, and only models the tenant may use
/// (upstream_call::allowed_models).
class resilient_route final : public actors::provider_port,
                              public std::enable_shared_from_this<resilient_route> {
public:
  /// `model` "" serves any model name (the quick-start upstream): calls keep their name.
  /// Its calls' timers run on the calling io thread's context (`io`).
  resilient_route(io_pool& io, std::string model, route_policy policy,
                  std::vector<std::shared_ptr<deployment>> deployments, log::logger_ptr logger);
  /// The same on one context the caller runs (tests).
  resilient_route(asio::io_context& ioc, std::string model, route_policy policy,
                  std::vector<std::shared_ptr<deployment>> deployments, log::logger_ptr logger);

  void set_fallbacks(std::vector<std::shared_ptr<resilient_route>> fallbacks);

  std::shared_ptr<actors::call_handle>
  start(actors::upstream_call call, std::shared_ptr<actors::call_listener> listener) override;

  const std::string& model() const noexcept { return model_; }
  const route_policy& policy() const noexcept { return policy_; }
  const std::vector<std::shared_ptr<deployment>>& deployments() const noexcept { return deployments_; }
  const std::vector<std::shared_ptr<resilient_route>>& fallbacks() const noexcept { return fallbacks_; }
  /// Calls that a fallback served, per fallback (same order as fallbacks()).
  uint64_t fallbacks_served(std::size_t i) const;
  /// Picks a deployment whose breaker admits a call, avoiding `tried` when it can; nullptr
  /// when every breaker is open. Sets `probe` for a half-open probe.
  std::shared_ptr<deployment> pick(const std::vector<const deployment*>& tried, bool& probe);
  /// The context for a call's timers: the calling io thread's own.
  asio::io_context& ioc() noexcept { return io_->pick_context(); }
  const log::logger_ptr& logger() const noexcept { return logger_; }
  void count_fallback(std::size_t i);

private:
  resilient_route(std::unique_ptr<io_pool> own, std::string model, route_policy policy,
                  std::vector<std::shared_ptr<deployment>> deployments, log::logger_ptr logger);

  std::unique_ptr<io_pool> own_io_; ///< set by the one-context constructor
  io_pool* io_;
  std::string model_;
  route_policy policy_;
  std::vector<std::shared_ptr<deployment>> deployments_;
  std::vector<std::shared_ptr<resilient_route>> fallbacks_;
  std::unique_ptr<std::atomic<uint64_t>[]> fallback_counts_;
  log::logger_ptr logger_;
};

const char* to_string(circuit_breaker::state s);

/// Every deployment's breaker state and load, for /readyz details and the admin API.
nlohmann::json upstream_status(const std::vector<std::shared_ptr<resilient_route>>& routes);

} // namespace parley::net
