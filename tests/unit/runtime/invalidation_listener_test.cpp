// The invalidation listener against a scripted change feed: notifications drop cached keys,
// the version check finds changes whose notification was lost (connection down, a writer's
// clock behind), a lost connection is reopened, and each change is invalidated once.
#include "invalidation_listener.hpp"
#include "support/wait.hpp"

#include <catch2/catch.hpp>
#include <spdlog/sinks/null_sink.h>

#include <algorithm>

using namespace parley;
using persistence::cached_change;
using persistence::millis;
using test::deadline_in;
using test::wait_until;

namespace {

/// The database as the fake feed sees it; the test thread changes it, the listener's thread
/// reads it through the feed.
struct fake_db {
  std::mutex mu;
  bool up = true;     ///< false: every call fails and the connection closes
  bool open = false;
  int opens = 0;
  int checks = 0;     ///< version checks answered
  std::vector<cached_change> queued; ///< notifications not yet handed out
  std::vector<cached_change> rows;   ///< (kind, id, updated_at) of every key and tenant

  /// A committed change: its row's version moves, and listeners hear of it (if connected).
  void commit(cached_change::kind what, const std::string& id, millis version, bool announce) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = std::find_if(rows.begin(), rows.end(),
                           [&](auto& r) { return r.what == what && r.id == id; });
    if (it == rows.end())
      rows.push_back({what, id, version});
    else
      it->updated_at = version;
    if (announce && open)
      queued.push_back({what, id, 0});
  }
  int check_count() {
    std::lock_guard<std::mutex> lock(mu);
    return checks;
  }
  int open_count() {
    std::lock_guard<std::mutex> lock(mu);
    return opens;
  }
  void set_up(bool u) {
    std::lock_guard<std::mutex> lock(mu);
    up = u;
  }
};

class fake_feed final : public persistence::change_feed {
public:
  explicit fake_feed(std::shared_ptr<fake_db> db) : db_(std::move(db)) {}

  persistence::status open() override {
    std::lock_guard<std::mutex> lock(db_->mu);
    ++db_->opens;
    if (!db_->up)
      return persistence::store_error{persistence::persistence_errc::unavailable, "down"};
    db_->open = true;
    return persistence::ok_status();
  }
  bool is_open() const override {
    std::lock_guard<std::mutex> lock(db_->mu);
    return db_->open;
  }
  int backend_pid() const override { return 7; }
  void close() override {
    std::lock_guard<std::mutex> lock(db_->mu);
    db_->open = false;
    db_->queued.clear(); // what was not handed out is lost with the connection
  }
  persistence::status wait(std::chrono::milliseconds timeout,
                           std::vector<cached_change>& out) override {
    {
      std::lock_guard<std::mutex> lock(db_->mu);
      if (!db_->open || !db_->up)
        return fail();
      if (!db_->queued.empty()) {
        out.insert(out.end(), db_->queued.begin(), db_->queued.end());
        db_->queued.clear();
        return persistence::ok_status();
      }
    }
    // The real feed blocks in await_notification for the timeout: a short stand-in.
    std::this_thread::sleep_for(std::min(timeout, std::chrono::milliseconds(5)));
    return persistence::ok_status();
  }
  persistence::result<std::vector<cached_change>> changed_since(millis since, int limit) override {
    std::lock_guard<std::mutex> lock(db_->mu);
    if (!db_->open || !db_->up)
      return fail();
    ++db_->checks;
    std::vector<cached_change> out;
    for (auto& r : db_->rows)
      if (r.updated_at > since)
        out.push_back(r);
    std::sort(out.begin(), out.end(),
              [](auto& a, auto& b) { return a.updated_at > b.updated_at; });
    if (static_cast<int>(out.size()) > limit)
      out.resize(static_cast<std::size_t>(limit));
    return out;
  }
  persistence::result<millis> newest_version() override {
    std::lock_guard<std::mutex> lock(db_->mu);
    if (!db_->open || !db_->up)
      return fail();
    millis n = 0;
    for (auto& r : db_->rows)
      n = std::max(n, r.updated_at);
    return n;
  }

private:
  persistence::store_error fail() { // with db_->mu held
    db_->open = false;
    db_->queued.clear();
    return {persistence::persistence_errc::unavailable, "down"};
  }
  std::shared_ptr<fake_db> db_;
};

std::shared_ptr<const tenants::key_principal> principal(const std::string& tenant) {
  auto p = std::make_shared<tenants::key_principal>();
  p->found = true;
  p->key.tenant_id = tenant;
  return p;
}

struct fixture {
  std::shared_ptr<fake_db> db = std::make_shared<fake_db>();
  tenants::key_cache keys{100, 600000};
  std::unique_ptr<runtime::invalidation_listener> listener;

  fixture() {
    // Rows from before the start: version 1000 is the newest.
    db->commit(cached_change::kind::key, "old", 900, false);
    db->commit(cached_change::kind::tenant, "t_old", 1000, false);
    runtime::invalidation_listener::options o;
    o.wait = std::chrono::milliseconds(20);
    o.poll = std::chrono::milliseconds(50);
    o.lookback = 100;
    o.backoff_min = std::chrono::milliseconds(5);
    o.backoff_max = std::chrono::milliseconds(40);
    auto logger = std::make_shared<spdlog::logger>(
      "test", std::make_shared<spdlog::sinks::null_sink_mt>());
    listener = std::make_unique<runtime::invalidation_listener>(
      std::make_unique<fake_feed>(db), keys, logger, o);
    listener->start();
    // Connected, and past its first version check (which found the rows above).
    REQUIRE(wait_until(deadline_in(std::chrono::seconds(5)),
                       [&] { return db->check_count() >= 1; }));
  }
  ~fixture() { listener->stop(); }

  bool cached(const std::string& key_id) { return keys.find(key_id, 1) != nullptr; }
  bool gone_soon(const std::string& key_id) {
    return wait_until(deadline_in(std::chrono::seconds(5)), [&] { return !cached(key_id); });
  }
};

} // namespace

TEST_CASE("the invalidation listener drops a key, or every key of a tenant, when notified",
          "[runtime][unit]") {
  fixture f;
  f.keys.put("k1", principal("ta"), 0);
  f.keys.put("k2", principal("ta"), 0);
  f.keys.put("k3", principal("tb"), 0);
  f.db->commit(cached_change::kind::key, "k1", 2000, true);
  CHECK(f.gone_soon("k1"));
  CHECK(f.cached("k2"));
  f.db->commit(cached_change::kind::tenant, "ta", 2001, true);
  CHECK(f.gone_soon("k2"));
  CHECK(f.cached("k3"));
}

TEST_CASE("the invalidation listener finds by version a change whose notification was lost",
          "[runtime][unit]") {
  fixture f;
  f.keys.put("k1", principal("ta"), 0);
  f.keys.put("k2", principal("tb"), 0);
  // Committed without a notification reaching us; and one from a writer whose clock is
  // behind (below the newest version, within the lookback).
  f.db->commit(cached_change::kind::key, "k1", 2000, false);
  CHECK(f.gone_soon("k1"));
  f.db->commit(cached_change::kind::tenant, "tb", 1950, false);
  CHECK(f.gone_soon("k2"));

  // Each change once: filled again after its invalidation, the key stays through more checks.
  f.keys.put("k1", principal("ta"), 0);
  auto checks = f.db->check_count();
  REQUIRE(wait_until(deadline_in(std::chrono::seconds(5)),
                     [&] { return f.db->check_count() >= checks + 3; }));
  CHECK(f.cached("k1"));
}

TEST_CASE("the invalidation listener reconnects after losing its connection and catches up",
          "[runtime][unit]") {
  fixture f;
  f.keys.put("k1", principal("ta"), 0);
  f.keys.put("k2", principal("tb"), 0);
  f.db->set_up(false);
  auto opens = f.db->open_count();
  // Down: attempts fail, with backoff. A change committed meanwhile is announced to nobody.
  REQUIRE(wait_until(deadline_in(std::chrono::seconds(5)),
                     [&] { return f.db->open_count() >= opens + 2; }));
  f.db->commit(cached_change::kind::key, "k1", 3000, true);
  CHECK(f.cached("k1"));
  f.db->set_up(true);
  CHECK(f.gone_soon("k1"));
  CHECK(f.cached("k2"));
  // Listening again.
  f.db->commit(cached_change::kind::tenant, "tb", 3001, true);
  CHECK(f.gone_soon("k2"));
}

TEST_CASE("the invalidation listener clears what was cached before it first connected",
          "[runtime][unit]") {
  auto db = std::make_shared<fake_db>();
  db->set_up(false);
  tenants::key_cache keys{100, 600000};
  runtime::invalidation_listener::options o;
  o.wait = std::chrono::milliseconds(20);
  o.backoff_min = std::chrono::milliseconds(5);
  o.backoff_max = std::chrono::milliseconds(20);
  auto logger =
    std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
  runtime::invalidation_listener listener(std::make_unique<fake_feed>(db), keys, logger, o);
  listener.start();
  REQUIRE(wait_until(deadline_in(std::chrono::seconds(5)), [&] { return db->open_count() >= 2; }));
  // Served while nobody listened: it may predate changes that nobody will announce.
  keys.put("early", principal("ta"), 0);
  db->set_up(true);
  CHECK(wait_until(deadline_in(std::chrono::seconds(5)), [&] { return !keys.find("early", 1); }));
  auto t0 = std::chrono::steady_clock::now();
  listener.stop();
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(1));
}
