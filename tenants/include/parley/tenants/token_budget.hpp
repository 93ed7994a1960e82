#pragma once

#include <cstdint>

namespace parley::tenants {

/// A daily token budget (UTC days): reserve before a call, settle after. A reservation is the
/// most that call may spend (the caller cuts the call off there), so concurrent calls can
/// never overspend the budget by more than the prompt estimate of one of them.
///
/// Not thread-safe: owned by one actor.
class token_budget {
public:
  /// limit 0 = unlimited.
  explicit token_budget(int64_t limit_per_day = 0) : limit_(limit_per_day) {}

  struct grant {
    bool allowed = true;
    int64_t reserved = 0;       ///< tokens reserved (0 when unlimited)
    int64_t remaining = 0;      ///< left after this reservation
    int64_t retry_after_ms = 0; ///< when refused: until the next UTC day
  };

  /// Reserves up to `want` tokens at `now_ms`; refused when fewer than `need` are left.
  grant reserve(int64_t now_ms, int64_t want, int64_t need);
  /// Ends a reservation: `actual` tokens were spent (counted on the reservation's day).
  void settle(int64_t now_ms, int64_t reserved, int64_t actual);
  /// Sets what was already spent today (from the usage table at start-up).
  void set_spent(int64_t now_ms, int64_t spent);
  int64_t remaining(int64_t now_ms);
  int64_t limit() const noexcept { return limit_; }

private:
  void roll(int64_t now_ms);
  int64_t limit_;
  int64_t day_ = -1;
  int64_t spent_ = 0;
  int64_t reserved_ = 0;
};

/// Start of the UTC day containing `now_ms`, in epoch milliseconds.
inline int64_t utc_day_start(int64_t now_ms) { return now_ms / 86400000 * 86400000; }

} // namespace parley::tenants
