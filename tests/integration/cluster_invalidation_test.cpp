// Cache invalidation across the nodes of a cluster (docs/cluster.md): three `parley serve
// --cluster` processes on one PostgreSQL schema. Every node authenticates from its own key
// cache, warmed here by one request through each; a key revoked, a tenant suspended, or a
// tenant's limits changed through node 0 must reach nodes 1 and 2 within one second.
#include "support/admin_client.hpp"
#include "support/cluster_nodes.hpp"
#include "support/http_client.hpp"
#include "support/wait.hpp"

#include <catch2/catch.hpp>

#include <array>
#include <iostream>

using namespace parley::test;
using steady = std::chrono::steady_clock;

namespace {

/// parley-echo answers at once (no pacing), so a request costs milliseconds.
const std::string echo_now = "[chat]\necho_tokens_per_second = 0\n";

http_reply chat(uint16_t port, const std::string& key) {
  json body = {{"model", "parley-echo"},
               {"messages", {{{"role", "user"}, {"content", "hello cluster"}}}}};
  return fetch(port, http::verb::post, "/v1/chat/completions", body.dump(), bearer(key));
}

/// A tenant with room for every request of the test, its key, and one successful chat
/// through every node (each node's key cache now holds the key).
struct warmed_tenant {
  std::string id, key_id, key;

  warmed_tenant(cluster_nodes& nodes, const std::string& slug) {
    auto t = create_tenant(nodes.port(0), slug,
                           {{"config", {{"limits", {{"requests_per_minute", 100000},
                                                    {"tokens_per_minute", 0},
                                                    {"tokens_per_day", 0}}}}}});
    id = t["id"].get<std::string>();
    auto k = create_key(nodes.port(0), id);
    key_id = k["id"].get<std::string>();
    key = k["key"].get<std::string>();
    for (int i = 0; i < nodes.size(); ++i) {
      auto r = chat(nodes.port(i), key);
      INFO("warming node " << i << ": " << r.body);
      REQUIRE(r.status == 200);
    }
  }
};

/// Polls nodes 1..n-1 (from `since`, with the 1 s deadline) until `refused` holds for each;
/// returns how long after `since` each node first answered so (-1: not within the second).
template <class Probe>
std::vector<int64_t> time_until_every_node(cluster_nodes& nodes, steady::time_point since,
                                           Probe refused) {
  std::vector<int64_t> ms(static_cast<std::size_t>(nodes.size()), -1);
  wait_until(since + std::chrono::seconds(1), [&] {
    bool all = true;
    for (int i = 1; i < nodes.size(); ++i) {
      auto& m = ms[static_cast<std::size_t>(i)];
      if (m < 0 && refused(i))
        m = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - since).count();
      all = all && m >= 0;
    }
    return all;
  });
  return ms;
}

void report(const char* what, const std::vector<int64_t>& ms) {
  std::cout << "cluster invalidation, " << what << ":";
  for (std::size_t i = 1; i < ms.size(); ++i)
    std::cout << " node " << i << " " << ms[i] << " ms";
  std::cout << std::endl;
}

} // namespace

TEST_CASE("a key revoked through one node is refused by every other node within a second",
          "[cluster][pg][integration]") {
  cluster_nodes nodes(3, echo_now);
  warmed_tenant t(nodes, "inval-revoke");

  auto r = admin_call(nodes.port(0), http::verb::post,
                      "/admin/v1/tenants/" + t.id + "/keys/" + t.key_id + "/revoke");
  REQUIRE(r.status == 200);
  auto revoked = steady::now();
  CHECK(chat(nodes.port(0), t.key).status == 401); // the node that revoked drops it at once

  auto ms = time_until_every_node(nodes, revoked,
                                  [&](int i) { return chat(nodes.port(i), t.key).status == 401; });
  report("key revoked", ms);
  for (int i = 1; i < nodes.size(); ++i) {
    INFO("node " << i << " refuses the revoked key (ms after the revoke: " << ms[i] << ")");
    REQUIRE(ms[static_cast<std::size_t>(i)] >= 0);
  }
  // And keeps refusing it: nothing fills the cache again with the old row.
  for (int i = 0; i < nodes.size(); ++i)
    CHECK(chat(nodes.port(i), t.key).status == 401);
}

TEST_CASE("a tenant suspended through one node is refused by every other node within a second",
          "[cluster][pg][integration]") {
  cluster_nodes nodes(3, echo_now);
  warmed_tenant t(nodes, "inval-suspend");

  auto r = admin_call(nodes.port(0), http::verb::patch, "/admin/v1/tenants/" + t.id,
                      {{"status", "suspended"}});
  REQUIRE(r.status == 200);
  auto suspended = steady::now();
  CHECK(chat(nodes.port(0), t.key).status == 403);

  auto ms = time_until_every_node(nodes, suspended,
                                  [&](int i) { return chat(nodes.port(i), t.key).status == 403; });
  report("tenant suspended", ms);
  for (int i = 1; i < nodes.size(); ++i) {
    INFO("node " << i << " refuses the suspended tenant (ms after the change: " << ms[i] << ")");
    REQUIRE(ms[static_cast<std::size_t>(i)] >= 0);
  }

  // Active again: served again everywhere, within the second too.
  r = admin_call(nodes.port(0), http::verb::patch, "/admin/v1/tenants/" + t.id,
                 {{"status", "active"}});
  REQUIRE(r.status == 200);
  auto resumed = steady::now();
  ms = time_until_every_node(nodes, resumed,
                             [&](int i) { return chat(nodes.port(i), t.key).status == 200; });
  report("tenant active again", ms);
  for (int i = 1; i < nodes.size(); ++i) {
    INFO("node " << i << " serves the tenant again (ms after the change: " << ms[i] << ")");
    REQUIRE(ms[static_cast<std::size_t>(i)] >= 0);
  }
}

TEST_CASE("a tenant's limits changed through one node apply to requests through every node",
          "[cluster][pg][integration]") {
  cluster_nodes nodes(3, echo_now);
  warmed_tenant t(nodes, "inval-limits");

  auto r = admin_call(nodes.port(0), http::verb::patch, "/admin/v1/tenants/" + t.id,
                      {{"config", {{"limits", {{"requests_per_minute", 3}}}}}});
  INFO(r.body);
  REQUIRE(r.status == 200);
  auto changed = steady::now();

  // Listing the models takes nothing from the limits, and shows the tenant actor's limits as
  // they stand after the request (which carries its node's view of the tenant's config).
  auto ms = time_until_every_node(nodes, changed, [&](int i) {
    return fetch(nodes.port(i), http::verb::get, "/v1/models", {}, bearer(t.key))
             .header("x-ratelimit-limit-requests") == "3";
  });
  report("limits changed", ms);
  for (int i = 1; i < nodes.size(); ++i) {
    INFO("node " << i << " applies the new limit (ms after the change: " << ms[i] << ")");
    REQUIRE(ms[static_cast<std::size_t>(i)] >= 0);
  }

  // Enforced as one limit, whichever node a request comes through: exactly 3 of 6 pass.
  int ok = 0, limited = 0;
  for (int n = 0; n < 6; ++n) {
    auto c = chat(nodes.port(1 + n % 2), t.key);
    INFO("request " << n << ": " << c.status << " " << c.body);
    CHECK((c.status == 200 || c.status == 429));
    (c.status == 200 ? ok : limited) += 1;
  }
  CHECK(ok == 3);
  CHECK(limited == 3);
}
