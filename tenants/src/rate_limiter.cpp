#include "parley/tenants/rate_limiter.hpp"

#include <algorithm>

namespace parley::tenants {

rate_limiter::rate_limiter(int64_t limit, int64_t period_ms)
  : limit_(limit),
    period_us_(period_ms * 1000),
    interval_us_(limit > 0 ? std::max<int64_t>(1, period_ms * 1000 / limit) : 0) {}

rate_limiter::decision rate_limiter::peek(int64_t now_ms) const {
  decision d;
  d.limit = limit_;
  if (limit_ <= 0)
    return d;
  auto now = now_ms * 1000;
  auto backlog = std::max<int64_t>(0, tat_us_ - now); // units still "in flight", as time
  d.remaining = std::max<int64_t>(0, (period_us_ - backlog) / interval_us_);
  d.reset_ms = (backlog + 999) / 1000;
  return d;
}

rate_limiter::decision rate_limiter::take(int64_t now_ms, int64_t cost) {
  if (limit_ <= 0)
    return peek(now_ms);
  auto now = now_ms * 1000;
  auto new_tat = std::max(tat_us_, now) + cost * interval_us_;
  // Allowed while the backlog after this take fits in one period (the burst).
  if (new_tat - now <= period_us_) {
    tat_us_ = new_tat;
    return peek(now_ms);
  }
  auto d = peek(now_ms);
  d.allowed = false;
  d.retry_after_ms = (new_tat - period_us_ - now + 999) / 1000;
  return d;
}

void rate_limiter::adjust(int64_t now_ms, int64_t delta) {
  if (limit_ <= 0 || delta == 0)
    return;
  auto now = now_ms * 1000;
  // Giving back never goes below "empty" (now); taking more may go into debt.
  tat_us_ = std::max(std::max(tat_us_, now) + delta * interval_us_, now);
}

} // namespace parley::tenants
