// Rendezvous placement of tenants over the cluster's active members.
#include "parley/actors/cluster.hpp"

namespace parley::actors {
namespace {

/// FNV-1a over both ids (with a separator that neither may contain), then splitmix64's
/// finalizer: stable across builds and platforms, which std::hash is not, and well mixed.
uint64_t weight(const std::string& node_id, const std::string& tenant_id) {
  uint64_t h = 1469598103934665603ULL;
  auto mix = [&h](const std::string& s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 1099511628211ULL;
    }
  };
  mix(node_id);
  h ^= 0xff;
  h *= 1099511628211ULL;
  mix(tenant_id);
  h += 0x9e3779b97f4a7c15ULL;
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
  return h ^ (h >> 31);
}

} // namespace

std::string place(const std::string& tenant_id, const std::vector<cluster_member>& members) {
  const cluster_member* best = nullptr;
  uint64_t best_w = 0;
  for (auto& m : members) {
    if (!m.active)
      continue;
    auto w = weight(m.node_id, tenant_id);
    // Ties (vanishingly rare) go to the smaller id, so that every node agrees.
    if (!best || w > best_w || (w == best_w && m.node_id < best->node_id)) {
      best = &m;
      best_w = w;
    }
  }
  return best ? best->node_id : std::string();
}

} // namespace parley::actors
