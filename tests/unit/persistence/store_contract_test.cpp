// One contract suite for the store interfaces, run against SQLite (always) and PostgreSQL
// (the [pg] cluster of scripts/test). Every SECTION runs on a fresh, empty store.
#include "parley/persistence/executor.hpp"
#include "parley/persistence/turn_writer.hpp"
#include "parley/persistence/ids.hpp"
#include "parley/persistence/open.hpp"
#include "migrations.hpp"
#include "pool.hpp"
#include "support/pg_schema.hpp"
#include "support/process.hpp"
#include "support/wait.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <future>
#include <set>
#include <thread>

using namespace parley::persistence;
using parley::test::pg_schema;
using parley::test::temp_dir;
using parley::test::deadline_in;
using parley::test::wait_until;

namespace {

tenant_record tenant(const std::string& slug, int64_t at = 1000) {
  return {new_id("ten_"), slug, "Tenant " + slug, "active", R"({"a":1})", at, at};
}

api_key_record key(const std::string& tenant_id, const std::string& hash = "h0") {
  api_key_record k;
  k.id = new_id();
  k.tenant_id = tenant_id;
  k.name = "k";
  k.secret_hash = hash;
  k.scopes = {"chat", "conversations"};
  k.created_at = k.updated_at = 1000;
  return k;
}

message_record msg(const conversation_record& c, int64_t seq, const std::string& text) {
  return {c.id, c.tenant_id, seq, "user", R"({"role":"user","content":")" + text + R"("})", 3, 0,
          1000 + seq};
}

#define REQUIRE_OK(expr)                                                                     \
  [&]() {                                                                                    \
    auto r_ = (expr);                                                                        \
    INFO(#expr << ": " << (r_.ok() ? "" : to_string(r_.code())) << " "                      \
                << (r_.ok() ? "" : r_.error().detail));                                      \
    REQUIRE(r_.ok());                                                                        \
    return r_;                                                                               \
  }()

void contract(store& s) {
  REQUIRE_OK(s.migrate());

  SECTION("migrate is idempotent and leaves nothing pending") {
    auto again = REQUIRE_OK(s.migrate());
    CHECK(again->empty());
    CHECK(REQUIRE_OK(s.pending_migrations())->empty());
    CHECK(s.ping().ok());
  }

  SECTION("tenants: create, get, unique live slug, update, soft delete, list") {
    auto a = REQUIRE_OK(s.create_tenant(tenant("acme")));
    auto got = REQUIRE_OK(s.get_tenant(a->id));
    CHECK(got->slug == "acme");
    CHECK(got->status == "active");
    CHECK(got->created_at == 1000);
    CHECK(s.create_tenant(tenant("acme")).code() == persistence_errc::conflict);
    CHECK(s.get_tenant("ten_nope").code() == persistence_errc::not_found);

    tenant_update u;
    u.name = "Acme Corp";
    u.config_json = R"({"b":2})";
    auto up = REQUIRE_OK(s.update_tenant(a->id, u, 2000));
    CHECK(up->name == "Acme Corp");
    CHECK(up->slug == "acme");
    CHECK(up->updated_at == 2000);
    CHECK(up->config_json.find("\"b\"") != std::string::npos);
    // Every change moves updated_at forward, also from a writer whose clock is behind.
    CHECK(REQUIRE_OK(s.update_tenant(a->id, u, 1500))->updated_at == 2001);
    CHECK(REQUIRE_OK(s.update_tenant(a->id, u, 2001))->updated_at == 2002);
    CHECK(s.update_tenant("ten_nope", u, 2000).code() == persistence_errc::not_found);

    auto b = REQUIRE_OK(s.create_tenant(tenant("beta")));
    tenant_update to_acme;
    to_acme.slug = "acme";
    CHECK(s.update_tenant(b->id, to_acme, 3000).code() == persistence_errc::conflict);

    tenant_update del;
    del.status = "deleted";
    REQUIRE_OK(s.update_tenant(a->id, del, 4000));
    // The slug of a deleted tenant is free again.
    REQUIRE_OK(s.create_tenant(tenant("acme")));
    auto live = REQUIRE_OK(s.list_tenants({"", 100}, false));
    CHECK(live->items.size() == 2);
    auto all = REQUIRE_OK(s.list_tenants({"", 100}, true));
    CHECK(all->items.size() == 3);
  }

  SECTION("lists paginate with a cursor in id order") {
    std::vector<std::string> ids;
    for (int i = 0; i < 7; ++i)
      ids.push_back(REQUIRE_OK(s.create_tenant(tenant("t" + std::to_string(i))))->id);
    std::vector<std::string> seen;
    std::string after;
    int pages = 0;
    for (;;) {
      auto p = REQUIRE_OK(s.list_tenants({after, 3}, false));
      ++pages;
      for (auto& t : p->items)
        seen.push_back(t.id);
      if (!p->has_more)
        break;
      after = p->items.back().id;
    }
    CHECK(pages == 3);
    auto sorted = ids;
    std::sort(sorted.begin(), sorted.end());
    CHECK(seen == sorted);
  }

  SECTION("keys: create, get, list per tenant, revoke once, rotate with and without grace") {
    auto t = REQUIRE_OK(s.create_tenant(tenant("keys")));
    auto other = REQUIRE_OK(s.create_tenant(tenant("other")));
    auto k = key(t->id);
    k.expires_at = 99999;
    REQUIRE_OK(s.create_key(k));
    REQUIRE_OK(s.create_key(key(other->id)));
    auto got = REQUIRE_OK(s.get_key(k.id));
    CHECK(got->tenant_id == t->id);
    CHECK(got->scopes == std::vector<std::string>{"chat", "conversations"});
    CHECK(got->expires_at == std::optional<int64_t>(99999));
    CHECK_FALSE(got->revoked_at);
    CHECK(s.get_key("nope").code() == persistence_errc::not_found);
    CHECK(s.create_key(key("ten_missing")).code() == persistence_errc::not_found);

    auto list = REQUIRE_OK(s.list_keys(t->id, {"", 10}));
    REQUIRE(list->items.size() == 1);
    CHECK(list->items[0].id == k.id);

    // Another tenant's key id answers not_found on every tenant-scoped call.
    CHECK(s.revoke_key(other->id, k.id, 5000).code() == persistence_errc::not_found);
    CHECK(s.rotate_key(other->id, k.id, "hx", std::nullopt, 5000).code() ==
          persistence_errc::not_found);

    auto rot = REQUIRE_OK(s.rotate_key(t->id, k.id, "h1", int64_t{9000}, 5000));
    CHECK(rot->secret_hash == "h1");
    CHECK(rot->previous_secret_hash == std::optional<std::string>("h0"));
    CHECK(rot->previous_valid_until == std::optional<int64_t>(9000));
    auto rot2 = REQUIRE_OK(s.rotate_key(t->id, k.id, "h2", std::nullopt, 6000));
    CHECK(rot2->secret_hash == "h2");
    CHECK_FALSE(rot2->previous_secret_hash);
    CHECK_FALSE(rot2->previous_valid_until);

    auto rev = REQUIRE_OK(s.revoke_key(t->id, k.id, 7000));
    CHECK(rev->revoked_at == std::optional<int64_t>(7000));
    CHECK(rev->updated_at == 7000);
    auto rev2 = REQUIRE_OK(s.revoke_key(t->id, k.id, 8000));
    CHECK(rev2->revoked_at == std::optional<int64_t>(7000));
    CHECK(rev2->updated_at == 8000);
    // A writer whose clock is behind still moves updated_at forward.
    CHECK(REQUIRE_OK(s.revoke_key(t->id, k.id, 7500))->updated_at == 8001);
    CHECK(REQUIRE_OK(s.rotate_key(t->id, k.id, "h3", std::nullopt, 7500))->updated_at == 8002);

    REQUIRE(s.touch_keys({{k.id, 100}, {k.id + "x", 5}}).ok());
    REQUIRE(s.touch_keys({{k.id, 50}}).ok());
    CHECK(REQUIRE_OK(s.get_key(k.id))->last_used_at == std::optional<int64_t>(100));
  }

  SECTION("conversations and messages stay within their tenant") {
    auto a = REQUIRE_OK(s.create_tenant(tenant("conv-a")));
    auto b = REQUIRE_OK(s.create_tenant(tenant("conv-b")));
    conversation_record c{new_id("conv_"), a->id, R"({"topic":"x"})", 1000, 1000};
    REQUIRE_OK(s.create_conversation(c));
    CHECK(REQUIRE_OK(s.get_conversation(a->id, c.id))->metadata_json.find("topic") !=
          std::string::npos);
    CHECK(s.get_conversation(b->id, c.id).code() == persistence_errc::not_found);
    CHECK(REQUIRE_OK(s.list_conversations(b->id, {"", 10}))->items.empty());
    CHECK(REQUIRE_OK(s.list_conversations(a->id, {"", 10}))->items.size() == 1);

    REQUIRE(s.append_messages({msg(c, 1, "one"), msg(c, 2, "two")}).ok());
    // A gap or a duplicate seq is a conflict, and nothing of that batch is written.
    CHECK(s.append_messages({msg(c, 3, "three"), msg(c, 5, "five")}).code() ==
          persistence_errc::conflict);
    CHECK(s.append_messages({msg(c, 2, "again")}).code() == persistence_errc::conflict);
    auto other_tenant = msg(c, 3, "x");
    other_tenant.tenant_id = b->id;
    CHECK(s.append_messages({other_tenant}).code() == persistence_errc::not_found);
    auto msgs = REQUIRE_OK(s.list_messages(a->id, c.id, 0, 100));
    REQUIRE(msgs->size() == 2);
    CHECK((*msgs)[0].seq == 1);
    CHECK((*msgs)[1].content_json.find("two") != std::string::npos);
    CHECK(REQUIRE_OK(s.list_messages(a->id, c.id, 1, 100))->size() == 1);
    CHECK(s.list_messages(b->id, c.id, 0, 100).code() == persistence_errc::not_found);

    // A batch may span conversations (group commit).
    conversation_record c2{new_id("conv_"), a->id, "{}", 1000, 1000};
    REQUIRE_OK(s.create_conversation(c2));
    REQUIRE(s.append_messages({msg(c, 3, "three"), msg(c2, 1, "first"), msg(c2, 2, "second")}).ok());
    CHECK(REQUIRE_OK(s.list_messages(a->id, c2.id, 0, 100))->size() == 2);

    CHECK(s.delete_conversation(b->id, c.id).code() == persistence_errc::not_found);
    REQUIRE(s.delete_conversation(a->id, c.id).ok());
    CHECK(s.get_conversation(a->id, c.id).code() == persistence_errc::not_found);
    CHECK(s.list_messages(a->id, c.id, 0, 100).code() == persistence_errc::not_found);
  }

  SECTION("the usage ledger counts each attempt once and its rollup derives from it") {
    auto t = REQUIRE_OK(s.create_tenant(tenant("usage")));
    auto entry = [&](const std::string& req, int32_t attempt, const std::string& key,
                     int64_t in, int64_t out, const std::string& outcome) {
      return usage_entry{req, attempt, t->id, key, "m", "m", "d1", in, out, outcome, 0, 60000 + attempt};
    };
    std::vector<usage_entry> rows{entry("req1", 1, "k1", 10, 0, "error"),
                                  entry("req1", 2, "k1", 10, 5, "ok"),
                                  entry("req2", 1, "k1", 20, 10, "ok"),
                                  entry("req3", 1, "k2", 1, 1, "ok")};
    auto other = rows[0];
    other.request_id = "req-other";
    other.tenant_id = "ten_other";
    rows.push_back(other);
    auto later = entry("req4", 1, "k1", 7, 8, "ok"); // the next minute, in the same write
    later.at = 125000;
    rows.push_back(later);
    REQUIRE(s.record_usage(rows).ok());
    // A write retried after an ambiguous failure changes nothing.
    REQUIRE(s.record_usage(rows).ok());
    REQUIRE(s.record_usage({rows[1]}).ok());
    auto sums = REQUIRE_OK(s.query_usage(t->id, 0, 120000));
    REQUIRE(sums->size() == 2);
    CHECK((*sums)[0].key_id == "k1");
    CHECK((*sums)[0].requests == 3);
    CHECK((*sums)[0].prompt_tokens == 40);
    CHECK((*sums)[0].completion_tokens == 15);
    CHECK((*sums)[0].errors == 1);
    CHECK((*sums)[1].requests == 1);
    auto next_minute = REQUIRE_OK(s.query_usage(t->id, 120000, 180000));
    REQUIRE(next_minute->size() == 1);
    CHECK((*next_minute)[0].key_id == "k1");
    CHECK((*next_minute)[0].requests == 1);
    CHECK((*next_minute)[0].prompt_tokens == 7);
    CHECK((*next_minute)[0].completion_tokens == 8);
    CHECK(REQUIRE_OK(s.query_usage(t->id, 180000, 240000))->empty());
    auto ledger = REQUIRE_OK(s.list_usage_entries(t->id, 0, 120000, 100));
    REQUIRE(ledger->size() == 4);
    CHECK((*ledger)[0].request_id == "req1");
    CHECK((*ledger)[0].attempt == 1);
    CHECK((*ledger)[0].outcome == "error");
    CHECK((*ledger)[0].deployment == "d1");
    CHECK(REQUIRE_OK(s.list_usage_entries(t->id, 0, 120000, 2))->size() == 2);
  }

  SECTION("a turn's messages and usage commit together or not at all") {
    auto t = REQUIRE_OK(s.create_tenant(tenant("turns")));
    conversation_record c{new_id("conv_"), t->id, "{}", 1000, 1000};
    REQUIRE_OK(s.create_conversation(c));
    usage_entry u{"req-a", 1, t->id, "k", "m", "m", "", 3, 4, "ok", 0, 61000};
    REQUIRE(s.write_turns({{{msg(c, 1, "hi")}, {}}, {{msg(c, 2, "reply")}, {u}}}).ok());
    CHECK(REQUIRE_OK(s.list_messages(t->id, c.id, 0, 100))->size() == 2);
    CHECK(REQUIRE_OK(s.list_usage_entries(t->id, 0, 120000, 100))->size() == 1);
    // A seq conflict writes nothing of the batch, the usage of the other write included.
    usage_entry u2{"req-b", 1, t->id, "k", "m", "m", "", 5, 6, "ok", 0, 61000};
    CHECK(s.write_turns({{{}, {u2}}, {{msg(c, 2, "again")}, {}}}).code() == persistence_errc::conflict);
    CHECK(REQUIRE_OK(s.list_usage_entries(t->id, 0, 120000, 100))->size() == 1);
    CHECK(REQUIRE_OK(s.query_usage(t->id, 0, 120000))->at(0).prompt_tokens == 3);
  }

  SECTION("the audit log filters by tenant, action and time") {
    for (int i = 0; i < 4; ++i)
      REQUIRE(s.append_audit({new_id("aud_"), 1000 + i, "admin", i % 2 ? "key.create" : "tenant.update",
                              "x", i < 2 ? "ten_a" : "ten_b", "req" + std::to_string(i), "{}"})
                .ok());
    CHECK(REQUIRE_OK(s.list_audit({}, {"", 100}))->items.size() == 4);
    CHECK(REQUIRE_OK(s.list_audit({"ten_a", "", {}, {}}, {"", 100}))->items.size() == 2);
    CHECK(REQUIRE_OK(s.list_audit({"", "key.create", {}, {}}, {"", 100}))->items.size() == 2);
    CHECK(REQUIRE_OK(s.list_audit({"", "", int64_t{1002}, {}}, {"", 100}))->items.size() == 2);
    auto one = REQUIRE_OK(s.list_audit({"ten_b", "key.create", {}, {}}, {"", 100}));
    REQUIRE(one->items.size() == 1);
    CHECK(one->items[0].request_id == "req3");
  }

  SECTION("store calls from many threads at once all succeed") {
    auto t = REQUIRE_OK(s.create_tenant(tenant("busy")));
    std::atomic<int> ok{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < 8; ++i)
      threads.emplace_back([&, i] {
        for (int j = 0; j < 10; ++j)
          if (s.create_key(key(t->id, "h" + std::to_string(i * 100 + j))).ok())
            ++ok;
      });
    for (auto& th : threads)
      th.join();
    CHECK(ok == 80);
    CHECK(REQUIRE_OK(s.list_keys(t->id, {"", 100}))->items.size() == 80);
    CHECK(s.pool_in_use() == 0);
  }
}

parley::config::store_settings small_pool() {
  parley::config::store_settings st;
  st.pool_size = 3;
  st.acquire_timeout_ms = 5000;
  return st;
}

} // namespace

TEST_CASE("the SQLite store fulfils the store contract", "[persistence][unit]") {
  temp_dir d;
  auto s = open_sqlite_store(d.path() + "/sub/dir/parley.db", small_pool());
  CHECK(std::string(s->backend()) == "sqlite");
  contract(*s);
}

TEST_CASE("the PostgreSQL store fulfils the store contract", "[persistence][pg]") {
  pg_schema schema;
  auto st = small_pool();
  st.postgres_dsn = schema.scoped_dsn();
  auto s = open_postgres_store(st);
  CHECK(std::string(s->backend()) == "postgres");
  contract(*s);
}

TEST_CASE("two PostgreSQL nodes migrating at once both succeed", "[persistence][pg]") {
  pg_schema schema;
  auto st = small_pool();
  st.postgres_dsn = schema.scoped_dsn();
  auto a = open_postgres_store(st);
  auto b = open_postgres_store(st);
  result<std::vector<int>> ra = store_error{}, rb = store_error{};
  std::thread ta([&] { ra = a->migrate(); });
  std::thread tb([&] { rb = b->migrate(); });
  ta.join();
  tb.join();
  REQUIRE(ra.ok());
  REQUIRE(rb.ok());
  // Exactly one of them applied the migrations (all of them).
  CHECK(ra->empty() != rb->empty());
  CHECK(ra->size() + rb->size() == detail::postgres_migrations().size());
  CHECK(a->pending_migrations()->empty());
}

TEST_CASE("an unreachable PostgreSQL answers unavailable, not an exception", "[persistence][pg]") {
  parley::config::store_settings st;
  st.postgres_dsn = "postgresql://postgres@127.0.0.1:1/none?connect_timeout=1";
  auto s = open_postgres_store(st);
  CHECK(s->ping().code() == persistence_errc::unavailable);
  CHECK(s->get_tenant("x").code() == persistence_errc::unavailable);
  CHECK(s->pool_in_use() == 0);
}

TEST_CASE("a pool with every connection borrowed times out instead of waiting forever",
          "[persistence][unit]") {
  int opened = 0;
  bool fail_next = false;
  parley::persistence::detail::connection_pool<int> pool(1, std::chrono::milliseconds(100), [&] {
    if (fail_next)
      throw std::runtime_error("server down");
    return std::make_unique<int>(++opened);
  });
  {
    auto held = pool.acquire();
    REQUIRE(held.ok());
    CHECK(pool.in_use() == 1);
    auto t0 = std::chrono::steady_clock::now();
    auto second = pool.acquire();
    auto waited = std::chrono::steady_clock::now() - t0;
    CHECK(second.code() == persistence_errc::timeout);
    CHECK(waited >= std::chrono::milliseconds(90));
    CHECK(waited < std::chrono::milliseconds(1000));
  }
  CHECK(pool.in_use() == 0);
  {
    auto again = pool.acquire();
    REQUIRE(again.ok());
    CHECK(***again == 1); // the idle connection is reused
    (*again)->mark_broken();
  }
  fail_next = true;
  CHECK(pool.acquire().code() == persistence_errc::unavailable);
  fail_next = false;
  auto fresh = pool.acquire();
  REQUIRE(fresh.ok());
  CHECK(***fresh == 2); // the broken one was replaced
}

TEST_CASE("redact_dsn hides passwords in every DSN form", "[persistence][unit]") {
  CHECK(redact_dsn("host=db user=u password=hunter2 dbname=x") == "host=db user=u password=*** dbname=x");
  CHECK(redact_dsn("host=db password='a b c' dbname=x") == "host=db password=*** dbname=x");
  CHECK(redact_dsn("postgresql://u:hunter2@db:5432/x") == "postgresql://u:***@db:5432/x");
  CHECK(redact_dsn("postgresql://db/x?user=u&password=hunter2&sslmode=require") ==
        "postgresql://db/x?user=u&password=***&sslmode=require");
  CHECK(redact_dsn("postgresql://u@db/x") == "postgresql://u@db/x");
}

TEST_CASE("new ids are time-ordered, prefixed and free of underscores", "[persistence][unit]") {
  std::set<std::string> seen;
  std::string prev;
  for (int i = 0; i < 2000; ++i) {
    auto id = new_id("ten_");
    CHECK(id.size() == 4 + 26);
    CHECK(id.find('_', 4) == std::string::npos);
    CHECK(seen.insert(id).second);
    CHECK(id.substr(4) > prev);
    prev = id.substr(4);
    if (i % 500 == 0) {
      // Not a synchronization: the clock itself must move on to a later millisecond, and
      // nothing but time passing shows that.
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      auto later = new_id("ten_");
      CHECK(later > id);
    }
  }
}

TEST_CASE("the store executor runs jobs, refuses when full and drains on stop",
          "[persistence][unit]") {
  store_executor ex(2, 4);
  std::atomic<int> ran{0};
  std::mutex gate;
  gate.lock();
  auto blocked = [&] {
    std::lock_guard<std::mutex> g(gate);
    ++ran;
  };
  // Two workers block on the gate; four more jobs fill the queue; the seventh is refused.
  CHECK(ex.try_post(blocked));
  CHECK(ex.try_post(blocked));
  // Both workers have taken their job (bounded; CHECK, not REQUIRE: the gate must still open).
  CHECK(wait_until(deadline_in(std::chrono::seconds(5)), [&] { return ex.queued() == 0; },
                   std::chrono::milliseconds(1)));
  for (int i = 0; i < 4; ++i)
    CHECK(ex.try_post(blocked));
  CHECK_FALSE(ex.try_post([&] { ++ran; }));
  gate.unlock();
  ex.stop();
  CHECK(ran == 6);
  CHECK_FALSE(ex.try_post([&] { ++ran; }));
}

TEST_CASE("the turn writer commits writes of many conversations together", "[persistence][unit]") {
  temp_dir d;
  auto s = open_sqlite_store(d.path() + "/w.db", small_pool());
  REQUIRE(s->migrate().ok());
  auto t = s->create_tenant(tenant("writer"));
  REQUIRE(t.ok());
  std::vector<conversation_record> convs;
  for (int i = 0; i < 20; ++i) {
    conversation_record c{new_id("conv_"), t->id, "{}", 1000, 1000};
    REQUIRE(s->create_conversation(c).ok());
    convs.push_back(c);
  }
  turn_writer w(*s);
  // Worker threads only collect outcomes; the test thread asserts.
  std::mutex mu;
  std::vector<persistence_errc> outcomes;
  std::vector<bool> queued;
  std::vector<std::thread> threads;
  for (int i = 0; i < 20; ++i)
    threads.emplace_back([&, i] {
      for (int seq = 1; seq <= 10; ++seq) {
        std::promise<status> p;
        auto f = p.get_future();
        usage_entry u{"req-" + std::to_string(i) + "-" + std::to_string(seq), 1, t->id, "k", "m",
                      "m", "", 1, 2, "ok", 0, 60000};
        bool q = w.submit({{msg(convs[static_cast<std::size_t>(i)], seq, "m")}, {u}},
                          [&p](status r) { p.set_value(r); });
        auto code = q ? f.get().code() : persistence_errc::internal;
        std::lock_guard<std::mutex> lock(mu);
        queued.push_back(q);
        outcomes.push_back(code);
      }
    });
  for (auto& th : threads)
    th.join();
  CHECK(std::count(queued.begin(), queued.end(), true) == 200);
  CHECK(std::count(outcomes.begin(), outcomes.end(), persistence_errc::ok) == 200);
  CHECK(w.stats().batches < 200); // writes that arrived together were committed together
  for (auto& c : convs)
    CHECK(s->list_messages(t->id, c.id, 0, 100)->size() == 10);
  CHECK(s->list_usage_entries(t->id, 0, 120000, 1000)->size() == 200);

  // One caller's conflict does not fail the others in its batch, and its usage still counts.
  std::promise<status> bad, good;
  auto fb = bad.get_future(), fg = good.get_future();
  usage_entry late{"req-conflict", 1, t->id, "k", "m", "m", "", 7, 0, "ok", 0, 60000};
  REQUIRE(w.submit({{msg(convs[0], 5, "dup")}, {late}}, [&](status r) { bad.set_value(r); }));
  REQUIRE(w.submit({{msg(convs[1], 11, "next")}, {}}, [&](status r) { good.set_value(r); }));
  CHECK(fb.get().code() == persistence_errc::conflict);
  CHECK(fg.get().ok());
  CHECK(s->list_usage_entries(t->id, 0, 120000, 1000)->size() == 201);
  CHECK(w.stats().parked == 0);
  w.stop();
  CHECK_FALSE(w.submit({{msg(convs[2], 11, "late")}, {}}, [](status) {}));
}
