#pragma once

#include "parley/config/metrics.hpp"
#include "parley/net/router.hpp"

#include <memory>

namespace parley::net {

class exchange;

/// The per-request metrics, recorded once when a response (or stream) has been written:
/// requests by route, method, status class and tenant; total latency by route; for chat
/// completions the upstream time, the added overhead, the time to first token and the
/// tokens by tenant and model. Thread-safe.
class request_metrics {
public:
  /// `tenant_label` false records "-" for the tenant (cardinality).
  request_metrics(metrics::registry& reg, bool tenant_label);
  void record(const exchange& ex, unsigned status, double seconds);

private:
  bool tenant_label_;
  metrics::family<metrics::counter> requests_;
  metrics::family<metrics::histogram> duration_;
  metrics::family<metrics::histogram> upstream_;
  metrics::family<metrics::histogram> ttft_;
  metrics::family<metrics::counter> tokens_;
  metrics::histogram& overhead_;
};

/// GET /metrics: the registry in the Prometheus text format 0.0.4, for callers `who` may
/// be (the metrics or admin credential on the API listener; anyone on its own listener).
void add_metrics_route(router& r, std::shared_ptr<const metrics::registry> reg, access who);

} // namespace parley::net
