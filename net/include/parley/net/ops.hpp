#pragma once

#include "parley/net/router.hpp"

#include <nlohmann/json_fwd.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace parley::net {

/// The state of one dependency, as /readyz reports it.
struct dependency_status {
  std::string name;    ///< "store", "migrations", "node"
  bool ok = false;
  std::string detail;  ///< short, client-safe ("reachable", "draining", "2 pending")
};

/// Tells whether this node may take traffic. Implemented by runtime.
class readiness_source {
public:
  virtual ~readiness_source() = default;
  /// Evaluates every dependency without blocking the caller and calls `done` exactly once,
  /// from any thread. Ready means every entry is ok.
  virtual void check(std::function<void(std::vector<dependency_status>)> done) = 0;
  /// Dependencies that cost nothing to evaluate (the node's own draining flag): asked on every
  /// call, never cached, listed before check()'s.
  virtual std::vector<dependency_status> instant() { return {}; }
};

/// What GET /version reports.
struct build_info {
  std::string version;
  std::string commit;
  std::string build_type;
};

/// Adds GET /healthz (alive: always 200 while the process serves HTTP), GET /readyz (200 when
/// every dependency is ok, else 503; evaluated at most once a second, whoever asks) and GET
/// /version. Anonymous callers get only `{"status":...}`; with the admin credential /readyz
/// lists every dependency and, if `upstreams` is set, the upstream deployments' breaker states
/// (an open breaker does not make the node unready: its other routes and fallbacks still
/// serve), and /version the version, commit and build type.
void add_ops_routes(router& r, std::shared_ptr<readiness_source> readiness, build_info info,
                    std::function<nlohmann::json()> upstreams = {});

} // namespace parley::net
