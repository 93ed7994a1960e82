// The busiest-tenants board: each tenant actor's in-flight count, for metrics.
#include "parley/actors/services.hpp"

#include <algorithm>

namespace parley::actors {

std::shared_ptr<std::atomic<int64_t>> tenant_load_board::join(const std::string& tenant_id) {
  auto cell = std::make_shared<std::atomic<int64_t>>(0);
  std::lock_guard<std::mutex> lock(mu_);
  cells_[tenant_id] = cell; // a restarted tenant replaces its old cell
  return cell;
}

void tenant_load_board::leave(const std::string& tenant_id,
                              const std::shared_ptr<std::atomic<int64_t>>& cell) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = cells_.find(tenant_id);
  if (it != cells_.end() && it->second == cell)
    cells_.erase(it);
}

std::vector<std::pair<std::string, int64_t>> tenant_load_board::top(std::size_t n) const {
  std::vector<std::pair<std::string, int64_t>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    all.reserve(cells_.size());
    for (auto& [id, c] : cells_)
      all.emplace_back(id, c->load(std::memory_order_relaxed));
  }
  auto k = std::min(n, all.size());
  std::partial_sort(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(k), all.end(),
                    [](auto& a, auto& b) { return a.second > b.second; });
  all.resize(k);
  return all;
}

} // namespace parley::actors
