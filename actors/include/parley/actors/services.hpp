#pragma once

#include "parley/actors/provider.hpp"
#include "parley/config/logging.hpp"
#include "parley/persistence/executor.hpp"
#include "parley/persistence/message_writer.hpp"
#include "parley/persistence/store.hpp"
#include "parley/tenants/usage_batcher.hpp"

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace parley::actors {

/// The models a node serves. Immutable after start-up; shared by every tenant actor.
class route_table {
public:
  explicit route_table(std::vector<route> routes, std::shared_ptr<provider_port> fallback = {},
                       int64_t fallback_context_tokens = 8192);
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
};

/// What tenant, turn and conversation actors need from the rest of the node. Owned by
/// runtime; outlives every actor.
struct chat_services {
  persistence::store* store = nullptr;
  persistence::store_executor* executor = nullptr;
  persistence::message_writer* writer = nullptr; ///< group commit of conversation messages
  tenants::usage_batcher* usage = nullptr;
  std::shared_ptr<const route_table> routes;
  std::chrono::milliseconds conversation_idle{std::chrono::minutes(5)};
  int64_t tenant_max_in_flight = 2000; ///< default per-tenant bound (no max_concurrent set)
  log::logger_ptr logger;
};

} // namespace parley::actors
