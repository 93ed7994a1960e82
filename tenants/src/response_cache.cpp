#include "parley/tenants/response_cache.hpp"

#include <openssl/sha.h>

namespace parley::tenants {

void response_cache::erase(std::list<entry>::iterator it) {
  bytes_ -= it->bytes;
  index_.erase(it->key);
  lru_.erase(it);
}

const cached_completion* response_cache::find(const std::string& key, int64_t now_ms) {
  auto it = index_.find(key);
  if (it == index_.end())
    return nullptr;
  if (now_ms >= it->second->expires_ms) {
    erase(it->second);
    return nullptr;
  }
  lru_.splice(lru_.begin(), lru_, it->second);
  return &it->second->value;
}

void response_cache::put(const std::string& key, cached_completion value, int64_t now_ms,
                         int64_t ttl_ms) {
  std::size_t size = key.size() + value.finish_reason.size() + 64;
  for (auto& d : value.deltas)
    size += d.size() + 32;
  if (size > max_bytes_)
    return;
  if (auto it = index_.find(key); it != index_.end())
    erase(it->second);
  lru_.push_front({key, std::move(value), now_ms + ttl_ms, size});
  index_.emplace(key, lru_.begin());
  bytes_ += size;
  while (bytes_ > max_bytes_ && !lru_.empty())
    erase(std::prev(lru_.end()));
}

void response_cache::clear() {
  lru_.clear();
  index_.clear();
  bytes_ = 0;
}

std::string cache_key(const std::string& canonical_request) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(canonical_request.data()), canonical_request.size(), md);
  static constexpr char hex[] = "0123456789abcdef";
  std::string out(2 * SHA256_DIGEST_LENGTH, '0');
  for (int i = 0; i < SHA256_DIGEST_LENGTH; ++i) {
    out[static_cast<std::size_t>(2 * i)] = hex[md[i] >> 4];
    out[static_cast<std::size_t>(2 * i + 1)] = hex[md[i] & 15];
  }
  return out;
}

} // namespace parley::tenants
