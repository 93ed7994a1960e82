#pragma once

#include "parley/config/logging.hpp"
#include "parley/net/middleware.hpp"
#include "parley/persistence/executor.hpp"
#include "parley/persistence/store.hpp"
#include "parley/tenants/key_cache.hpp"
#include "parley/tenants/last_used.hpp"

#include <memory>
#include <string>

namespace parley::net {

/// What authentication needs. Everything is owned by runtime and outlives the server.
struct auth_deps {
  persistence::store& store;
  persistence::store_executor& executor;
  tenants::key_cache& keys;
  tenants::failure_throttle& throttle;
  tenants::last_used_recorder& last_used;
  std::string pepper;     ///< HMAC key of API key secrets
  std::string admin_key;  ///< bearer credential of admin routes
  std::string metrics_key; ///< bearer credential of GET /metrics only ("" = none)
  log::logger_ptr logger;
};

/// Authentication and authorization of the matched route (ctx().needs, set by routing):
/// admin routes need the admin key; the metrics route the metrics key or the admin key;
/// tenant routes a tenant API key (`Authorization: Bearer prly_<id>_<secret>`) with the
/// route's scope, checked against the in-memory key cache and, on a miss, the store (off the
/// io thread; the chain resumes when the lookup returns). Unknown, wrong, revoked or expired
/// keys and deleted tenants answer 401; a suspended tenant or a missing scope 403. Repeated
/// failures from one client address answer 429 for the rest of the minute. Requests that
/// matched no route pass through to the router's 404/405.
std::unique_ptr<middleware> make_auth(auth_deps deps);

} // namespace parley::net
