#include "parley/net/tenant_lookup.hpp"

#include <shared_mutex>
#include <unordered_map>

namespace parley::net::detail {
namespace {

std::shared_mutex mu;
std::unordered_map<std::string, caf::actor_addr>& table() {
  static std::unordered_map<std::string, caf::actor_addr> t;
  return t;
}

/// The directory's control block identifies its actor system (several run in one test process).
std::string key_of(const actors::tenant_directory_actor& directory, const std::string& tenant_id) {
  auto* block = caf::actor_cast<caf::actor_control_block*>(directory);
  std::string key(reinterpret_cast<const char*>(&block), sizeof block);
  key += tenant_id;
  return key;
}

} // namespace

caf::actor_addr cached_tenant(const actors::tenant_directory_actor& directory, const std::string& tenant_id) {
  auto key = key_of(directory, tenant_id);
  std::shared_lock<std::shared_mutex> lock(mu);
  auto it = table().find(key);
  return it == table().end() ? caf::actor_addr{} : it->second;
}

void cache_tenant(const actors::tenant_directory_actor& directory, const std::string& tenant_id,
                  const caf::actor_addr& tenant) {
  auto key = key_of(directory, tenant_id);
  std::unique_lock<std::shared_mutex> lock(mu);
  table()[key] = tenant;
}

void forget_tenant(const actors::tenant_directory_actor& directory, const std::string& tenant_id) {
  auto key = key_of(directory, tenant_id);
  std::unique_lock<std::shared_mutex> lock(mu);
  table().erase(key);
}

} // namespace parley::net::detail
