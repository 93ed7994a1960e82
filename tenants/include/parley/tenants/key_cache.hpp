#pragma once

#include "parley/persistence/records.hpp"
#include "parley/tenants/tenant_config.hpp"

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>

namespace parley::tenants {

/// What authentication needs to know about a key id: the key row and its tenant. `found` is
/// false for a key id the store does not know (cached briefly, so guessing costs no queries).
struct key_principal {
  bool found = false;
  persistence::api_key_record key;
  std::string tenant_status;
  std::string tenant_slug;
  tenant_config config;
  std::string config_json; ///< `config` as stored JSON text (what chat requests carry)
  /// The tenant row's updated_at when it was read: its config's version. Nodes read a tenant
  /// at different times; its actor keeps the newest config any request brought.
  int64_t config_version = 0;
};

/// A bounded in-memory LRU of key principals with a TTL: the hot path of authentication
/// never waits on the database while the cache is warm. Revocation, rotation and tenant
/// changes invalidate entries at once: in this process from the admin handlers, and on every
/// node of a cluster from runtime's invalidation listener (docs/cluster.md).
///
/// A lookup that fills the cache races with invalidations: it may read a row just before a
/// change commits and insert it just after the change was invalidated, which would keep the
/// old row for a whole TTL. So a filler takes generation() before it reads the store and
/// inserts with put_if_unchanged(), which refuses when anything was invalidated meanwhile.
///
/// Thread safety: every member is safe to call from any thread (one mutex; O(1) work, but
/// invalidate_tenant is O(keys of that tenant in the cache)).
class key_cache {
public:
  key_cache(std::size_t capacity, int64_t ttl_ms);

  /// The cached principal for `key_id`, or nullptr when absent or older than the TTL.
  std::shared_ptr<const key_principal> find(const std::string& key_id, int64_t now_ms);
  /// Inserts or replaces; evicts the least recently used entry beyond capacity.
  void put(const std::string& key_id, std::shared_ptr<const key_principal> p, int64_t now_ms);
  /// put(), unless an invalidation happened since generation() answered `read_at` (then the
  /// principal may predate it: nothing is stored). True when stored.
  bool put_if_unchanged(const std::string& key_id, std::shared_ptr<const key_principal> p,
                        int64_t now_ms, uint64_t read_at);
  /// Counts invalidations (of any key or tenant, cached or not): take it before reading the
  /// store for put_if_unchanged().
  uint64_t generation() const;
  void invalidate_key(const std::string& key_id);
  /// Drops every entry of a tenant (status or config changed).
  void invalidate_tenant(const std::string& tenant_id);
  /// Drops every entry (more changes than can be told apart).
  void clear();
  std::size_t size() const;

private:
  struct entry {
    std::string key_id;
    std::string tenant_id; ///< "" for a key id the store does not know
    std::shared_ptr<const key_principal> principal;
    int64_t loaded_at;
  };
  using iterator = std::list<entry>::iterator;
  void insert(const std::string& key_id, std::shared_ptr<const key_principal> p, int64_t now_ms);
  void erase(iterator it);

  mutable std::mutex mu_;
  std::size_t capacity_;
  int64_t ttl_ms_;
  uint64_t generation_ = 0;
  std::list<entry> lru_; // front = most recent
  std::unordered_map<std::string, iterator> index_;
  std::unordered_map<std::string, std::unordered_set<std::string>> by_tenant_; ///< key ids
};

/// The outcome of checking a presented secret against a principal.
enum class auth_outcome {
  ok,
  invalid_key,     ///< unknown, wrong secret, revoked, expired, or tenant deleted -> 401
  tenant_inactive, ///< tenant suspended -> 403
  missing_scope,   ///< key lacks the scope the route needs -> 403
};

/// Checks `secret` (constant-time HMAC comparison, rotation grace honoured), expiry,
/// revocation, tenant status and `required_scope` ("" = any). Pure function.
auth_outcome authenticate(const key_principal& p, const std::string& secret,
                          const std::string& pepper, int64_t now_ms,
                          const std::string& required_scope);

/// Counts failed authentications per (client address, key id) in one-minute windows, to slow
/// down key guessing. Failures that name no existing key (malformed or unknown key ids, a
/// wrong admin credential) count under the address with key id "". Bounded memory: beyond
/// `max_tracked` entries the one with the oldest window is dropped, in O(1) (windows are kept
/// in the order they started). Thread-safe.
class failure_throttle {
public:
  failure_throttle(int per_minute, std::size_t max_tracked = 65536);
  /// True when (`address`, `key_id`) is over its budget; `retry_after_s` receives the
  /// seconds to wait.
  bool blocked(const std::string& address, const std::string& key_id, int64_t now_ms,
               int64_t& retry_after_s);
  void record_failure(const std::string& address, const std::string& key_id, int64_t now_ms);
  /// Entries tracked now (for tests).
  std::size_t size() const;

private:
  struct window {
    int64_t start_ms = 0;
    int count = 0;
    std::list<std::string>::iterator pos; ///< its place in order_
  };
  static std::string key_of(const std::string& address, const std::string& key_id);
  mutable std::mutex mu_;
  int per_minute_;
  std::size_t max_tracked_;
  std::unordered_map<std::string, window> windows_;
  std::list<std::string> order_; ///< keys by window start, oldest first
};

} // namespace parley::tenants
