#include "parley/tenants/api_key.hpp"
#include "parley/tenants/key_cache.hpp"
#include "parley/tenants/last_used.hpp"
#include "parley/tenants/tenant_config.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <set>

using namespace parley::tenants;
using json = nlohmann::json;

TEST_CASE("minted keys have the prly_<id>_<secret> shape and parse back", "[tenants][unit]") {
  auto k = mint_key("01hx5k3z0000000000000000ab");
  CHECK(k.full == "prly_01hx5k3z0000000000000000ab_" + k.secret);
  CHECK(k.secret.size() == 43); // 32 bytes, base64url, no padding
  auto p = parse_key(k.full);
  REQUIRE(p);
  CHECK(p->key_id == k.key_id);
  CHECK(p->secret == k.secret);
}

TEST_CASE("secrets are unique and a secret may contain the separator", "[tenants][unit]") {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i)
    CHECK(seen.insert(new_secret()).second);
  auto p = parse_key("prly_abc_" + std::string(20, 'x') + "_" + std::string(20, '-'));
  REQUIRE(p);
  CHECK(p->key_id == "abc");
}

TEST_CASE("malformed keys do not parse", "[tenants][unit]") {
  CHECK_FALSE(parse_key(""));
  CHECK_FALSE(parse_key("sk-abc"));
  CHECK_FALSE(parse_key("prly_"));
  CHECK_FALSE(parse_key("prly_id_short"));
  CHECK_FALSE(parse_key("prly__" + std::string(43, 'a')));
  CHECK_FALSE(parse_key("prly_id_" + std::string(42, 'a') + "!"));
  CHECK_FALSE(parse_key("prly_id_" + std::string(300, 'a')));
}

TEST_CASE("secret hashes are keyed by the pepper and compared exactly", "[tenants][unit]") {
  auto a = hash_secret("pepper-one-0123456789012345678901", "s3cret");
  auto b = hash_secret("pepper-two-0123456789012345678901", "s3cret");
  CHECK(a.size() == 64);
  CHECK(a != b);
  CHECK(digest_equals(a, hash_secret("pepper-one-0123456789012345678901", "s3cret")));
  CHECK_FALSE(digest_equals(a, b));
  CHECK_FALSE(digest_equals(a, a.substr(1)));
  // RFC 4231 test case 2: HMAC-SHA-256("Jefe", "what do ya want for nothing?").
  CHECK(hash_secret("Jefe", "what do ya want for nothing?") ==
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

namespace {
key_principal principal(const std::string& pepper, const std::string& secret) {
  key_principal p;
  p.found = true;
  p.key.id = "k1";
  p.key.tenant_id = "ten_1";
  p.key.secret_hash = hash_secret(pepper, secret);
  p.key.scopes = {"chat"};
  p.tenant_status = "active";
  return p;
}
} // namespace

TEST_CASE("authenticate checks secret, revocation, expiry, tenant status and scope",
          "[tenants][unit]") {
  const std::string pep = "pepper-0123456789012345678901234567";
  auto p = principal(pep, "good");
  CHECK(authenticate(p, "good", pep, 1000, "") == auth_outcome::ok);
  CHECK(authenticate(p, "good", pep, 1000, "chat") == auth_outcome::ok);
  CHECK(authenticate(p, "bad", pep, 1000, "") == auth_outcome::invalid_key);
  CHECK(authenticate(p, "good", pep, 1000, "conversations") == auth_outcome::missing_scope);
  auto revoked = p;
  revoked.key.revoked_at = 900;
  CHECK(authenticate(revoked, "good", pep, 1000, "") == auth_outcome::invalid_key);
  auto expired = p;
  expired.key.expires_at = 1000;
  CHECK(authenticate(expired, "good", pep, 1000, "") == auth_outcome::invalid_key);
  CHECK(authenticate(expired, "good", pep, 999, "") == auth_outcome::ok);
  auto suspended = p;
  suspended.tenant_status = "suspended";
  CHECK(authenticate(suspended, "good", pep, 1000, "") == auth_outcome::tenant_inactive);
  auto deleted = p;
  deleted.tenant_status = "deleted";
  CHECK(authenticate(deleted, "good", pep, 1000, "") == auth_outcome::invalid_key);
  key_principal unknown;
  CHECK(authenticate(unknown, "good", pep, 1000, "") == auth_outcome::invalid_key);
}

TEST_CASE("a rotated key's previous secret is honoured until its grace ends", "[tenants][unit]") {
  const std::string pep = "pepper-0123456789012345678901234567";
  auto p = principal(pep, "new");
  p.key.previous_secret_hash = hash_secret(pep, "old");
  p.key.previous_valid_until = 2000;
  CHECK(authenticate(p, "new", pep, 1500, "") == auth_outcome::ok);
  CHECK(authenticate(p, "old", pep, 1500, "") == auth_outcome::ok);
  CHECK(authenticate(p, "old", pep, 2000, "") == auth_outcome::invalid_key);
  CHECK(authenticate(p, "new", pep, 2500, "") == auth_outcome::ok);
}

TEST_CASE("the key cache expires entries, evicts the least recently used and invalidates",
          "[tenants][unit]") {
  key_cache cache(2, 1000);
  auto make = [](const std::string& tenant) {
    auto p = std::make_shared<key_principal>();
    p->found = true;
    p->key.tenant_id = tenant;
    return std::shared_ptr<const key_principal>(p);
  };
  cache.put("a", make("t1"), 0);
  cache.put("b", make("t2"), 0);
  CHECK(cache.find("a", 10)); // a is now most recent
  cache.put("c", make("t1"), 10);
  CHECK(cache.size() == 2);
  CHECK_FALSE(cache.find("b", 20)); // evicted
  CHECK(cache.find("a", 999));
  CHECK_FALSE(cache.find("a", 1000)); // TTL over
  CHECK(cache.find("c", 20));
  cache.invalidate_tenant("t1");
  CHECK_FALSE(cache.find("c", 20));
  cache.put("d", make("t3"), 0);
  cache.invalidate_key("d");
  CHECK_FALSE(cache.find("d", 1));
}

TEST_CASE("the key cache drops exactly a tenant's keys and refuses a fill that raced with an "
          "invalidation", "[tenants][unit]") {
  key_cache cache(10, 1000);
  auto make = [](const std::string& tenant) {
    auto p = std::make_shared<key_principal>();
    p->found = !tenant.empty();
    p->key.tenant_id = tenant;
    return std::shared_ptr<const key_principal>(p);
  };
  cache.put("a1", make("ta"), 0);
  cache.put("a2", make("ta"), 0);
  cache.put("b1", make("tb"), 0);
  cache.put("unknown", make(""), 0); // a key id the store does not know
  // A key that moves to another principal is filed under its new tenant only.
  cache.put("a2", make("tb"), 0);
  cache.invalidate_tenant("ta");
  CHECK_FALSE(cache.find("a1", 1));
  CHECK(cache.find("a2", 1));
  CHECK(cache.find("b1", 1));
  CHECK(cache.find("unknown", 1));
  cache.invalidate_tenant("tb");
  CHECK(cache.size() == 1);
  cache.invalidate_tenant("nobody");
  CHECK(cache.size() == 1);

  // A filler read the store before an invalidation and inserts after it: refused, so the
  // old row is not served for a TTL. Any invalidation counts, of cached entries or not.
  auto before = cache.generation();
  cache.invalidate_key("not-cached");
  CHECK_FALSE(cache.put_if_unchanged("k", make("ta"), 2, before));
  CHECK_FALSE(cache.find("k", 3));
  auto now = cache.generation();
  CHECK(cache.put_if_unchanged("k", make("ta"), 2, now));
  CHECK(cache.find("k", 3));
  cache.clear();
  CHECK(cache.size() == 0);
  CHECK_FALSE(cache.put_if_unchanged("k", make("ta"), 2, now));
  // Evicted entries leave nothing behind in the tenant index.
  key_cache small(1, 1000);
  small.put("x", make("tx"), 0);
  small.put("y", make("ty"), 0);
  small.invalidate_tenant("tx");
  CHECK(small.find("y", 1));
}

TEST_CASE("the failure throttle blocks a client and key over its budget for the minute",
          "[tenants][unit]") {
  failure_throttle t(3);
  int64_t retry = 0;
  for (int i = 0; i < 3; ++i) {
    CHECK_FALSE(t.blocked("1.2.3.4", "key_a", 1000, retry));
    t.record_failure("1.2.3.4", "key_a", 1000);
  }
  CHECK(t.blocked("1.2.3.4", "key_a", 1500, retry));
  CHECK(retry == 60);
  // Another key from the same address, and the same key from another address, are not blocked.
  CHECK_FALSE(t.blocked("1.2.3.4", "key_b", 1500, retry));
  CHECK_FALSE(t.blocked("1.2.3.4", "", 1500, retry));
  CHECK_FALSE(t.blocked("5.6.7.8", "key_a", 1500, retry));
  CHECK_FALSE(t.blocked("1.2.3.4", "key_a", 61000, retry));
}

TEST_CASE("the failure throttle stays bounded and drops the oldest window first",
          "[tenants][unit]") {
  failure_throttle t(1, 1000);
  int64_t retry = 0;
  // 100k distinct guessers in one minute: memory stays at the bound, the newest are kept.
  for (int i = 0; i < 100000; ++i)
    t.record_failure("10.0." + std::to_string(i / 256) + "." + std::to_string(i % 256), "",
                     1000 + i / 100);
  CHECK(t.size() == 1000);
  CHECK(t.blocked("10.0.390.159", "", 2000, retry)); // the last one recorded (i = 99999)
  CHECK_FALSE(t.blocked("10.0.0.0", "", 2000, retry)); // the first one, evicted
  // Expired windows are dropped as time moves on.
  t.record_failure("192.0.2.1", "", 200000);
  CHECK(t.size() == 1);
}

TEST_CASE("the last-used recorder keeps the latest time per key and empties on take",
          "[tenants][unit]") {
  last_used_recorder r;
  r.record("a", 5);
  r.record("a", 3);
  r.record("b", 7);
  auto batch = r.take();
  std::map<std::string, int64_t> m(batch.begin(), batch.end());
  CHECK(m == std::map<std::string, int64_t>{{"a", 5}, {"b", 7}});
  CHECK(r.take().empty());
}

TEST_CASE("tenant config patches merge and validate", "[tenants][unit]") {
  tenant_config c;
  CHECK(c.allows("anything"));
  CHECK_FALSE(apply_config_patch(c, json{{"allowed_models", {"a", "b"}}, {"default_model", "a"}}));
  CHECK(c.allows("a"));
  CHECK_FALSE(c.allows("z"));
  CHECK_FALSE(apply_config_patch(c, json{{"limits", {{"max_concurrent", 4}}}}));
  CHECK_FALSE(apply_config_patch(c, json{{"limits", {{"tokens_per_day", 100}}}}));
  CHECK(c.limits.max_concurrent == 4);
  CHECK(c.limits.tokens_per_day == 100);
  auto p = apply_config_patch(c, json{{"limits", {{"max_concurrent", "4"}}}});
  REQUIRE(p);
  CHECK(p->param == "config.limits.max_concurrent");
  CHECK(c.limits.max_concurrent == 4); // unchanged on failure
  CHECK(apply_config_patch(c, json{{"cache", {{"ttl_seconds", 99999999}}}}));
  CHECK(apply_config_patch(c, json{{"system_prompt", std::string(70000, 'x')}}));
  CHECK(apply_config_patch(c, json{{"allowed_models", {"a"}}, {"default_model", "b"}}));
  auto round = parse_stored_config(to_json_text(c));
  CHECK(to_json(round) == to_json(c));
  CHECK(valid_slug("acme-1"));
  CHECK_FALSE(valid_slug("-acme"));
  CHECK_FALSE(valid_slug("Acme"));
  CHECK_FALSE(valid_slug(""));
}
