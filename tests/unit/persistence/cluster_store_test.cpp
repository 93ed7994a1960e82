// The cluster_store contract (membership and ownership) against the PostgreSQL store: leases
// granted and judged by the database clock, incarnations, draining and leaving, and tenant
// claims with epochs, also under concurrent claimers. Every test case has a schema of its own.
#include "parley/persistence/open.hpp"
#include "support/pg_schema.hpp"
#include "support/wait.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <map>
#include <thread>

using namespace parley::persistence;
using parley::test::deadline_in;
using parley::test::pg_schema;
using parley::test::wait_until;
using namespace std::chrono_literals;

namespace {

#define REQUIRE_OK(expr)                                                                     \
  [&]() {                                                                                    \
    auto r_ = (expr);                                                                        \
    INFO(#expr << ": " << (r_.ok() ? "" : to_string(r_.code())) << " "                      \
                << (r_.ok() ? "" : r_.error().detail));                                      \
    REQUIRE(r_.ok());                                                                        \
    return r_;                                                                               \
  }()

/// A long lease: it never runs out while a test runs.
constexpr int64_t long_ttl = 60000;
/// A short lease, for the tests that let one expire.
constexpr int64_t short_ttl = 300;

/// A migrated PostgreSQL store on a schema of its own, and its cluster tables.
struct pg_cluster {
  pg_schema schema;
  std::unique_ptr<store> s;
  cluster_store* c = nullptr;

  explicit pg_cluster(int pool_size = 4) {
    parley::config::store_settings st;
    st.pool_size = pool_size;
    st.acquire_timeout_ms = 10000;
    st.postgres_dsn = schema.scoped_dsn();
    s = open_postgres_store(st);
    REQUIRE_OK(s->migrate());
    c = s->cluster();
    REQUIRE(c != nullptr);
  }

  /// Joins `id` with a lease of `ttl`; returns its incarnation.
  int64_t join(const std::string& id, int64_t ttl = long_ttl) {
    auto lease = REQUIRE_OK(c->join_node(id, id + ".internal:7947", id + ".internal:8080", ttl));
    return lease->incarnation;
  }

  /// Leaves as node `id`'s current incarnation, then joins again; returns the new incarnation.
  int64_t rejoin(const std::string& id, int64_t ttl = long_ttl) {
    REQUIRE_OK(c->set_node_status(id, node(id).incarnation, "left"));
    return join(id, ttl);
  }

  /// The row of node `id` as list_nodes has it now.
  node_record node(const std::string& id) {
    auto nodes = REQUIRE_OK(c->list_nodes());
    for (auto& n : *nodes)
      if (n.id == id)
        return n;
    FAIL("no node " << id << " in list_nodes");
    return {};
  }

  /// Waits (up to 10 s) until node `id`'s lease has run out by the database clock.
  bool expired(const std::string& id) {
    return wait_until(deadline_in(10s), [&] { return !node(id).live; });
  }

  std::map<std::string, int64_t> counts() {
    auto r = REQUIRE_OK(c->owned_counts());
    return {r->begin(), r->end()};
  }
};

} // namespace

TEST_CASE("a node joins as incarnation 1 and is refused while that incarnation is live and joins as incarnation 2 once it left",
          "[pg][cluster]") {
  pg_cluster pg;
  auto first = REQUIRE_OK(pg.c->join_node("node-a", "10.0.0.1:7947", "10.0.0.1:8080", long_ttl));
  CHECK(first->incarnation == 1);
  CHECK(first->db_now > 0);
  // The lease is the TTL from the database clock (both read in one statement).
  CHECK(first->expires_at - first->db_now >= long_ttl - 5);
  CHECK(first->expires_at - first->db_now <= long_ttl + 5);

  auto a = pg.node("node-a");
  CHECK(a.incarnation == 1);
  CHECK(a.status == "active");
  CHECK(a.live);
  CHECK(a.address == "10.0.0.1:7947");
  CHECK(a.http_address == "10.0.0.1:8080");
  CHECK(a.lease_expires_at == first->expires_at);
  CHECK(a.joined_at > 0);

  // A live incarnation is never replaced (a second process with the same node id).
  auto twice = pg.c->join_node("node-a", "10.0.0.9:7947", "10.0.0.9:8080", long_ttl);
  CHECK(twice.code() == persistence_errc::conflict);
  CHECK(twice.error().detail.find("10.0.0.1:7947") != std::string::npos);
  CHECK(pg.node("node-a").incarnation == 1);
  CHECK(pg.node("node-a").address == "10.0.0.1:7947");

  // Once it has left, the node id joins again as incarnation 2.
  REQUIRE_OK(pg.c->set_node_status("node-a", 1, "left"));
  auto second = REQUIRE_OK(pg.c->join_node("node-a", "10.0.0.9:7947", "10.0.0.9:8080", long_ttl));
  CHECK(second->incarnation == 2);
  CHECK(second->expires_at >= first->expires_at);
  // Still one row per node id, now the new incarnation at its new address.
  auto nodes = REQUIRE_OK(pg.c->list_nodes());
  REQUIRE(nodes->size() == 1);
  CHECK(nodes->front().incarnation == 2);
  CHECK(nodes->front().address == "10.0.0.9:7947");
  CHECK(nodes->front().live);

  // Incarnations count per node id.
  CHECK(pg.join("node-b") == 1);
  CHECK(pg.rejoin("node-a") == 3);
}

TEST_CASE("renewing a lease extends it from the database clock", "[pg][cluster]") {
  pg_cluster pg;
  auto joined = REQUIRE_OK(pg.c->join_node("node-a", "a:1", "", 10000));
  auto renewed = REQUIRE_OK(pg.c->renew_lease("node-a", joined->incarnation, long_ttl));
  CHECK(renewed->incarnation == joined->incarnation);
  CHECK(renewed->db_now >= joined->db_now);
  CHECK(renewed->expires_at - renewed->db_now >= long_ttl - 5);
  CHECK(renewed->expires_at - renewed->db_now <= long_ttl + 5);
  CHECK(renewed->expires_at > joined->expires_at);
  auto a = pg.node("node-a");
  CHECK(a.lease_expires_at == renewed->expires_at);
  CHECK(a.updated_at == renewed->db_now);
  CHECK(a.live);

  // A renewal sets the lease to TTL from now: a shorter TTL shortens it.
  auto shorter = REQUIRE_OK(pg.c->renew_lease("node-a", joined->incarnation, 5000));
  CHECK(shorter->expires_at < renewed->expires_at);
  CHECK(shorter->expires_at - shorter->db_now >= 5000 - 5);
}

TEST_CASE("renewing a stale incarnation is a conflict", "[pg][cluster]") {
  pg_cluster pg;
  auto old_inc = pg.join("node-a");
  auto new_inc = pg.rejoin("node-a");
  REQUIRE(new_inc == old_inc + 1);
  CHECK(pg.c->renew_lease("node-a", old_inc, long_ttl).code() == persistence_errc::conflict);
  CHECK(pg.c->renew_lease("node-a", new_inc + 1, long_ttl).code() == persistence_errc::conflict);
  CHECK(pg.c->renew_lease("node-nobody", 1, long_ttl).code() == persistence_errc::conflict);
  // The current incarnation is unharmed by the refused renewals.
  REQUIRE_OK(pg.c->renew_lease("node-a", new_inc, long_ttl));
  CHECK(pg.node("node-a").incarnation == new_inc);
}

TEST_CASE("a lease left to expire cannot be renewed and the node joins again as a new incarnation",
          "[pg][cluster]") {
  pg_cluster pg;
  auto inc = pg.join("node-a", short_ttl);
  REQUIRE(pg.node("node-a").live);
  REQUIRE(pg.expired("node-a"));
  auto a = pg.node("node-a");
  CHECK(a.status == "active"); // it never said goodbye: expired, not left
  CHECK(a.lease_expires_at <= a.db_now);

  auto late = pg.c->renew_lease("node-a", inc, long_ttl);
  CHECK(late.code() == persistence_errc::conflict);
  // The refused renewal did not bring it back to life.
  CHECK_FALSE(pg.node("node-a").live);

  CHECK(pg.join("node-a") == inc + 1);
  CHECK(pg.node("node-a").live);
}

TEST_CASE("a draining node stays live and a node that left is not live", "[pg][cluster]") {
  pg_cluster pg;
  auto inc = pg.join("node-a");

  REQUIRE_OK(pg.c->set_node_status("node-a", inc, "draining"));
  auto a = pg.node("node-a");
  CHECK(a.status == "draining");
  CHECK(a.live);
  // A draining node keeps renewing its lease until it leaves.
  REQUIRE_OK(pg.c->renew_lease("node-a", inc, long_ttl));
  CHECK(pg.node("node-a").live);

  // Stale incarnations and unknown statuses change nothing.
  CHECK(pg.c->set_node_status("node-a", inc + 1, "left").code() == persistence_errc::conflict);
  CHECK(pg.c->set_node_status("node-nobody", 1, "left").code() == persistence_errc::conflict);
  CHECK(pg.c->set_node_status("node-a", inc, "paused").code() == persistence_errc::invalid);
  CHECK(pg.node("node-a").status == "draining");

  REQUIRE_OK(pg.c->set_node_status("node-a", inc, "left"));
  a = pg.node("node-a");
  CHECK(a.status == "left");
  CHECK_FALSE(a.live);
  CHECK(a.lease_expires_at <= a.db_now); // the lease ended when it left

  // Gone for good under this incarnation: no renewal, no change of status.
  CHECK(pg.c->renew_lease("node-a", inc, long_ttl).code() == persistence_errc::conflict);
  CHECK(pg.c->set_node_status("node-a", inc, "active").code() == persistence_errc::conflict);
  CHECK_FALSE(pg.node("node-a").live);
}

TEST_CASE("list_nodes lists every node in id order with whether it is live", "[pg][cluster]") {
  pg_cluster pg;
  CHECK(REQUIRE_OK(pg.c->list_nodes())->empty());
  pg.join("node-c");
  auto b = pg.join("node-b", short_ttl);
  auto a = pg.join("node-a");
  auto d = pg.join("node-d");
  REQUIRE_OK(pg.c->set_node_status("node-a", a, "left"));
  REQUIRE_OK(pg.c->set_node_status("node-d", d, "draining"));
  REQUIRE(pg.expired("node-b"));
  (void)b;

  auto nodes = REQUIRE_OK(pg.c->list_nodes());
  REQUIRE(nodes->size() == 4);
  std::vector<std::string> ids;
  for (auto& n : *nodes)
    ids.push_back(n.id);
  CHECK(ids == std::vector<std::string>{"node-a", "node-b", "node-c", "node-d"});
  auto& na = (*nodes)[0];
  auto& nb = (*nodes)[1];
  auto& nc = (*nodes)[2];
  auto& nd = (*nodes)[3];
  CHECK(na.status == "left");
  CHECK_FALSE(na.live);
  CHECK(nb.status == "active");
  CHECK_FALSE(nb.live); // expired
  CHECK(nc.status == "active");
  CHECK(nc.live);
  CHECK(nd.status == "draining");
  CHECK(nd.live);
  for (auto& n : *nodes) {
    CHECK(n.db_now > 0);
    CHECK(n.live == (n.status != "left" && n.lease_expires_at > n.db_now));
    CHECK(n.address == n.id + ".internal:7947");
  }
}

TEST_CASE("the first claim of a tenant has epoch 1 and its owner's claims keep that epoch",
          "[pg][cluster]") {
  pg_cluster pg;
  auto a = pg.join("node-a");
  CHECK(pg.c->get_owner("ten_x").code() == persistence_errc::not_found);

  auto first = REQUIRE_OK(pg.c->claim_tenant("ten_x", "node-a", a));
  CHECK(first->claimed);
  CHECK(first->owner.tenant_id == "ten_x");
  CHECK(first->owner.node_id == "node-a");
  CHECK(first->owner.incarnation == a);
  CHECK(first->owner.epoch == 1);
  CHECK(first->owner.claimed_at > 0);
  CHECK(first->owner.live);

  auto again = REQUIRE_OK(pg.c->claim_tenant("ten_x", "node-a", a));
  CHECK(again->claimed);
  CHECK(again->owner.epoch == 1);
  CHECK(again->owner.claimed_at == first->owner.claimed_at);

  auto owner = REQUIRE_OK(pg.c->get_owner("ten_x"));
  CHECK(owner->node_id == "node-a");
  CHECK(owner->incarnation == a);
  CHECK(owner->epoch == 1);
  CHECK(owner->live);

  // The same node as a new incarnation is a new owner: a new epoch.
  auto a2 = pg.rejoin("node-a");
  CHECK_FALSE(REQUIRE_OK(pg.c->get_owner("ten_x"))->live);
  auto back = REQUIRE_OK(pg.c->claim_tenant("ten_x", "node-a", a2));
  CHECK(back->claimed);
  CHECK(back->owner.incarnation == a2);
  CHECK(back->owner.epoch == 2);
}

TEST_CASE("a tenant of a live owner is refused to another node and the owner is named",
          "[pg][cluster]") {
  pg_cluster pg;
  auto a = pg.join("node-a");
  auto b = pg.join("node-b");
  REQUIRE(REQUIRE_OK(pg.c->claim_tenant("ten_x", "node-a", a))->claimed);

  auto refused = REQUIRE_OK(pg.c->claim_tenant("ten_x", "node-b", b));
  CHECK_FALSE(refused->claimed);
  CHECK(refused->owner.node_id == "node-a");
  CHECK(refused->owner.incarnation == a);
  CHECK(refused->owner.epoch == 1);
  CHECK(refused->owner.live);

  // A draining owner still holds its tenants until it leaves.
  REQUIRE_OK(pg.c->set_node_status("node-a", a, "draining"));
  auto still = REQUIRE_OK(pg.c->claim_tenant("ten_x", "node-b", b));
  CHECK_FALSE(still->claimed);
  CHECK(still->owner.node_id == "node-a");
  CHECK(REQUIRE_OK(pg.c->get_owner("ten_x"))->epoch == 1);
}

TEST_CASE("a tenant whose owner left goes to the next claimer at epoch 2", "[pg][cluster]") {
  pg_cluster pg;
  auto a = pg.join("node-a");
  auto b = pg.join("node-b");
  REQUIRE(REQUIRE_OK(pg.c->claim_tenant("ten_x", "node-a", a))->claimed);
  REQUIRE_OK(pg.c->set_node_status("node-a", a, "left"));
  CHECK_FALSE(REQUIRE_OK(pg.c->get_owner("ten_x"))->live);

  auto taken = REQUIRE_OK(pg.c->claim_tenant("ten_x", "node-b", b));
  CHECK(taken->claimed);
  CHECK(taken->owner.node_id == "node-b");
  CHECK(taken->owner.incarnation == b);
  CHECK(taken->owner.epoch == 2);
  CHECK(taken->owner.live);
  auto owner = REQUIRE_OK(pg.c->get_owner("ten_x"));
  CHECK(owner->node_id == "node-b");
  CHECK(owner->epoch == 2);
}

TEST_CASE("a tenant whose owner's lease expired goes to the next claimer at epoch 2",
          "[pg][cluster]") {
  pg_cluster pg;
  auto a = pg.join("node-a", short_ttl);
  auto b = pg.join("node-b");
  REQUIRE(REQUIRE_OK(pg.c->claim_tenant("ten_x", "node-a", a))->claimed);
  REQUIRE(pg.expired("node-a"));
  CHECK_FALSE(REQUIRE_OK(pg.c->get_owner("ten_x"))->live);

  auto taken = REQUIRE_OK(pg.c->claim_tenant("ten_x", "node-b", b));
  CHECK(taken->claimed);
  CHECK(taken->owner.node_id == "node-b");
  CHECK(taken->owner.epoch == 2);

  // The expired incarnation cannot take it back: it is told the live owner.
  auto back = REQUIRE_OK(pg.c->claim_tenant("ten_x", "node-a", a));
  CHECK_FALSE(back->claimed);
  CHECK(back->owner.node_id == "node-b");
  CHECK(REQUIRE_OK(pg.c->get_owner("ten_x"))->node_id == "node-b");
  CHECK(REQUIRE_OK(pg.c->get_owner("ten_x"))->epoch == 2);
}

TEST_CASE("a claim by a node without a live active lease is a conflict", "[pg][cluster]") {
  pg_cluster pg;
  auto a = pg.join("node-a");
  // ten_free was never claimed, ten_dead's owner left, ten_a is node-a's own: none of them
  // has a live owner other than the claimer, so nobody may be named instead.
  auto gone = pg.join("node-gone");
  REQUIRE(REQUIRE_OK(pg.c->claim_tenant("ten_dead", "node-gone", gone))->claimed);
  REQUIRE_OK(pg.c->set_node_status("node-gone", gone, "left"));
  REQUIRE(REQUIRE_OK(pg.c->claim_tenant("ten_a", "node-a", a))->claimed);

  auto conflicts = [&](const std::string& node, int64_t inc,
                       std::vector<std::string> tenants = {"ten_free", "ten_dead", "ten_a"}) {
    for (auto& t : tenants) {
      INFO(node << " incarnation " << inc << " claims " << t);
      auto r = pg.c->claim_tenant(t, node, inc);
      CHECK(r.code() == persistence_errc::conflict);
    }
  };
  SECTION("a node that never joined") { conflicts("node-nobody", 1, {"ten_free", "ten_dead"}); }
  SECTION("a stale incarnation") {
    auto a2 = pg.rejoin("node-a");
    conflicts("node-a", a);
    CHECK(REQUIRE_OK(pg.c->claim_tenant("ten_other", "node-a", a2))->claimed);
  }
  SECTION("a draining node") {
    REQUIRE_OK(pg.c->set_node_status("node-a", a, "draining"));
    conflicts("node-a", a);
  }
  SECTION("a node that left") {
    REQUIRE_OK(pg.c->set_node_status("node-a", a, "left"));
    conflicts("node-a", a);
  }
  SECTION("a node whose lease expired") {
    auto e = pg.join("node-e", short_ttl);
    REQUIRE(REQUIRE_OK(pg.c->claim_tenant("ten_e", "node-e", e))->claimed);
    REQUIRE(pg.expired("node-e"));
    conflicts("node-e", e, {"ten_free", "ten_dead", "ten_e"});
  }
  // None of the refused claims changed an owner.
  CHECK(pg.c->get_owner("ten_free").code() == persistence_errc::not_found);
  CHECK(REQUIRE_OK(pg.c->get_owner("ten_dead"))->node_id == "node-gone");
  CHECK(REQUIRE_OK(pg.c->get_owner("ten_dead"))->epoch == 1);
  CHECK(REQUIRE_OK(pg.c->get_owner("ten_a"))->epoch == 1);
}

TEST_CASE("a node without a live active lease is told the live owner of a tenant that has one",
          "[pg][cluster]") {
  pg_cluster pg;
  auto a = pg.join("node-a");
  auto b = pg.join("node-b");
  REQUIRE(REQUIRE_OK(pg.c->claim_tenant("ten_x", "node-a", a))->claimed);
  auto told = [&](const std::string& node, int64_t inc) {
    INFO(node << " incarnation " << inc);
    auto r = REQUIRE_OK(pg.c->claim_tenant("ten_x", node, inc));
    CHECK_FALSE(r->claimed);
    CHECK(r->owner.node_id == "node-a");
    CHECK(r->owner.incarnation == a);
    CHECK(r->owner.live);
  };
  told("node-nobody", 1);
  REQUIRE_OK(pg.c->set_node_status("node-b", b, "draining"));
  told("node-b", b);
  REQUIRE_OK(pg.c->set_node_status("node-b", b, "left"));
  told("node-b", b);
  CHECK(REQUIRE_OK(pg.c->get_owner("ten_x"))->epoch == 1);
}

TEST_CASE("concurrent claims of one tenant by many live nodes grant it to exactly one",
          "[pg][cluster]") {
  constexpr int nodes = 8;
  pg_cluster pg(nodes);
  std::vector<int64_t> inc(nodes);
  for (int i = 0; i < nodes; ++i)
    inc[i] = pg.join("node-" + std::to_string(i));

  // Each round: a tenant nobody owns, then (round 2) one whose owner left.
  auto race = [&](const std::string& tenant, int64_t want_epoch) {
    std::atomic<int> ready{0};
    // Declared before the promise: should a REQUIRE end the round early, the promise breaks
    // first (releasing the claimers) and then the futures wait for them.
    std::vector<std::future<result<claim_result>>> claims;
    std::promise<void> go;
    std::shared_future<void> start = go.get_future().share();
    for (int i = 0; i < nodes; ++i)
      claims.push_back(std::async(std::launch::async, [&, start, i] {
        ++ready;
        start.wait();
        return pg.c->claim_tenant(tenant, "node-" + std::to_string(i), inc[i]);
      }));
    REQUIRE(wait_until(deadline_in(10s), [&] { return ready.load() == nodes; }, 1ms));
    go.set_value();
    int won = 0;
    std::string winner;
    std::vector<claim_result> answers;
    for (auto& f : claims) {
      auto r = f.get();
      INFO(tenant << ": " << to_string(r.code()) << " " << (r.ok() ? "" : r.error().detail));
      REQUIRE(r.ok());
      if (r->claimed) {
        ++won;
        winner = r->owner.node_id;
      }
      answers.push_back(*r);
    }
    CHECK(won == 1);
    for (auto& a : answers) {
      // The losers name the winner.
      CHECK(a.owner.node_id == winner);
      CHECK(a.owner.epoch == want_epoch);
    }
    auto owner = REQUIRE_OK(pg.c->get_owner(tenant));
    CHECK(owner->node_id == winner);
    CHECK(owner->epoch == want_epoch);
    return winner;
  };

  for (int t = 0; t < 10; ++t) {
    auto tenant = "ten_race" + std::to_string(t);
    auto first = race(tenant, 1);
    // The winner leaves (and joins again, so that it races once more as a new incarnation).
    auto i = std::stoi(first.substr(first.find('-') + 1));
    REQUIRE_OK(pg.c->set_node_status(first, inc[i], "left"));
    inc[i] = pg.join(first);
    race(tenant, 2);
  }
}

TEST_CASE("owned_counts counts the tenants of live owners only", "[pg][cluster]") {
  pg_cluster pg;
  auto a = pg.join("node-a");
  auto b = pg.join("node-b");
  auto c = pg.join("node-c");
  auto e = pg.join("node-e", short_ttl);
  CHECK(pg.counts().empty());
  auto claim = [&](const std::string& tenant, const std::string& node, int64_t inc) {
    REQUIRE(REQUIRE_OK(pg.c->claim_tenant(tenant, node, inc))->claimed);
  };
  claim("ten_a1", "node-a", a);
  claim("ten_a2", "node-a", a);
  claim("ten_a3", "node-a", a);
  claim("ten_b1", "node-b", b);
  claim("ten_b2", "node-b", b);
  claim("ten_c1", "node-c", c);
  claim("ten_e1", "node-e", e);
  REQUIRE(pg.expired("node-e"));
  CHECK(pg.counts() == std::map<std::string, int64_t>{{"node-a", 3}, {"node-b", 2}, {"node-c", 1}});

  // Draining owners still count; one that left does not.
  REQUIRE_OK(pg.c->set_node_status("node-b", b, "draining"));
  REQUIRE_OK(pg.c->set_node_status("node-c", c, "left"));
  CHECK(pg.counts() == std::map<std::string, int64_t>{{"node-a", 3}, {"node-b", 2}});

  // A new incarnation owns none of its predecessor's tenants until it claims them.
  auto a2 = pg.rejoin("node-a");
  CHECK(pg.counts() == std::map<std::string, int64_t>{{"node-b", 2}});
  claim("ten_a1", "node-a", a2);
  claim("ten_c1", "node-a", a2);
  CHECK(pg.counts() == std::map<std::string, int64_t>{{"node-a", 2}, {"node-b", 2}});
  // The result is ordered by node id.
  auto ordered = REQUIRE_OK(pg.c->owned_counts());
  REQUIRE(ordered->size() == 2);
  CHECK(ordered->front().first == "node-a");
}
