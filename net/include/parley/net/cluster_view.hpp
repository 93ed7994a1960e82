#pragma once

#include "parley/persistence/cluster_store.hpp"

#include <nlohmann/json.hpp>

#include <string>

/// The cluster as the shared database sees it, as one JSON document: what
/// GET /admin/v1/cluster answers and `parley admin cluster --json` prints (one function, so
/// that the two never drift apart).
namespace parley::net {

/// `{"object":"cluster","enabled":true,"nodes":[...]}`: every node row (live or not) with its
/// incarnation, addresses, status ("active", "draining", "left", or "expired" for a lease that
/// ran out), live flag, lease age and remaining time (database clock) and how many tenants it
/// owns. With a `tenant_id`, also "tenant": its recorded owner (null when never claimed) and
/// where placement over the live active nodes puts it now. Blocking (store calls): call it
/// from a persistence worker or a thread of your own. A store error when the tables cannot be
/// read.
persistence::result<nlohmann::json> cluster_view(persistence::cluster_store& cluster,
                                                 const std::string& tenant_id);

} // namespace parley::net
