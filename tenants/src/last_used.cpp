#include "parley/tenants/last_used.hpp"

namespace parley::tenants {

void last_used_recorder::record(const std::string& key_id, persistence::millis at) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& t = pending_[key_id];
  if (at > t)
    t = at;
}

std::vector<std::pair<std::string, persistence::millis>> last_used_recorder::take() {
  std::unordered_map<std::string, persistence::millis> batch;
  {
    std::lock_guard<std::mutex> lock(mu_);
    batch.swap(pending_);
  }
  return {batch.begin(), batch.end()};
}

} // namespace parley::tenants
