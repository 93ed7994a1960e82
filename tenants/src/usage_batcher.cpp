#include "parley/tenants/usage_batcher.hpp"

namespace parley::tenants {

void usage_batcher::add(const persistence::usage_delta& d) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& sum = pending_[key{d.tenant_id, d.key_id, d.model, d.period_start}];
  if (sum.tenant_id.empty()) {
    sum = d;
    return;
  }
  sum.requests += d.requests;
  sum.prompt_tokens += d.prompt_tokens;
  sum.completion_tokens += d.completion_tokens;
  sum.errors += d.errors;
}

std::vector<persistence::usage_delta> usage_batcher::take() {
  std::map<key, persistence::usage_delta> batch;
  {
    std::lock_guard<std::mutex> lock(mu_);
    batch.swap(pending_);
  }
  std::vector<persistence::usage_delta> out;
  out.reserve(batch.size());
  for (auto& [k, v] : batch)
    out.push_back(std::move(v));
  return out;
}

void usage_batcher::restore(const std::vector<persistence::usage_delta>& batch) {
  for (auto& d : batch)
    add(d);
}

} // namespace parley::tenants
