#include "parley/tenants/key_cache.hpp"

#include "parley/tenants/api_key.hpp"

#include <algorithm>

namespace parley::tenants {

key_cache::key_cache(std::size_t capacity, int64_t ttl_ms)
  : capacity_(std::max<std::size_t>(capacity, 1)), ttl_ms_(ttl_ms) {}

std::shared_ptr<const key_principal> key_cache::find(const std::string& key_id, int64_t now_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(key_id);
  if (it == index_.end())
    return nullptr;
  if (now_ms - it->second->loaded_at >= ttl_ms_) {
    erase(it->second);
    return nullptr;
  }
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->principal;
}

void key_cache::put(const std::string& key_id, std::shared_ptr<const key_principal> p,
                    int64_t now_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  insert(key_id, std::move(p), now_ms);
}

bool key_cache::put_if_unchanged(const std::string& key_id,
                                 std::shared_ptr<const key_principal> p, int64_t now_ms,
                                 uint64_t read_at) {
  std::lock_guard<std::mutex> lock(mu_);
  if (generation_ != read_at)
    return false;
  insert(key_id, std::move(p), now_ms);
  return true;
}

uint64_t key_cache::generation() const {
  std::lock_guard<std::mutex> lock(mu_);
  return generation_;
}

void key_cache::insert(const std::string& key_id, std::shared_ptr<const key_principal> p,
                       int64_t now_ms) {
  // Replacing drops the old entry first: the key's tenant is the new principal's.
  if (auto it = index_.find(key_id); it != index_.end())
    erase(it->second);
  std::string tenant_id = p && p->found ? p->key.tenant_id : std::string();
  lru_.push_front(entry{key_id, tenant_id, std::move(p), now_ms});
  index_.emplace(key_id, lru_.begin());
  if (!tenant_id.empty())
    by_tenant_[tenant_id].insert(key_id);
  while (lru_.size() > capacity_)
    erase(std::prev(lru_.end()));
}

void key_cache::erase(iterator it) {
  if (!it->tenant_id.empty()) {
    auto t = by_tenant_.find(it->tenant_id);
    if (t != by_tenant_.end()) {
      t->second.erase(it->key_id);
      if (t->second.empty())
        by_tenant_.erase(t);
    }
  }
  index_.erase(it->key_id);
  lru_.erase(it);
}

void key_cache::invalidate_key(const std::string& key_id) {
  std::lock_guard<std::mutex> lock(mu_);
  ++generation_;
  if (auto it = index_.find(key_id); it != index_.end())
    erase(it->second);
}

void key_cache::invalidate_tenant(const std::string& tenant_id) {
  std::lock_guard<std::mutex> lock(mu_);
  ++generation_;
  auto t = by_tenant_.find(tenant_id);
  if (t == by_tenant_.end())
    return;
  auto keys = std::move(t->second);
  by_tenant_.erase(t);
  for (auto& key_id : keys)
    if (auto it = index_.find(key_id); it != index_.end()) {
      it->second->tenant_id.clear(); // its tenant's set is gone already
      erase(it->second);
    }
}

void key_cache::clear() {
  std::lock_guard<std::mutex> lock(mu_);
  ++generation_;
  lru_.clear();
  index_.clear();
  by_tenant_.clear();
}

std::size_t key_cache::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lru_.size();
}

auth_outcome authenticate(const key_principal& p, const std::string& secret,
                          const std::string& pepper, int64_t now_ms,
                          const std::string& required_scope) {
  if (!p.found)
    return auth_outcome::invalid_key;
  auto& k = p.key;
  auto presented = hash_secret(pepper, secret);
  bool current = digest_equals(presented, k.secret_hash);
  bool previous = k.previous_secret_hash && k.previous_valid_until &&
                  *k.previous_valid_until > now_ms &&
                  digest_equals(presented, *k.previous_secret_hash);
  if (!current && !previous)
    return auth_outcome::invalid_key;
  if (k.revoked_at && *k.revoked_at <= now_ms)
    return auth_outcome::invalid_key;
  if (k.expires_at && *k.expires_at <= now_ms)
    return auth_outcome::invalid_key;
  if (p.tenant_status == "deleted")
    return auth_outcome::invalid_key;
  if (p.tenant_status != "active")
    return auth_outcome::tenant_inactive;
  if (!required_scope.empty() &&
      std::find(k.scopes.begin(), k.scopes.end(), required_scope) == k.scopes.end())
    return auth_outcome::missing_scope;
  return auth_outcome::ok;
}

failure_throttle::failure_throttle(int per_minute, std::size_t max_tracked)
  : per_minute_(per_minute), max_tracked_(max_tracked) {}

std::string failure_throttle::key_of(const std::string& address, const std::string& key_id) {
  std::string k;
  k.reserve(address.size() + 1 + key_id.size());
  k += address;
  k += '\n';
  k += key_id;
  return k;
}

bool failure_throttle::blocked(const std::string& address, const std::string& key_id,
                               int64_t now_ms, int64_t& retry_after_s) {
  if (per_minute_ <= 0)
    return false;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = windows_.find(key_of(address, key_id));
  if (it == windows_.end() || now_ms - it->second.start_ms >= 60000)
    return false;
  if (it->second.count < per_minute_)
    return false;
  retry_after_s = std::max<int64_t>(1, (it->second.start_ms + 60000 - now_ms + 999) / 1000);
  return true;
}

void failure_throttle::record_failure(const std::string& address, const std::string& key_id,
                                      int64_t now_ms) {
  if (per_minute_ <= 0)
    return;
  std::lock_guard<std::mutex> lock(mu_);
  // Expired windows sit at the front: drop them (amortized O(1) per call).
  while (!order_.empty()) {
    auto old = windows_.find(order_.front());
    if (old == windows_.end() || now_ms - old->second.start_ms < 60000)
      break;
    windows_.erase(old);
    order_.pop_front();
  }
  auto key = key_of(address, key_id);
  auto [it, fresh] = windows_.try_emplace(key, window{now_ms, 0, {}});
  auto& w = it->second;
  if (fresh) {
    w.pos = order_.insert(order_.end(), key);
  } else if (now_ms - w.start_ms >= 60000) {
    w.start_ms = now_ms; // a new window: it is now the youngest
    w.count = 0;
    order_.splice(order_.end(), order_, w.pos);
  }
  ++w.count;
  if (windows_.size() > max_tracked_) {
    windows_.erase(order_.front());
    order_.pop_front();
  }
}

std::size_t failure_throttle::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return windows_.size();
}

} // namespace parley::tenants
