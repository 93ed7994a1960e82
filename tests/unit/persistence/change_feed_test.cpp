// The PostgreSQL change feed against the throwaway PostgreSQL of scripts/test: committed key
// and tenant changes are announced on the invalidation channel (rolled-back ones are not),
// changed rows are found by version, and a killed connection is reported, then reopened.
#include "parley/persistence/change_feed.hpp"
#include "parley/persistence/ids.hpp"
#include "parley/persistence/open.hpp"
#include "support/pg_schema.hpp"
#include "support/wait.hpp"

#include <catch2/catch.hpp>
#include <pqxx/pqxx>

#include <set>

using namespace parley::persistence;
using parley::test::deadline_in;
using parley::test::pg_schema;

namespace {

std::string describe(const cached_change& c) {
  return std::string(c.what == cached_change::kind::key ? "key:" : "tenant:") + c.id;
}

/// Waits (at most 5 s) until the feed has handed out `n` changes of the rows `ids`; returns
/// them as "kind:id". Others are skipped: the channel is the database's, and tests running
/// beside this one (in schemas of their own) announce their changes on it too.
std::vector<std::string> receive(change_feed& feed, const std::set<std::string>& ids,
                                 std::size_t n) {
  std::vector<std::string> got;
  auto deadline = deadline_in(std::chrono::seconds(5));
  while (got.size() < n && parley::test::steady_clock::now() < deadline) {
    std::vector<cached_change> out;
    REQUIRE(feed.wait(std::chrono::milliseconds(100), out).ok());
    for (auto& c : out)
      if (ids.count(c.id))
        got.push_back(describe(c));
  }
  return got;
}

struct fixture {
  pg_schema schema;
  parley::config::store_settings st;
  std::unique_ptr<store> s;
  std::unique_ptr<change_feed> feed;

  fixture() {
    st.postgres_dsn = schema.scoped_dsn();
    st.pool_size = 2;
    s = open_postgres_store(st);
    REQUIRE(s->migrate().ok());
    feed = open_postgres_change_feed(st);
    REQUIRE(feed->open().ok());
    REQUIRE(feed->is_open());
  }

  tenant_record add_tenant() {
    tenant_record t{new_id("ten_"), new_id("s"), "T", "active", "{}", 1000, 1000};
    REQUIRE(s->create_tenant(t).ok());
    return t;
  }

  api_key_record add_key(const std::string& tenant_id) {
    api_key_record k;
    k.id = new_id();
    k.tenant_id = tenant_id;
    k.name = "k";
    k.secret_hash = "h";
    k.created_at = k.updated_at = 1000;
    REQUIRE(s->create_key(k).ok());
    return k;
  }
};

} // namespace

TEST_CASE("the PostgreSQL store announces committed key and tenant changes to a listening feed",
          "[persistence][pg]") {
  fixture f;
  auto t = f.add_tenant();
  auto k = f.add_key(t.id);
  // Creations are not announced: nothing can have cached a row that did not exist.
  REQUIRE(f.s->revoke_key(t.id, k.id, 2000).ok());
  REQUIRE(f.s->rotate_key(t.id, k.id, "h2", std::nullopt, 2100).ok());
  tenant_update suspend;
  suspend.status = "suspended";
  REQUIRE(f.s->update_tenant(t.id, suspend, 2200).ok());
  auto got = receive(*f.feed, {t.id, k.id}, 3);
  CHECK(got == std::vector<std::string>{"key:" + k.id, "key:" + k.id, "tenant:" + t.id});

  // A change that does not commit (not_found: rolled back) announces nothing: the next
  // notification is the committed change after it.
  CHECK(f.s->revoke_key("ten_other", k.id, 3000).code() == persistence_errc::not_found);
  tenant_update del;
  del.status = "deleted";
  REQUIRE(f.s->update_tenant(t.id, del, 3100).ok());
  CHECK(receive(*f.feed, {t.id, k.id}, 1) == std::vector<std::string>{"tenant:" + t.id});
}

TEST_CASE("the change feed finds changed rows by version, newest first",
          "[persistence][pg]") {
  fixture f;
  auto t = f.add_tenant();
  auto k = f.add_key(t.id);
  auto other = f.add_key(t.id);
  CHECK(f.feed->newest_version().value() == 1000);
  REQUIRE(f.s->revoke_key(t.id, k.id, 5000).ok());
  tenant_update rename;
  rename.name = "Renamed";
  REQUIRE(f.s->update_tenant(t.id, rename, 6000).ok());
  CHECK(f.feed->newest_version().value() == 6000);

  auto rows = f.feed->changed_since(1000, 100);
  REQUIRE(rows.ok());
  REQUIRE(rows->size() == 2);
  CHECK(describe((*rows)[0]) == "tenant:" + t.id);
  CHECK((*rows)[0].updated_at == 6000);
  CHECK(describe((*rows)[1]) == "key:" + k.id);
  CHECK((*rows)[1].updated_at == 5000);
  CHECK(f.feed->changed_since(5000, 100)->size() == 1);
  CHECK(f.feed->changed_since(6000, 100)->empty());
  // At most `limit` rows, the newest.
  auto one = f.feed->changed_since(0, 1);
  REQUIRE(one->size() == 1);
  CHECK(describe((*one)[0]) == "tenant:" + t.id);
  (void)other;
}

TEST_CASE("a change feed whose connection is killed says so, and listens again once reopened",
          "[persistence][pg]") {
  fixture f;
  auto pid = f.feed->backend_pid();
  REQUIRE(pid != 0);
  {
    pqxx::connection admin(f.schema.dsn());
    pqxx::nontransaction n(admin);
    REQUIRE(n.exec_params("SELECT pg_terminate_backend($1)", pid)[0][0].as<bool>());
  }
  // The wait that notices the dead connection reports it and closes the feed.
  std::vector<cached_change> out;
  CHECK(parley::test::wait_until(deadline_in(std::chrono::seconds(5)), [&] {
    return !f.feed->wait(std::chrono::milliseconds(50), out).ok();
  }));
  CHECK_FALSE(f.feed->is_open());
  CHECK(f.feed->changed_since(0, 10).code() == persistence_errc::unavailable);

  REQUIRE(f.feed->open().ok());
  CHECK(f.feed->backend_pid() != pid);
  auto t = f.add_tenant();
  tenant_update suspend;
  suspend.status = "suspended";
  REQUIRE(f.s->update_tenant(t.id, suspend, 2000).ok());
  CHECK(receive(*f.feed, {t.id}, 1) == std::vector<std::string>{"tenant:" + t.id});
}

TEST_CASE("invalidation payloads parse as key or tenant and nothing else", "[persistence][unit]") {
  auto k = parse_invalidation("key:abc");
  REQUIRE(k);
  CHECK(k->what == cached_change::kind::key);
  CHECK(k->id == "abc");
  auto t = parse_invalidation("tenant:ten_1:x");
  REQUIRE(t);
  CHECK(t->what == cached_change::kind::tenant);
  CHECK(t->id == "ten_1:x");
  CHECK_FALSE(parse_invalidation("key:"));
  CHECK_FALSE(parse_invalidation("key"));
  CHECK_FALSE(parse_invalidation("conversation:c1"));
  CHECK_FALSE(parse_invalidation(""));
}
