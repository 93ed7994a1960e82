#pragma once

#include "parley/persistence/records.hpp"
#include "parley/persistence/result.hpp"

#include <string>
#include <vector>

/// Cluster membership and tenant ownership, kept in the database that every node of a
/// cluster shares (PostgreSQL; SQLite deployments are single-node and have none). Like every
/// store call these are synchronous and may block: call them from a thread of your own or a
/// persistence worker, never from an io or CAF scheduler thread.
///
/// Every time here is the database's clock (epoch milliseconds): a lease is granted and
/// judged by the same clock, whatever the nodes' clocks say.
namespace parley::persistence {

/// A node as the nodes table has it.
struct node_record {
  std::string id;
  int64_t incarnation = 0;
  std::string address;      ///< host:port of its cluster listener
  std::string http_address; ///< host:port of its HTTP API (informational)
  std::string status;       ///< "active" | "draining" | "left"
  millis lease_expires_at = 0;
  millis joined_at = 0;
  millis updated_at = 0;
  /// Not left, and its lease has not expired (by the database clock, when it was read).
  bool live = false;
  millis db_now = 0; ///< the database clock when it was read
};

/// A lease granted (at join) or extended (at renewal).
struct node_lease {
  int64_t incarnation = 0;
  millis expires_at = 0;
  millis db_now = 0; ///< the database clock when it was granted
};

/// Who owns a tenant's actor.
struct tenant_owner {
  std::string tenant_id;
  std::string node_id;
  int64_t incarnation = 0;
  int64_t epoch = 0;     ///< grows by one at every change of owner
  millis claimed_at = 0;
  bool live = false;     ///< the owning incarnation still holds a live lease
  std::string address;   ///< the owner's cluster address, as its node row has it ("" if none)
};

/// The answer to a claim: claimed (we own it now, at `owner.epoch`), or the live owner.
struct claim_result {
  bool claimed = false;
  tenant_owner owner;
};

class cluster_store {
public:
  virtual ~cluster_store() = default;
  /// Joins (or rejoins) as a new incarnation of `node_id`, active, with a lease of `ttl_ms`.
  /// Whatever the previous incarnation owned is free to claim from now on. conflict while a
  /// previous incarnation is still live (its lease not expired, not left): the detail names
  /// it and when its lease ends.
  virtual result<node_lease> join_node(const std::string& node_id, const std::string& address,
                                       const std::string& http_address, int64_t ttl_ms) = 0;
  /// Extends the lease of this incarnation by `ttl_ms` from now -- only while it has not
  /// expired and the node has not left: conflict otherwise (the node has lost its lease and
  /// must stop serving its tenants; it may join again as a new incarnation).
  virtual result<node_lease> renew_lease(const std::string& node_id, int64_t incarnation,
                                         int64_t ttl_ms) = 0;
  /// Marks this incarnation "draining" (no new tenants are placed on it) or "left" (its
  /// lease ends now: its tenants are free to claim). conflict when the incarnation is stale.
  virtual status set_node_status(const std::string& node_id, int64_t incarnation,
                                 const std::string& to) = 0;
  /// Every node row, live ones and those that left or expired, ordered by id.
  virtual result<std::vector<node_record>> list_nodes() = 0;
  /// Claims `tenant_id` for this incarnation, which must hold a live, active lease. Succeeds
  /// when nobody owns the tenant, when we own it already (same epoch), or when its owner's
  /// incarnation no longer holds a live lease (a new epoch). Otherwise answers the live owner
  /// (claimed = false) -- also to a claimer without a lease, since that owner serves the
  /// tenant. conflict when the claimer holds no live, active lease and no other live
  /// incarnation owns the tenant: a dead owner is never answered.
  virtual result<claim_result> claim_tenant(const std::string& tenant_id,
                                            const std::string& node_id,
                                            int64_t incarnation) = 0;
  /// The recorded owner of a tenant; not_found when nobody ever claimed it.
  virtual result<tenant_owner> get_owner(const std::string& tenant_id) = 0;
  /// How many tenants each live incarnation owns: (node id, count), ordered by node id.
  virtual result<std::vector<std::pair<std::string, int64_t>>> owned_counts() = 0;
};

} // namespace parley::persistence
