#include "parley/tenants/token_budget.hpp"

#include <algorithm>

namespace parley::tenants {

void token_budget::roll(int64_t now_ms) {
  auto day = now_ms / 86400000;
  if (day != day_) {
    // A new day: spending starts afresh; reservations in flight stay reserved.
    day_ = day;
    spent_ = 0;
  }
}

int64_t token_budget::remaining(int64_t now_ms) {
  if (limit_ <= 0)
    return 0;
  roll(now_ms);
  return std::max<int64_t>(0, limit_ - spent_ - reserved_);
}

token_budget::grant token_budget::reserve(int64_t now_ms, int64_t want, int64_t need) {
  grant g;
  if (limit_ <= 0)
    return g;
  auto left = remaining(now_ms);
  if (left < need || left <= 0) {
    g.allowed = false;
    g.remaining = left;
    g.retry_after_ms = utc_day_start(now_ms) + 86400000 - now_ms;
    return g;
  }
  g.reserved = std::min(want, left);
  reserved_ += g.reserved;
  g.remaining = left - g.reserved;
  return g;
}

void token_budget::settle(int64_t now_ms, int64_t reserved, int64_t actual) {
  if (limit_ <= 0)
    return;
  roll(now_ms);
  reserved_ = std::max<int64_t>(0, reserved_ - reserved);
  spent_ += actual;
}

void token_budget::set_spent(int64_t now_ms, int64_t spent) {
  roll(now_ms);
  spent_ = spent;
}

} // namespace parley::tenants
