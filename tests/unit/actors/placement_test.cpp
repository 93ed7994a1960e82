// Rendezvous placement of tenants over the cluster's members (actors::place): deterministic,
// active members only, and a change of membership moves only the tenants it must.
#include "parley/actors/cluster.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <random>
#include <set>

using parley::actors::cluster_member;
using parley::actors::place;

namespace {

constexpr int tenant_count = 10000;

/// Tenant ids as parley makes them ("ten_" and 26 Crockford base32 characters), from a fixed
/// seed so that every run sees the same ones.
std::vector<std::string> realistic_ids() {
  static const char alphabet[] = "0123456789abcdefghjkmnpqrstvwxyz";
  std::mt19937_64 rng(20261203);
  std::vector<std::string> ids;
  for (int i = 0; i < tenant_count; ++i) {
    std::string id = "ten_";
    for (int c = 0; c < 26; ++c)
      id += alphabet[rng() % 32];
    ids.push_back(std::move(id));
  }
  return ids;
}

/// Tenant ids that differ only in their last digits: the worst case for a weak hash.
std::vector<std::string> sequential_ids() {
  std::vector<std::string> ids;
  for (int i = 0; i < tenant_count; ++i)
    ids.push_back("ten_" + std::to_string(i));
  return ids;
}

std::vector<std::pair<const char*, std::vector<std::string>>> id_sets() {
  return {{"realistic ids", realistic_ids()}, {"sequential ids", sequential_ids()}};
}

cluster_member member(const std::string& id, bool active = true) {
  return {id, 1, id + ".internal", 7947, active};
}

std::vector<cluster_member> members(std::initializer_list<const char*> ids) {
  std::vector<cluster_member> out;
  for (auto* id : ids)
    out.push_back(member(id));
  return out;
}

std::map<std::string, std::string> placement(const std::vector<std::string>& tenants,
                                             const std::vector<cluster_member>& m) {
  std::map<std::string, std::string> out;
  for (auto& t : tenants)
    out[t] = place(t, m);
  return out;
}

} // namespace

TEST_CASE("placement is the same across calls and whatever the order of the members",
          "[actors][unit]") {
  auto m = members({"node-1", "node-2", "node-3", "node-4", "node-5"});
  auto tenants = realistic_ids();
  tenants.resize(2000);
  auto first = placement(tenants, m);
  CHECK(placement(tenants, m) == first);

  auto reversed = m;
  std::reverse(reversed.begin(), reversed.end());
  CHECK(placement(tenants, reversed) == first);
  std::mt19937 rng(7);
  for (int i = 0; i < 5; ++i) {
    auto shuffled = m;
    std::shuffle(shuffled.begin(), shuffled.end(), rng);
    CHECK(placement(tenants, shuffled) == first);
  }

  // Only the node id counts: a node that joins again (new incarnation, new address) keeps
  // its tenants.
  auto rejoined = m;
  for (auto& r : rejoined) {
    r.incarnation = 7;
    r.host = "10.9.9.9";
    r.port = 1;
  }
  CHECK(placement(tenants, rejoined) == first);
}

TEST_CASE("placement chooses only active members", "[actors][unit]") {
  std::vector<cluster_member> m{member("node-1"), member("node-2", false), member("node-3"),
                                member("node-4", false)};
  auto tenants = realistic_ids();
  std::map<std::string, int> seen;
  for (auto& t : tenants)
    ++seen[place(t, m)];
  CHECK(seen.count("node-2") == 0);
  CHECK(seen.count("node-4") == 0);
  CHECK(seen.count("") == 0);
  CHECK(seen["node-1"] + seen["node-3"] == tenant_count);
  // A draining member's tenants go where they would go without it.
  auto without = members({"node-1", "node-3"});
  CHECK(placement(tenants, m) == placement(tenants, without));

  std::vector<cluster_member> one_active{member("node-1", false), member("node-2"),
                                         member("node-3", false)};
  for (int i = 0; i < 100; ++i)
    CHECK(place(tenants[i], one_active) == "node-2");
}

TEST_CASE("placement answers no node when no member is active", "[actors][unit]") {
  CHECK(place("ten_x", {}).empty());
  CHECK(place("ten_x", {member("node-1", false), member("node-2", false)}).empty());
}

TEST_CASE("adding a fourth node to three moves about a quarter of the tenants and all to it",
          "[actors][unit]") {
  for (auto& [name, tenants] : id_sets()) {
    INFO(name);
    auto before = placement(tenants, members({"node-1", "node-2", "node-3"}));
    auto after = placement(tenants, members({"node-1", "node-2", "node-3", "node-4"}));
    int moved = 0;
    for (auto& t : tenants) {
      if (before[t] == after[t])
        continue;
      ++moved;
      INFO(t << " moved from " << before[t] << " to " << after[t]);
      REQUIRE(after[t] == "node-4");
    }
    INFO(moved << " of " << tenant_count << " tenants moved");
    CHECK(moved >= tenant_count * 15 / 100);
    CHECK(moved <= tenant_count * 35 / 100);
  }
}

TEST_CASE("removing a node moves only that node's tenants", "[actors][unit]") {
  for (auto& [name, tenants] : id_sets()) {
    INFO(name);
    auto before = placement(tenants, members({"node-1", "node-2", "node-3", "node-4"}));
    auto after = placement(tenants, members({"node-1", "node-2", "node-4"}));
    std::map<std::string, int> heirs;
    int held = 0;
    for (auto& t : tenants) {
      INFO(t << " was on " << before[t] << ", now on " << after[t]);
      if (before[t] == "node-3") {
        ++held;
        REQUIRE(after[t] != "node-3");
        ++heirs[after[t]];
      } else {
        REQUIRE(after[t] == before[t]);
      }
    }
    // The removed node's tenants spread over all the others, not onto one of them.
    INFO(held << " tenants were on node-3");
    CHECK(held > 0);
    CHECK(heirs.size() == 3);
  }
}

TEST_CASE("placement spreads tenants over three nodes within 15 percent of even",
          "[actors][unit]") {
  for (auto& [name, tenants] : id_sets()) {
    INFO(name);
    for (auto ids : {std::vector<const char*>{"node-1", "node-2", "node-3"},
                     std::vector<const char*>{"parley-a", "parley-b", "parley-c"}}) {
      std::vector<cluster_member> m;
      for (auto* id : ids)
        m.push_back(member(id));
      std::map<std::string, int> count;
      for (auto& t : tenants)
        ++count[place(t, m)];
      REQUIRE(count.size() == 3);
      const double even = tenant_count / 3.0;
      for (auto& [node, n] : count) {
        INFO(node << " has " << n << " of " << tenant_count << " tenants");
        CHECK(n >= even * 0.85);
        CHECK(n <= even * 1.15);
      }
    }
  }
}
