#include "parley/actors/cluster.hpp"
#include "parley/persistence/open.hpp"
#include "support/http_client.hpp"
#include "support/pg_schema.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <boost/asio/ip/tcp.hpp>

#include <csignal>

using namespace parley::test;
using json = nlohmann::json;
namespace http = boost::beast::http;

namespace {
/// Runs `parley args...` with the data dir set (and `env`); returns (exit status, output).
std::pair<int, std::string> run_parley(const temp_dir& d, std::vector<std::string> args,
                                       std::map<std::string, std::string> env = {}) {
  args.insert(args.begin(), PARLEY_BINARY);
  static int n = 0;
  env.emplace("PARLEY_DATA_DIR", d.path());
  env.emplace("PARLEY_LOG_LEVEL", "warn");
  child_process p(args, env, d.path() + "/cli-" + std::to_string(++n) + ".out");
  auto rc = p.wait_exit(std::chrono::seconds(20));
  REQUIRE(rc);
  return {*rc, p.output()};
}
} // namespace

TEST_CASE("parley migrate applies the schema once", "[cli][integration]") {
  temp_dir d;
  auto [rc1, out1] = run_parley(d, {"migrate"});
  INFO(out1);
  CHECK(rc1 == 0);
  CHECK(out1.find("applied migration 1") != std::string::npos);
  auto [rc2, out2] = run_parley(d, {"migrate"});
  CHECK(rc2 == 0);
  CHECK(out2.find("up to date") != std::string::npos);
}

TEST_CASE("parley admin provisions tenants and keys that the server accepts",
          "[cli][integration]") {
  temp_dir d;
  auto [rc, out] = run_parley(d, {"admin", "--json", "tenant", "create", "--slug", "cli-co",
                                  "--name", "CLI Co", "--config",
                                  R"({"allowed_models":["parley-echo"]})"});
  INFO(out);
  REQUIRE(rc == 0);
  auto tenant = json::parse(out);
  std::string tid = tenant["id"];
  CHECK(tenant["config"]["allowed_models"] == json::array({"parley-echo"}));

  auto [rc_dup, out_dup] = run_parley(d, {"admin", "tenant", "create", "--slug", "cli-co", "--name", "x"});
  CHECK(rc_dup == 1);
  CHECK(out_dup.find("already exists") != std::string::npos);

  auto [rck, outk] = run_parley(d, {"admin", "--json", "key", "create", tid, "--name", "ci"});
  INFO(outk);
  REQUIRE(rck == 0);
  auto key = json::parse(outk);
  std::string secret_key = key["key"];

  auto [rcl, outl] = run_parley(d, {"admin", "key", "list", tid});
  CHECK(rcl == 0);
  CHECK(outl.find(key["id"].get<std::string>()) != std::string::npos);
  CHECK(outl.find(secret_key.substr(secret_key.find('_', 5) + 1)) == std::string::npos);

  auto [rct, outt] = run_parley(d, {"admin", "tenant", "list"});
  CHECK(rct == 0);
  CHECK(outt.find("cli-co") != std::string::npos);
  CHECK(outt.find("SLUG") != std::string::npos);

  {
    uint16_t port = 0;
    auto server = start_parley(d, "[http]\nlisten = \"127.0.0.1:0\"\n[data]\ndir = \"" + d.path() + "\"\n", port);
    CHECK(fetch(port, http::verb::get, "/v1/models", {}, {{"Authorization", "Bearer " + secret_key}}).status == 200);
    server->signal(SIGTERM);
    CHECK(server->wait_exit(std::chrono::seconds(10)) == std::optional<int>(0));
  }

  auto [rcr, outr] = run_parley(d, {"admin", "key", "revoke", tid, key["id"].get<std::string>()});
  CHECK(rcr == 0);
  uint16_t port = 0;
  auto server = start_parley(d, "[http]\nlisten = \"127.0.0.1:0\"\n[data]\ndir = \"" + d.path() + "\"\n", port);
  CHECK(fetch(port, http::verb::get, "/v1/models", {}, {{"Authorization", "Bearer " + secret_key}}).status == 401);

  auto [rcg, outg] = run_parley(d, {"admin", "tenant", "get", "ten_missing"});
  CHECK(rcg == 1);
  auto [rcu, outu] = run_parley(d, {"admin", "tenant"});
  CHECK(rcu == 2);
}

TEST_CASE("parley serve exits with an error when its port is taken", "[cli][integration]") {
  temp_dir d;
  // Hold a listening socket, then ask parley to listen on the same port.
  boost::asio::io_context ioc;
  boost::asio::ip::tcp::acceptor taken(ioc, {boost::asio::ip::make_address("127.0.0.1"), 0});
  auto port = taken.local_endpoint().port();
  child_process p({PARLEY_BINARY, "serve"},
                  {{"PARLEY_DATA_DIR", d.path()},
                   {"PARLEY_HTTP_LISTEN", "127.0.0.1:" + std::to_string(port)}},
                  d.path() + "/serve.out");
  // Everything built before the listener (the store, the actors) stops again: the process
  // ends instead of hanging on actors that never ran.
  auto rc = p.wait_exit(std::chrono::seconds(30));
  INFO(p.output());
  REQUIRE(rc);
  CHECK(*rc != 0);
  CHECK(p.output().find("start-up failed") != std::string::npos);
}

TEST_CASE("parley admin cluster says that a SQLite deployment is single-node", "[cli][integration]") {
  temp_dir d;
  for (auto args : {std::vector<std::string>{"admin", "cluster"},
                    std::vector<std::string>{"admin", "cluster", "--tenant", "ten_x", "--json"}}) {
    auto [rc, out] = run_parley(d, args);
    INFO(out);
    CHECK(rc == 1);
    CHECK(out.find("SQLite deployments are single-node") != std::string::npos);
  }
}

TEST_CASE("parley admin cluster shows the nodes and a tenant's owner from the PostgreSQL store",
          "[cli][integration][pg]") {
  namespace persistence = parley::persistence;
  pg_schema schema;
  temp_dir d;
  std::map<std::string, std::string> env{{"PARLEY_STORE_BACKEND", "postgres"},
                                         {"PARLEY_STORE_POSTGRES_DSN", schema.scoped_dsn()}};

  // Before any node joined: an empty list (the CLI brings the schema up itself).
  {
    auto [rc, out] = run_parley(d, {"admin", "cluster", "--json"}, env);
    INFO(out);
    REQUIRE(rc == 0);
    auto view = json::parse(out);
    CHECK(view["enabled"] == true);
    CHECK(view["nodes"].empty());
  }

  // Two nodes join through the store directly (no server), a third joins and leaves.
  parley::config::store_settings st;
  st.postgres_dsn = schema.scoped_dsn();
  auto store = persistence::open_postgres_store(st);
  REQUIRE(store->migrate().ok());
  auto* cluster = store->cluster();
  REQUIRE(cluster);
  auto join = [&](const std::string& id) {
    auto lease = cluster->join_node(id, id + ".internal:7947", id + ".internal:8080", 60000);
    REQUIRE(lease.ok());
    return lease->incarnation;
  };
  auto a = join("node-a");
  auto b = join("node-b");
  auto c = join("node-c");
  REQUIRE(cluster->set_node_status("node-b", b, "left").ok());
  b = join("node-b"); // incarnation 2
  for (std::string t : {"ten_1", "ten_2"})
    REQUIRE(cluster->claim_tenant(t, "node-a", a)->claimed);
  REQUIRE(cluster->claim_tenant("ten_3", "node-b", b)->claimed);
  REQUIRE(cluster->claim_tenant("ten_4", "node-c", c)->claimed);
  REQUIRE(cluster->set_node_status("node-c", c, "left").ok());

  auto [rc, out] = run_parley(d, {"admin", "cluster", "--json"}, env);
  INFO(out);
  REQUIRE(rc == 0);
  auto view = json::parse(out);
  CHECK(view["object"] == "cluster");
  CHECK(view["enabled"] == true);
  REQUIRE(view["nodes"].size() == 3);
  auto& na = view["nodes"][0];
  auto& nb = view["nodes"][1];
  auto& nc = view["nodes"][2];
  CHECK(na["id"] == "node-a");
  CHECK(na["incarnation"] == 1);
  CHECK(na["status"] == "active");
  CHECK(na["live"] == true);
  CHECK(na["address"] == "node-a.internal:7947");
  CHECK(na["http_address"] == "node-a.internal:8080");
  CHECK(na["tenants"] == 2);
  CHECK(na["lease_age_ms"].get<int64_t>() >= 0);
  CHECK(na["lease_remaining_ms"].get<int64_t>() > 0);
  CHECK(nb["id"] == "node-b");
  CHECK(nb["incarnation"] == 2);
  CHECK(nb["tenants"] == 1);
  CHECK(nc["id"] == "node-c");
  CHECK(nc["status"] == "left");
  CHECK(nc["live"] == false);
  CHECK(nc["tenants"] == 0);
  CHECK(view.count("tenant") == 0);

  // A tenant: its owner, and where placement over the live active nodes puts it.
  std::vector<parley::actors::cluster_member> live{{"node-a", a, "", 0, true},
                                                   {"node-b", b, "", 0, true}};
  {
    auto [rct, outt] = run_parley(d, {"admin", "cluster", "--tenant", "ten_1", "--json"}, env);
    INFO(outt);
    REQUIRE(rct == 0);
    auto t = json::parse(outt)["tenant"];
    CHECK(t["id"] == "ten_1");
    CHECK(t["owner"] == "node-a");
    CHECK(t["owner_incarnation"] == a);
    CHECK(t["epoch"] == 1);
    CHECK(t["owner_live"] == true);
    CHECK(t["placed_on"] == parley::actors::place("ten_1", live));
  }
  {
    // Its owner left: recorded still, but not live. Never claimed: no owner.
    auto [rc4, out4] = run_parley(d, {"admin", "--json", "cluster", "--tenant", "ten_4"}, env);
    INFO(out4);
    REQUIRE(rc4 == 0);
    auto t4 = json::parse(out4)["tenant"];
    CHECK(t4["owner"] == "node-c");
    CHECK(t4["owner_live"] == false);
    auto [rcn, outn] = run_parley(d, {"admin", "cluster", "--tenant", "ten_new", "--json"}, env);
    INFO(outn);
    REQUIRE(rcn == 0);
    auto tn = json::parse(outn)["tenant"];
    CHECK(tn["owner"].is_null());
    CHECK(tn["placed_on"] == parley::actors::place("ten_new", live));
  }

  // The table names every node, its status and the tenant's owner.
  auto [rcx, table] = run_parley(d, {"admin", "cluster", "--tenant", "ten_1"}, env);
  INFO(table);
  CHECK(rcx == 0);
  CHECK(table.find("INCARNATION") != std::string::npos);
  CHECK(table.find("LEASE_AGE") != std::string::npos);
  CHECK(table.find("node-c.internal:7947") != std::string::npos);
  CHECK(table.find("left") != std::string::npos);
  CHECK(table.find("owner:     node-a (incarnation 1, epoch 1, live)") != std::string::npos);
}
