#pragma once

#include <cstdint>

namespace parley::tenants {

/// An exact rate limiter (GCRA, the generic cell rate algorithm): `limit` units per `period`,
/// with a burst of up to `limit`. State is one timestamp, so a tenant actor can own one per
/// limit and decide in O(1) without any shared counter store.
///
/// Not thread-safe: owned by one actor.
class rate_limiter {
public:
  /// limit 0 = unlimited.
  rate_limiter(int64_t limit = 0, int64_t period_ms = 60000);

  struct decision {
    bool allowed = true;
    int64_t limit = 0;          ///< units per period (0 = unlimited)
    int64_t remaining = 0;      ///< units that could be taken right now after this decision
    int64_t reset_ms = 0;       ///< until the limiter is back to a full burst
    int64_t retry_after_ms = 0; ///< when denied: until `cost` units would be allowed
  };

  /// Takes `cost` units at `now_ms` if they fit, else takes nothing.
  decision take(int64_t now_ms, int64_t cost);
  /// The state at `now_ms` without taking anything.
  decision peek(int64_t now_ms) const;
  /// Corrects a past take by `delta` units (negative: give back), e.g. after the real token
  /// usage of a call is known. Never fails; may push the limiter into debt.
  void adjust(int64_t now_ms, int64_t delta);

  int64_t limit() const noexcept { return limit_; }

private:
  int64_t limit_;
  int64_t period_us_;
  int64_t interval_us_;   ///< period / limit
  int64_t tat_us_ = 0;    ///< theoretical arrival time
};

} // namespace parley::tenants
