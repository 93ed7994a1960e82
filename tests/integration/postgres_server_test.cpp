#include "support/http_client.hpp"
#include "support/pg_schema.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include <csignal>
#include <cstdlib>

using namespace parley::test;
using json = nlohmann::json;
namespace http = boost::beast::http;

namespace {
std::string pg_dsn() {
  const char* dsn = std::getenv("PARLEY_TEST_PG_DSN");
  REQUIRE(dsn != nullptr); // [pg] tests never pass without a real PostgreSQL
  return dsn;
}

const std::string admin = "pg-admin-key-0123456789abcdef0123456789";

std::map<std::string, std::string> admin_h() { return {{"Authorization", "Bearer " + admin}}; }
} // namespace

TEST_CASE("on PostgreSQL a tenant key works end to end, dies on revoke, and no secret is stored",
          "[pg][integration]") {
  pg_schema schema;
  temp_dir d;
  uint16_t port = 0;
  std::string cfg = "[http]\nlisten = \"127.0.0.1:0\"\n[data]\ndir = \"" + d.path() +
                    "\"\n[store]\nbackend = \"postgres\"\n";
  auto env = std::map<std::string, std::string>{{"PARLEY_STORE_POSTGRES_DSN", schema.scoped_dsn()},
                                                {"PARLEY_ADMIN_KEY", admin}};
  auto proc = start_parley(d, cfg, port, env);
  auto ready = fetch(port, http::verb::get, "/readyz", "", admin_h());
  INFO(ready.body);
  CHECK(ready.status == 200);
  CHECK(ready.body.find("postgres reachable") != std::string::npos);

  auto t = fetch(port, http::verb::post, "/admin/v1/tenants", json{{"slug", "pg-co"}, {"name", "PG"}}.dump(),
                 admin_h());
  INFO(t.body);
  REQUIRE(t.status == 201);
  std::string tid = json::parse(t.body)["id"];
  auto k = fetch(port, http::verb::post, "/admin/v1/tenants/" + tid + "/keys", json{{"name", "k"}}.dump(),
                 admin_h());
  REQUIRE(k.status == 201);
  auto kj = json::parse(k.body);
  std::string key = kj["key"], kid = kj["id"];
  CHECK(fetch(port, http::verb::get, "/v1/models", {}, {{"Authorization", "Bearer " + key}}).status == 200);
  auto dup = fetch(port, http::verb::post, "/admin/v1/tenants", json{{"slug", "pg-co"}, {"name", "PG"}}.dump(),
                   admin_h());
  CHECK(dup.status == 409);

  // No table holds the secret.
  auto secret = key.substr(key.find('_', 5) + 1);
  {
    pqxx::connection c(schema.dsn());
    pqxx::work w(c);
    auto tables = w.exec("SELECT table_name FROM information_schema.tables WHERE table_schema = " +
                         w.quote(schema.name()));
    CHECK(tables.size() >= 6);
    for (auto row : tables) {
      auto name = row[0].as<std::string>();
      auto rows = w.exec("SELECT t::text FROM " + schema.name() + "." + name + " t");
      for (auto r : rows) {
        INFO(name);
        CHECK(r[0].as<std::string>().find(secret) == std::string::npos);
      }
    }
  }

  auto rev = fetch(port, http::verb::post, "/admin/v1/tenants/" + tid + "/keys/" + kid + "/revoke", {},
                   admin_h());
  CHECK(rev.status == 200);
  CHECK(fetch(port, http::verb::get, "/v1/models", {}, {{"Authorization", "Bearer " + key}}).status == 401);
  proc->signal(SIGTERM);
  CHECK(proc->wait_exit(std::chrono::seconds(10)) == std::optional<int>(0));
  CHECK(proc->output().find(secret) == std::string::npos);
}

TEST_CASE("readyz answers 503 while PostgreSQL is unreachable", "[pg][integration]") {
  (void)pg_dsn();
  temp_dir d;
  uint16_t port = 0;
  // A loopback port nobody listens on: the store is unreachable from the start.
  std::string cfg = "[http]\nlisten = \"127.0.0.1:0\"\n[data]\ndir = \"" + d.path() +
                    "\"\n[store]\nbackend = \"postgres\"\nacquire_timeout_ms = 500\n";
  auto proc = start_parley(d, cfg, port,
                           {{"PARLEY_STORE_POSTGRES_DSN",
                             "postgresql://postgres@127.0.0.1:1/none?connect_timeout=1"}});
  auto r = fetch(port, http::verb::get, "/readyz");
  INFO(r.body);
  CHECK(r.status == 503);
  CHECK(fetch(port, http::verb::get, "/healthz").status == 200);
}
