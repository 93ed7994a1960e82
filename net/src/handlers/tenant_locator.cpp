#include "parley/net/tenant_locator.hpp"

#include <mutex>

namespace parley::net {

actors::tenant_actor tenant_locator::cached(const std::string& tenant_id) const {
  caf::actor_addr addr;
  {
    std::shared_lock<std::shared_mutex> lock(mu_);
    auto it = cache_.find(tenant_id);
    if (it == cache_.end())
      return {};
    addr = it->second;
  }
  return caf::actor_cast<actors::tenant_actor>(addr);
}

void tenant_locator::remember(const std::string& tenant_id, const caf::actor_addr& tenant) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  cache_[tenant_id] = tenant;
}

void tenant_locator::forget(const std::string& tenant_id) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  cache_.erase(tenant_id);
}

std::size_t tenant_locator::cached_count() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return cache_.size();
}

} // namespace parley::net
