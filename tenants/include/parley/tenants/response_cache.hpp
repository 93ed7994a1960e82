#pragma once

#include <cstdint>
#include <list>
#include <string>
#include <unordered_map>
#include <vector>

namespace parley::tenants {

/// A cached completion: the deltas as they were streamed (so a cached stream replays the same
/// chunks), how it ended and its usage.
struct cached_completion {
  std::vector<std::string> deltas;
  std::string finish_reason;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

/// One tenant's response cache: exact match on a request key, a TTL per entry, and an LRU
/// bound on the bytes held. Owned by the tenant actor (not thread-safe).
class response_cache {
public:
  explicit response_cache(std::size_t max_bytes = 8u << 20) : max_bytes_(max_bytes) {}

  /// The entry for `key` if present and younger than its TTL (it becomes most recent).
  const cached_completion* find(const std::string& key, int64_t now_ms);
  /// Stores an entry that expires `ttl_ms` from `now_ms`; evicts least recently used entries
  /// beyond the byte bound (an entry larger than the bound is not stored).
  void put(const std::string& key, cached_completion value, int64_t now_ms, int64_t ttl_ms);
  void clear();
  std::size_t bytes() const noexcept { return bytes_; }
  std::size_t size() const noexcept { return index_.size(); }

private:
  struct entry {
    std::string key;
    cached_completion value;
    int64_t expires_ms;
    std::size_t bytes;
  };
  void erase(std::list<entry>::iterator it);

  std::size_t max_bytes_;
  std::size_t bytes_ = 0;
  std::list<entry> lru_; // front = most recent
  std::unordered_map<std::string, std::list<entry>::iterator> index_;
};

/// The cache key of a request: SHA-256 (hex) of the canonical JSON of everything that changes
/// the output -- model, messages, max tokens and the other sampling parameters.
std::string cache_key(const std::string& canonical_request);

} // namespace parley::tenants
