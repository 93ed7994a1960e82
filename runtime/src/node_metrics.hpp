#pragma once

#include "parley/actors/services.hpp"
#include "parley/config/metrics.hpp"
#include "parley/net/resilience.hpp"
#include "parley/net/server.hpp"
#include "parley/net/tenant_locator.hpp"
#include "parley/persistence/store.hpp"
#include "parley/persistence/turn_writer.hpp"

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace parley::runtime::detail {

/// What the scrape-time collectors read. Every pointer outlives the registry's use.
struct metric_sources {
  std::string version, commit;
  const actors::admission_counters* admission = nullptr;
  const actors::actor_counters* actors = nullptr;
  const actors::tenant_load_board* load = nullptr;
  int top_tenants = 20;
  std::vector<std::shared_ptr<net::resilient_route>> routes;
  std::function<const net::server*()> server;
  const persistence::store* store = nullptr;
  const std::atomic<bool>* store_up = nullptr;
  const std::atomic<uint64_t>* store_errors = nullptr;
  std::function<const persistence::turn_writer*()> writer;
  /// Cluster (null when not one): the tenant locator's remote admissions, whether the lease
  /// is held, and the live members.
  std::shared_ptr<net::tenant_locator> locator;
  std::function<bool()> lease_held;
  std::function<int()> live_members;
};

/// Registers the collectors of everything counted elsewhere as plain atomics: build info,
/// process, admission, cache, upstream deployments (attempts, retries, timeouts, breakers,
/// fallbacks), actors, busiest tenants, HTTP in flight and streams, the store.
void add_node_collectors(metrics::registry& reg, metric_sources src);

} // namespace parley::runtime::detail
