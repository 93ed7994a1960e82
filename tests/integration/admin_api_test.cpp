#include "support/admin_client.hpp"
#include "support/wait.hpp"

#include <catch2/catch.hpp>

#include <filesystem>
#include <set>
#include <fstream>
#include <sstream>

using namespace parley::test;
namespace http = boost::beast::http;

namespace {
void expect_error(const http_reply& r, int status, const std::string& code,
                  const std::string& param = "") {
  INFO(r.body);
  REQUIRE(r.status == status);
  auto j = json::parse(r.body);
  if (code.empty())
    CHECK(j["error"]["code"].is_null());
  else
    CHECK(j["error"]["code"] == code);
  if (!param.empty())
    CHECK(j["error"]["param"] == param);
  CHECK_FALSE(r.header("x-request-id").empty());
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
} // namespace

TEST_CASE("admin routes need the admin key", "[admin][integration]") {
  server_fixture srv;
  expect_error(fetch(srv.port(), http::verb::get, "/admin/v1/tenants"), 401, "invalid_api_key");
  expect_error(fetch(srv.port(), http::verb::get, "/admin/v1/tenants", {},
                     {{"Authorization", "Bearer wrong-key"}}),
               401, "invalid_api_key");
  CHECK(admin_call(srv.port(), http::verb::get, "/admin/v1/tenants").status == 200);
}

TEST_CASE("tenants are created, read, listed with cursors, patched and soft-deleted",
          "[admin][integration]") {
  server_fixture srv;
  auto t = create_tenant(srv.port(), "acme", {{"config", {{"limits", {{"requests_per_minute", 60}}}}}});
  CHECK(t["object"] == "tenant");
  CHECK(t["slug"] == "acme");
  CHECK(t["status"] == "active");
  CHECK(t["config"]["limits"]["requests_per_minute"] == 60);
  CHECK(t["config"]["allowed_models"] == json::array({"*"}));
  std::string id = t["id"];
  CHECK(id.rfind("ten_", 0) == 0);

  auto got = admin_call(srv.port(), http::verb::get, "/admin/v1/tenants/" + id);
  REQUIRE(got.status == 200);
  CHECK(json::parse(got.body)["name"] == "Tenant acme");

  for (int i = 0; i < 4; ++i)
    create_tenant(srv.port(), "t" + std::to_string(i));
  auto p1 = json::parse(admin_call(srv.port(), http::verb::get, "/admin/v1/tenants?limit=2").body);
  CHECK(p1["data"].size() == 2);
  CHECK(p1["has_more"] == true);
  std::set<std::string> seen;
  std::string after = p1["next_after"];
  for (auto& x : p1["data"])
    seen.insert(x["id"].get<std::string>());
  while (true) {
    auto p = json::parse(
      admin_call(srv.port(), http::verb::get, "/admin/v1/tenants?limit=2&after=" + after).body);
    for (auto& x : p["data"])
      CHECK(seen.insert(x["id"].get<std::string>()).second);
    if (!p["has_more"].get<bool>())
      break;
    after = p["next_after"];
  }
  CHECK(seen.size() == 5);

  auto patched = admin_call(srv.port(), http::verb::patch, "/admin/v1/tenants/" + id,
                            {{"name", "Acme Corp"},
                             {"config", {{"limits", {{"tokens_per_day", 1000}}},
                                         {"system_prompt", "Be brief."}}}});
  INFO(patched.body);
  REQUIRE(patched.status == 200);
  auto pj = json::parse(patched.body);
  CHECK(pj["name"] == "Acme Corp");
  CHECK(pj["config"]["limits"]["tokens_per_day"] == 1000);
  CHECK(pj["config"]["limits"]["requests_per_minute"] == 60); // merged, not replaced
  CHECK(pj["config"]["system_prompt"] == "Be brief.");

  auto del = admin_call(srv.port(), http::verb::delete_, "/admin/v1/tenants/" + id);
  REQUIRE(del.status == 200);
  CHECK(json::parse(del.body)["deleted"] == true);
  CHECK(json::parse(admin_call(srv.port(), http::verb::get, "/admin/v1/tenants/" + id).body)["status"] ==
        "deleted");
  auto all = json::parse(admin_call(srv.port(), http::verb::get, "/admin/v1/tenants?limit=100").body);
  CHECK(all["data"].size() == 4);
  auto with_deleted = json::parse(
    admin_call(srv.port(), http::verb::get, "/admin/v1/tenants?limit=100&include_deleted=true").body);
  CHECK(with_deleted["data"].size() == 5);
  // The slug of a deleted tenant can be reused.
  create_tenant(srv.port(), "acme");
}

TEST_CASE("bad admin input gets a clear 4xx in OpenAI's shape", "[admin][integration]") {
  server_fixture srv([](parley::config::settings& s) { s.http.max_body_bytes = 4096; });
  auto port = srv.port();
  create_tenant(port, "dup");
  expect_error(admin_call(port, http::verb::post, "/admin/v1/tenants", {{"slug", "dup"}, {"name", "x"}}),
               409, "conflict", "slug");
  expect_error(admin_call(port, http::verb::post, "/admin/v1/tenants", {{"name", "x"}}), 400, "", "slug");
  expect_error(admin_call(port, http::verb::post, "/admin/v1/tenants", {{"slug", "ok"}}), 400, "", "name");
  expect_error(admin_call(port, http::verb::post, "/admin/v1/tenants",
                          {{"slug", "ok"}, {"name", 5}}),
               400, "", "name");
  expect_error(admin_call(port, http::verb::post, "/admin/v1/tenants",
                          {{"slug", "Bad Slug"}, {"name", "x"}}),
               400, "", "slug");
  expect_error(admin_call(port, http::verb::post, "/admin/v1/tenants",
                          {{"slug", "ok"}, {"name", "x"}, {"colour", "red"}}),
               400, "unknown_parameter", "colour");
  expect_error(admin_call(port, http::verb::post, "/admin/v1/tenants",
                          {{"slug", "ok"}, {"name", "x"},
                           {"config", {{"limits", {{"requests_per_minute", -1}}}}}}),
               400, "", "config.limits.requests_per_minute");
  expect_error(admin_call(port, http::verb::post, "/admin/v1/tenants",
                          {{"slug", "ok"}, {"name", "x"}, {"config", {{"limits", {{"rpm", 1}}}}}}),
               400, "", "config.limits.rpm");
  expect_error(admin_call(port, http::verb::post, "/admin/v1/tenants",
                          {{"slug", "ok"}, {"name", "x"},
                           {"config", {{"allowed_models", {"a"}}, {"default_model", "b"}}}}),
               400, "", "config.default_model");
  expect_error(fetch(port, http::verb::post, "/admin/v1/tenants", "{not json", admin_headers()), 400,
               "invalid_json");
  expect_error(fetch(port, http::verb::post, "/admin/v1/tenants", "[1,2]", admin_headers()), 400, "");
  expect_error(fetch(port, http::verb::post, "/admin/v1/tenants", std::string(8192, ' '), admin_headers()),
               413, "payload_too_large");
  expect_error(admin_call(port, http::verb::get, "/admin/v1/tenants/ten_nope"), 404, "not_found");
  expect_error(admin_call(port, http::verb::patch, "/admin/v1/tenants/ten_nope", {{"name", "x"}}), 404,
               "not_found");
  expect_error(admin_call(port, http::verb::delete_, "/admin/v1/tenants/ten_nope"), 404, "not_found");
  expect_error(admin_call(port, http::verb::get, "/admin/v1/tenants?limit=0"), 400, "", "limit");
  expect_error(admin_call(port, http::verb::get, "/admin/v1/tenants?limit=abc"), 400, "", "limit");
  expect_error(admin_call(port, http::verb::post, "/admin/v1/tenants/ten_nope/keys", {{"name", "k"}}),
               404, "not_found");
}

TEST_CASE("an API key works end to end until it is revoked", "[admin][auth][integration]") {
  server_fixture srv;
  auto port = srv.port();
  auto t = create_tenant(port, "keys", {{"config", {{"allowed_models", {"parley-echo"}}}}});
  auto k = create_key(port, t["id"]);
  std::string key = k["key"];
  CHECK(key.rfind("prly_" + k["id"].get<std::string>() + "_", 0) == 0);
  CHECK(key.size() >= 5 + 26 + 1 + 43);
  CHECK(k["scopes"] == json::array({"chat", "conversations"}));

  auto models = fetch(port, http::verb::get, "/v1/models", {}, bearer(key));
  INFO(models.body);
  REQUIRE(models.status == 200);
  auto mj = json::parse(models.body);
  CHECK(mj["object"] == "list");
  REQUIRE(mj["data"].size() == 1);
  CHECK(mj["data"][0]["id"] == "parley-echo");
  CHECK(mj["data"][0]["object"] == "model");

  auto one = fetch(port, http::verb::get, "/v1/models/parley-echo", {}, bearer(key));
  REQUIRE(one.status == 200);
  CHECK(json::parse(one.body)["id"] == "parley-echo");
  CHECK(json::parse(one.body)["object"] == "model");
  expect_error(fetch(port, http::verb::get, "/v1/models/gpt-nope", {}, bearer(key)), 404, "model_not_found");

  // Listing never shows secrets.
  auto list = admin_call(port, http::verb::get, "/admin/v1/tenants/" + t["id"].get<std::string>() + "/keys");
  REQUIRE(list.status == 200);
  CHECK(list.body.find(key.substr(key.size() - 20)) == std::string::npos);
  CHECK(json::parse(list.body)["data"][0].contains("key") == false);

  auto rev = admin_call(port, http::verb::post,
                        "/admin/v1/tenants/" + t["id"].get<std::string>() + "/keys/" +
                          k["id"].get<std::string>() + "/revoke");
  REQUIRE(rev.status == 200);
  CHECK_FALSE(json::parse(rev.body)["revoked_at"].is_null());
  expect_error(fetch(port, http::verb::get, "/v1/models", {}, bearer(key)), 401, "invalid_api_key");
}

TEST_CASE("missing, malformed and unknown keys answer 401", "[auth][integration]") {
  server_fixture srv;
  auto port = srv.port();
  expect_error(fetch(port, http::verb::get, "/v1/models"), 401, "invalid_api_key");
  expect_error(fetch(port, http::verb::get, "/v1/models", {}, bearer("sk-not-ours")), 401, "invalid_api_key");
  expect_error(fetch(port, http::verb::get, "/v1/models", {},
                     bearer("prly_01hzzzzzzzzzzzzzzzzzzzzzzz_" + std::string(43, 'A'))),
               401, "invalid_api_key");
  auto t = create_tenant(port, "wrongsecret");
  auto k = create_key(port, t["id"]);
  std::string key = k["key"];
  key.back() = key.back() == 'A' ? 'B' : 'A';
  expect_error(fetch(port, http::verb::get, "/v1/models", {}, bearer(key)), 401, "invalid_api_key");
}

TEST_CASE("an expired key fails", "[auth][integration]") {
  server_fixture srv;
  auto t = create_tenant(srv.port(), "expiring");
  auto before_create = std::chrono::steady_clock::now();
  auto k = create_key(srv.port(), t["id"], {{"expires_in_seconds", 1}});
  CHECK(fetch(srv.port(), http::verb::get, "/v1/models", {}, bearer(k["key"])).status == 200);
  // The expiry is a real time: wait until the key is refused (bounded), then check it was not
  // refused before its second was up.
  http_reply r;
  REQUIRE(wait_until(deadline_in(std::chrono::seconds(10)), [&] {
    r = fetch(srv.port(), http::verb::get, "/v1/models", {}, bearer(k["key"]));
    return r.status != 200;
  }, std::chrono::milliseconds(50)));
  CHECK(std::chrono::steady_clock::now() - before_create >= std::chrono::milliseconds(1000));
  expect_error(r, 401, "invalid_api_key");
}

TEST_CASE("a rotated key's old secret works only within its grace", "[auth][integration]") {
  server_fixture srv;
  auto port = srv.port();
  auto t = create_tenant(port, "rotating");
  std::string tid = t["id"];
  auto k = create_key(port, tid);
  std::string old_key = k["key"], kid = k["id"];
  auto base = "/admin/v1/tenants/" + tid + "/keys/" + kid;

  auto before_rotate = std::chrono::steady_clock::now();
  auto r1 = admin_call(port, http::verb::post, base + "/rotate", {{"grace_seconds", 2}});
  INFO(r1.body);
  REQUIRE(r1.status == 200);
  std::string new_key = json::parse(r1.body)["key"];
  CHECK(new_key != old_key);
  CHECK(fetch(port, http::verb::get, "/v1/models", {}, bearer(new_key)).status == 200);
  CHECK(fetch(port, http::verb::get, "/v1/models", {}, bearer(old_key)).status == 200);
  // The grace is a real time: wait until the old secret is refused (bounded), then check it
  // was not refused before the grace was up.
  int old_status = 200;
  REQUIRE(wait_until(deadline_in(std::chrono::seconds(10)), [&] {
    return (old_status = fetch(port, http::verb::get, "/v1/models", {}, bearer(old_key)).status) != 200;
  }, std::chrono::milliseconds(50)));
  CHECK(std::chrono::steady_clock::now() - before_rotate >= std::chrono::milliseconds(2000));
  CHECK(old_status == 401);
  CHECK(fetch(port, http::verb::get, "/v1/models", {}, bearer(new_key)).status == 200);

  // Without grace the previous secret stops at once.
  auto r2 = admin_call(port, http::verb::post, base + "/rotate");
  REQUIRE(r2.status == 200);
  std::string newest = json::parse(r2.body)["key"];
  CHECK(fetch(port, http::verb::get, "/v1/models", {}, bearer(new_key)).status == 401);
  CHECK(fetch(port, http::verb::get, "/v1/models", {}, bearer(newest)).status == 200);
}

TEST_CASE("suspending a tenant answers 403 and deleting it 401 on the next request",
          "[auth][integration]") {
  server_fixture srv;
  auto port = srv.port();
  auto t = create_tenant(port, "suspendme");
  std::string tid = t["id"];
  auto k = create_key(port, tid);
  CHECK(fetch(port, http::verb::get, "/v1/models", {}, bearer(k["key"])).status == 200);
  REQUIRE(admin_call(port, http::verb::patch, "/admin/v1/tenants/" + tid, {{"status", "suspended"}}).status == 200);
  expect_error(fetch(port, http::verb::get, "/v1/models", {}, bearer(k["key"])), 403, "permission_denied");
  REQUIRE(admin_call(port, http::verb::patch, "/admin/v1/tenants/" + tid, {{"status", "active"}}).status == 200);
  CHECK(fetch(port, http::verb::get, "/v1/models", {}, bearer(k["key"])).status == 200);
  REQUIRE(admin_call(port, http::verb::delete_, "/admin/v1/tenants/" + tid).status == 200);
  expect_error(fetch(port, http::verb::get, "/v1/models", {}, bearer(k["key"])), 401, "invalid_api_key");
}

TEST_CASE("one tenant cannot reach another tenant's keys", "[admin][integration]") {
  server_fixture srv;
  auto port = srv.port();
  auto a = create_tenant(port, "tenant-a");
  auto b = create_tenant(port, "tenant-b");
  auto ka = create_key(port, a["id"]);
  std::string b_id = b["id"], ka_id = ka["id"];
  expect_error(admin_call(port, http::verb::post, "/admin/v1/tenants/" + b_id + "/keys/" + ka_id + "/revoke"),
               404, "not_found");
  expect_error(admin_call(port, http::verb::post, "/admin/v1/tenants/" + b_id + "/keys/" + ka_id + "/rotate"),
               404, "not_found");
  auto list_b = json::parse(admin_call(port, http::verb::get, "/admin/v1/tenants/" + b_id + "/keys").body);
  CHECK(list_b["data"].empty());
  // Tenant A's key still works.
  CHECK(fetch(port, http::verb::get, "/v1/models", {}, bearer(ka["key"])).status == 200);
}

TEST_CASE("repeated authentication failures from one address are slowed with 429",
          "[auth][integration]") {
  server_fixture srv([](parley::config::settings& s) { s.auth.failed_auth_per_minute = 3; });
  for (int i = 0; i < 3; ++i)
    CHECK(fetch(srv.port(), http::verb::get, "/v1/models", {}, bearer("prly_x_guess")).status == 401);
  auto r = fetch(srv.port(), http::verb::get, "/v1/models", {}, bearer("prly_x_guess"));
  expect_error(r, 429, "too_many_failed_authentications");
  auto retry = std::stoi(r.header("retry-after"));
  CHECK(retry >= 1);
  CHECK(retry <= 60);
}

TEST_CASE("every admin mutation is in the audit log without secrets", "[admin][integration]") {
  server_fixture srv;
  auto port = srv.port();
  auto t = create_tenant(port, "audited");
  std::string tid = t["id"];
  auto k = create_key(port, tid);
  std::string kid = k["id"], key = k["key"];
  admin_call(port, http::verb::patch, "/admin/v1/tenants/" + tid, {{"name", "Audited"}});
  auto rev = admin_call(port, http::verb::post, "/admin/v1/tenants/" + tid + "/keys/" + kid + "/revoke");
  auto r = admin_call(port, http::verb::get, "/admin/v1/audit?tenant_id=" + tid);
  INFO(r.body);
  REQUIRE(r.status == 200);
  auto j = json::parse(r.body);
  std::vector<std::string> actions;
  for (auto& e : j["data"]) {
    actions.push_back(e["action"]);
    CHECK(e["actor"] == "admin");
    CHECK(e["tenant_id"] == tid);
    CHECK(e["request_id"].is_string());
  }
  CHECK(actions == std::vector<std::string>{"tenant.create", "key.create", "tenant.update", "key.revoke"});
  CHECK(j["data"][3]["request_id"] == rev.header("x-request-id"));
  CHECK(r.body.find(key.substr(key.size() - 20)) == std::string::npos);
  auto only_keys = json::parse(admin_call(port, http::verb::get, "/admin/v1/audit?action=key.create").body);
  REQUIRE(only_keys["data"].size() == 1);
  CHECK(only_keys["data"][0]["target"] == kid);
}

TEST_CASE("no key secret is stored in the database or written to the logs",
          "[admin][auth][integration]") {
  temp_dir data;
  std::string key, tail;
  {
    server_fixture srv(nullptr, data.path());
    auto t = create_tenant(srv.port(), "secretive");
    auto k = create_key(srv.port(), t["id"]);
    key = k["key"];
    tail = key.substr(key.find('_', 5) + 1);
    CHECK(fetch(srv.port(), http::verb::get, "/v1/models", {}, bearer(key)).status == 200);
    auto rot = admin_call(srv.port(), http::verb::post,
                          "/admin/v1/tenants/" + t["id"].get<std::string>() + "/keys/" +
                            k["id"].get<std::string>() + "/rotate");
    std::string rotated = json::parse(rot.body)["key"];
    auto logs = srv.logs();
    CHECK(logs.find(tail) == std::string::npos);
    CHECK(logs.find(rotated.substr(rotated.find('_', 5) + 1)) == std::string::npos);
    CHECK(logs.find(parley::test::server_fixture::admin_key) == std::string::npos);
  }
  int files = 0;
  for (auto& f : std::filesystem::recursive_directory_iterator(data.path())) {
    if (!f.is_regular_file() || f.path().filename() == "pepper")
      continue;
    ++files;
    INFO(f.path());
    CHECK(read_all(f.path().string()).find(tail) == std::string::npos);
  }
  CHECK(files >= 1);
}

TEST_CASE("tenants and keys survive a restart", "[admin][integration]") {
  temp_dir data;
  std::string key, tid;
  {
    server_fixture srv(nullptr, data.path());
    auto t = create_tenant(srv.port(), "durable");
    tid = t["id"];
    key = create_key(srv.port(), tid)["key"];
  }
  server_fixture again(nullptr, data.path());
  auto got = admin_call(again.port(), http::verb::get, "/admin/v1/tenants/" + tid);
  REQUIRE(got.status == 200);
  CHECK(json::parse(got.body)["slug"] == "durable");
  CHECK(fetch(again.port(), http::verb::get, "/v1/models", {}, bearer(key)).status == 200);
}

TEST_CASE("last_used_at is written behind in batches", "[auth][integration]") {
  server_fixture srv([](parley::config::settings& s) { s.auth.last_used_flush_seconds = 1; });
  auto t = create_tenant(srv.port(), "lastused");
  auto k = create_key(srv.port(), t["id"]);
  CHECK(k["last_used_at"].is_null());
  for (int i = 0; i < 5; ++i)
    CHECK(fetch(srv.port(), http::verb::get, "/v1/models", {}, bearer(k["key"])).status == 200);
  auto path = "/admin/v1/tenants/" + t["id"].get<std::string>() + "/keys";
  json last;
  // Written behind, within last_used_flush_seconds: wait for it (bounded).
  wait_until(deadline_in(std::chrono::seconds(10)), [&] {
    last = json::parse(admin_call(srv.port(), http::verb::get, path).body)["data"][0]["last_used_at"];
    return !last.is_null();
  }, std::chrono::milliseconds(100));
  REQUIRE_FALSE(last.is_null());
  CHECK(last.get<int64_t>() >= k["created_at"].get<int64_t>());
}
