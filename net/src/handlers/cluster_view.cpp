#include "parley/net/cluster_view.hpp"

#include "parley/actors/cluster.hpp"

namespace parley::net {

using json = nlohmann::json;

persistence::result<json> cluster_view(persistence::cluster_store& cluster,
                                       const std::string& tenant_id) {
  auto nodes = cluster.list_nodes();
  if (!nodes.ok())
    return nodes.error();
  auto counts = cluster.owned_counts();
  if (!counts.ok())
    return counts.error();
  std::vector<actors::cluster_member> live;
  auto list = json::array();
  for (auto& n : *nodes) {
    int64_t owned = 0;
    for (auto& [id, c] : *counts)
      if (id == n.id && n.live)
        owned = c;
    if (n.live)
      live.push_back({n.id, n.incarnation, "", 0, n.status == "active"});
    list.push_back({{"id", n.id},
                    {"incarnation", n.incarnation},
                    {"address", n.address},
                    {"http_address", n.http_address},
                    {"status", n.live ? n.status : (n.status == "left" ? "left" : "expired")},
                    {"live", n.live},
                    {"lease_age_ms", n.db_now - n.updated_at},
                    {"lease_remaining_ms", n.live ? n.lease_expires_at - n.db_now : 0},
                    {"joined_at", n.joined_at / 1000},
                    {"tenants", owned}});
  }
  json out{{"object", "cluster"}, {"enabled", true}, {"nodes", std::move(list)}};
  if (!tenant_id.empty()) {
    json t{{"id", tenant_id}, {"placed_on", actors::place(tenant_id, live)}};
    auto owner = cluster.get_owner(tenant_id);
    if (owner.ok())
      t.update({{"owner", owner->node_id},
                {"owner_incarnation", owner->incarnation},
                {"epoch", owner->epoch},
                {"owner_live", owner->live}});
    else if (owner.code() == persistence::persistence_errc::not_found)
      t["owner"] = nullptr;
    else
      return owner.error();
    out["tenant"] = std::move(t);
  }
  return out;
}

} // namespace parley::net
