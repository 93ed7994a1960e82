#pragma once

#include "parley/net/tenant_locator.hpp"

#include "parley/actors/protocol.hpp"
#include "parley/actors/services.hpp"
#include "parley/net/router.hpp"
#include "parley/persistence/cluster_store.hpp"
#include "parley/persistence/executor.hpp"
#include "parley/tenants/admin_ops.hpp"
#include "parley/tenants/key_cache.hpp"

#include <caf/actor_system.hpp>

#include <string>
#include <vector>

namespace parley::net {

/// What the admin and model routes need; owned by runtime, outlives the server.
struct admin_deps {
  tenants::admin_ops& ops;
  persistence::store_executor& executor;
  tenants::key_cache& keys;
  caf::actor_system* sys = nullptr;          ///< for routes that talk to tenant actors
  std::shared_ptr<tenant_locator> tenants;   ///< finds tenant actors (runtime owns it)
  const actors::admission_counters* counters = nullptr; ///< for GET /admin/v1/stats
  /// GET /admin/v1/cluster: the store's membership tables (null: not a cluster) and this
  /// node's id in them.
  persistence::cluster_store* cluster = nullptr;
  std::string node_id;
};

/// Adds the admin API under /admin/v1 (tenants, keys, usage, audit). Authentication is the
/// auth middleware's job; handlers only parse, hand off to admin_ops on a persistence worker,
/// invalidate caches after mutations, and answer.
void add_admin_routes(router& r, admin_deps deps);

/// A model this node serves.
struct model_info {
  std::string id;
  std::string owned_by;
  int64_t created = 0; ///< Unix seconds
};

/// Adds GET /v1/models (the node's models that the caller's tenant may use, in OpenAI's list
/// shape) and GET /v1/models/{model} (one of them, else 404 model_not_found). `models` is
/// fixed at start-up.
void add_model_routes(router& r, std::vector<model_info> models);

} // namespace parley::net
