#include "parley/tenants/rate_limiter.hpp"

#include <catch2/catch.hpp>

using parley::tenants::rate_limiter;

TEST_CASE("a rate limiter allows exactly its limit in a burst", "[tenants][unit]") {
  for (int64_t limit : {1, 7, 10, 60, 1000}) {
    rate_limiter r(limit, 60000);
    int allowed = 0;
    for (int i = 0; i < limit * 2; ++i)
      allowed += r.take(1000, 1).allowed ? 1 : 0;
    INFO("limit " << limit);
    CHECK(allowed == limit);
  }
}

TEST_CASE("a rate limiter refills at limit per period and says when to retry", "[tenants][unit]") {
  rate_limiter r(10, 60000); // one unit every 6 s
  for (int i = 0; i < 10; ++i)
    REQUIRE(r.take(0, 1).allowed);
  auto denied = r.take(0, 1);
  CHECK_FALSE(denied.allowed);
  CHECK(denied.remaining == 0);
  CHECK(denied.retry_after_ms == 6000);
  CHECK(denied.reset_ms == 60000);
  CHECK_FALSE(r.take(5999, 1).allowed);
  auto later = r.take(6000, 1);
  CHECK(later.allowed);
  CHECK(later.remaining == 0);
  CHECK(r.peek(66000).remaining == 10);
}

TEST_CASE("a rate limiter takes costs and reconciles them afterwards", "[tenants][unit]") {
  rate_limiter tokens(1000, 60000);
  auto d = tokens.take(0, 600); // estimate
  CHECK(d.allowed);
  CHECK(d.remaining == 400);
  CHECK_FALSE(tokens.take(0, 500).allowed); // over what is left
  tokens.adjust(0, -450);                   // the call used 150, not 600
  CHECK(tokens.peek(0).remaining == 850);
  tokens.adjust(0, 1000);                   // a call that overran: debt
  CHECK(tokens.peek(0).remaining == 0);
  CHECK_FALSE(tokens.take(0, 1).allowed);
  tokens.adjust(0, -100000);                // giving back never goes below empty
  CHECK(tokens.peek(0).remaining == 1000);
}

TEST_CASE("a limit of zero means unlimited", "[tenants][unit]") {
  rate_limiter r(0);
  for (int i = 0; i < 1000; ++i)
    CHECK(r.take(0, 1000).allowed);
  CHECK(r.peek(0).limit == 0);
}

#include "parley/tenants/token_budget.hpp"

using parley::tenants::token_budget;

TEST_CASE("a token budget reserves, caps and settles, and refuses until the next UTC day",
          "[tenants][unit]") {
  const int64_t day = 86400000, t0 = 20000 * day + 3600000; // 01:00 UTC
  token_budget b(1000);
  auto g1 = b.reserve(t0, 600, 10);
  CHECK(g1.allowed);
  CHECK(g1.reserved == 600);
  auto g2 = b.reserve(t0, 600, 10);
  CHECK(g2.allowed);
  CHECK(g2.reserved == 400); // capped at what is left: the caller cuts its call there
  auto g3 = b.reserve(t0, 600, 10);
  CHECK_FALSE(g3.allowed);
  CHECK(g3.retry_after_ms == 23 * 3600000);
  b.settle(t0, 600, 100); // the first call used only 100
  CHECK(b.remaining(t0) == 500);
  b.settle(t0, 400, 400);
  CHECK(b.remaining(t0) == 500);
  CHECK(b.remaining(t0 + day) == 1000); // a new day
  token_budget loaded(1000);
  loaded.set_spent(t0, 990);
  CHECK_FALSE(loaded.reserve(t0, 50, 11).allowed);
  CHECK(loaded.reserve(t0, 50, 5).reserved == 10);
  token_budget unlimited;
  CHECK(unlimited.reserve(t0, 1 << 30, 1).allowed);
}

#include "parley/tenants/response_cache.hpp"

using parley::tenants::cached_completion;
using parley::tenants::response_cache;

TEST_CASE("the response cache expires entries and evicts the least recently used by bytes",
          "[tenants][unit]") {
  response_cache c(1000);
  auto entry = [](std::size_t n) {
    cached_completion v;
    v.deltas = {std::string(n, 'x')};
    v.finish_reason = "stop";
    return v;
  };
  c.put("a", entry(300), 0, 1000);
  c.put("b", entry(300), 0, 1000);
  REQUIRE(c.find("a", 10)); // a is most recent now
  c.put("c", entry(300), 10, 1000);
  CHECK(c.bytes() <= 1000);
  CHECK(c.find("b", 20) == nullptr); // evicted
  CHECK(c.find("a", 20) != nullptr);
  CHECK(c.find("a", 1000) == nullptr); // expired
  c.put("huge", entry(5000), 0, 1000);
  CHECK(c.find("huge", 1) == nullptr); // larger than the bound: not stored
  c.clear();
  CHECK(c.size() == 0);
  CHECK(parley::tenants::cache_key("x") == parley::tenants::cache_key("x"));
  CHECK(parley::tenants::cache_key("x") != parley::tenants::cache_key("y"));
  CHECK(parley::tenants::cache_key("x").size() == 64);
}
