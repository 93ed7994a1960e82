#include "support/http_client.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <boost/asio/ip/tcp.hpp>

#include <csignal>

using namespace parley::test;
using json = nlohmann::json;
namespace http = boost::beast::http;

namespace {
/// Runs `parley args...` with the data dir set; returns (exit status, output).
std::pair<int, std::string> run_parley(const temp_dir& d, std::vector<std::string> args) {
  args.insert(args.begin(), PARLEY_BINARY);
  static int n = 0;
  child_process p(args, {{"PARLEY_DATA_DIR", d.path()}, {"PARLEY_LOG_LEVEL", "warn"}},
                  d.path() + "/cli-" + std::to_string(++n) + ".out");
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
