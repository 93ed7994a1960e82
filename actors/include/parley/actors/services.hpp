#pragma once

#include "parley/actors/cluster.hpp"

#include "parley/actors/provider.hpp"
#include "parley/config/logging.hpp"
#include "parley/persistence/executor.hpp"
#include "parley/persistence/turn_writer.hpp"
#include "parley/persistence/store.hpp"

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <optional>
#include <string>
#include <vector>

namespace parley::actors {

/// The models a node serves. Immutable after start-up; shared by every tenant actor.
class route_table {
public:
  explicit route_table(std::vector<route> routes, std::shared_ptr<provider_port> fallback = {},
                       int64_t fallback_context_tokens = 8192,
                       int64_t fallback_max_output_tokens = 0);
  /// The route for `model`: an exact match, else the fallback upstream (quick-start mode:
  /// any other model name is forwarded as is), else nothing. Thread-safe.
  std::optional<route> find(const std::string& model) const;
  /// Routes with a fixed name (for GET /v1/models).
  const std::vector<route>& named() const noexcept { return routes_; }
  bool has_fallback() const noexcept { return fallback_ != nullptr; }

private:
  std::vector<route> routes_;
  std::shared_ptr<provider_port> fallback_;
  int64_t fallback_context_tokens_;
  int64_t fallback_max_output_tokens_;
};

/// Node-wide admission counters (monotonic), kept by tenant actors and the chat handler and
/// read by observability. Relaxed atomics: counts, not synchronization.
struct admission_counters {
  std::atomic<uint64_t> admitted{0};
  std::atomic<uint64_t> rate_limited{0};    ///< 429 rate_limit_exceeded (rpm, tpm)
  std::atomic<uint64_t> quota_rejected{0};  ///< 429 insufficient_quota (daily budget)
  std::atomic<uint64_t> shed_tenant{0};     ///< 429 over the tenant's concurrency bound
  std::atomic<uint64_t> shed_node{0};       ///< 503 over the node's in-flight bound
  std::atomic<uint64_t> cache_hits{0};
  std::atomic<uint64_t> cache_misses{0};
  std::atomic<uint64_t> budget_cutoffs{0};  ///< streams cut off at the daily budget
};

/// Live actors and their lifecycle events (monotonic counters), read by metrics.
struct actor_counters {
  std::atomic<int64_t> tenants{0};
  std::atomic<int64_t> conversations{0};
  std::atomic<int64_t> turns{0};
  /// Cluster: stateless turns this node's tenant actors admitted for other nodes (which run
  /// them) and have not seen end. A draining node waits for them too.
  std::atomic<int64_t> remote_turns{0};
  std::atomic<uint64_t> conversation_passivations{0};
  std::atomic<uint64_t> tenant_restarts{0};
};

/// Each live tenant actor's in-flight count, published for the "busiest tenants" metric.
/// A tenant actor joins at start (one lock), updates its own atomic per request (no lock)
/// and leaves when it stops. Thread-safe.
class tenant_load_board {
public:
  std::shared_ptr<std::atomic<int64_t>> join(const std::string& tenant_id);
  void leave(const std::string& tenant_id, const std::shared_ptr<std::atomic<int64_t>>& cell);
  /// The `n` tenants with the most requests in flight (ties in any order).
  std::vector<std::pair<std::string, int64_t>> top(std::size_t n) const;

private:
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<std::atomic<int64_t>>> cells_;
};

/// Increments a live-actor gauge for as long as it exists (a member of an actor's state).
class live_count {
public:
  live_count() = default;
  live_count(const live_count&) = delete;
  live_count& operator=(const live_count&) = delete;
  ~live_count() {
    if (c_)
      c_->fetch_sub(1, std::memory_order_relaxed);
  }
  void attach(std::atomic<int64_t>* c) {
    if (c_ || !c)
      return;
    c_ = c;
    c_->fetch_add(1, std::memory_order_relaxed);
  }

private:
  std::atomic<int64_t>* c_ = nullptr;
};

/// What tenant, turn and conversation actors need from the rest of the node. Owned by
/// runtime; outlives every actor.
struct chat_services {
  persistence::store* store = nullptr;
  persistence::store_executor* executor = nullptr;
  /// Group commit of conversation messages and the usage ledger.
  persistence::turn_writer* writer = nullptr;
  std::shared_ptr<const route_table> routes;
  std::chrono::milliseconds conversation_idle{std::chrono::minutes(5)};
  int64_t tenant_max_in_flight = 2000; ///< default per-tenant bound (no max_concurrent set)
  admission_counters* counters = nullptr;
  actor_counters* actors = nullptr;
  tenant_load_board* load = nullptr;
  log::logger_ptr logger;
  /// This node in a cluster (null: a single node, which owns every tenant). The tenant
  /// manager claims each tenant in the store (store->cluster()) before it spawns its actor.
  std::shared_ptr<const cluster_identity> cluster;
  /// The node is shutting down (null: never). In a cluster the tenant actors then refuse
  /// admissions from other nodes (503, retry): those requests' clients are not ours to drain.
  const std::atomic<bool>* draining = nullptr;
};

} // namespace parley::actors
