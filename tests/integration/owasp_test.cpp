// The OWASP API Security Top 10 (2023), one test per applicable item, each named after it and
// each asserting the refusal. API6 (business flows): parley has no purchase/sign-up style flow;
// the flow worth abusing is spending upstream tokens, capped per tenant (the API6 test below
// shows the per-tenant cap isolates tenants; limits_test.cpp covers the limits themselves).
#include "support/admin_client.hpp"
#include "support/raw_connection.hpp"
#include "support/raw_upstream.hpp"
#include "support/sse.hpp"
#include "support/wait.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <set>
#include <sstream>

using namespace parley::test;
namespace http = boost::beast::http;
using namespace std::chrono_literals;
using namespace std::string_literals;

namespace {

constexpr const char* metrics_key = "test-metrics-key-0123456789abcdef01234567";

struct tenant_key {
  std::string tenant_id, key_id, key;
};

tenant_key provision(uint16_t port, const std::string& slug, const json& extra = json::object()) {
  auto t = create_tenant(port, slug, extra);
  auto k = create_key(port, t["id"]);
  return {t["id"], k["id"], k["key"]};
}

json user(const std::string& text) { return {{"role", "user"}, {"content", text}}; }

http_reply chat(uint16_t port, const std::string& key, const json& body) {
  return fetch(port, http::verb::post, "/v1/chat/completions", body.dump(), bearer(key));
}

/// OpenAI's error shape: {"error":{"message","type","param","code"}} and nothing else.
void expect_error_shape(const http_reply& r) {
  INFO(r.status << " " << r.body.substr(0, 400));
  auto j = json::parse(r.body, nullptr, false);
  REQUIRE(j.is_object());
  CHECK(j.size() == 1);
  REQUIRE(j.contains("error"));
  auto& e = j["error"];
  CHECK(e["message"].is_string());
  CHECK(e["type"].is_string());
  CHECK(e.contains("param"));
  CHECK(e.contains("code"));
  for (auto& [k, v] : e.items())
    CHECK((k == "message" || k == "type" || k == "param" || k == "code"));
}

void expect_error(const http_reply& r, int status, const std::string& code, const std::string& param = "") {
  INFO(r.body.substr(0, 400));
  REQUIRE(r.status == status);
  expect_error_shape(r);
  auto j = json::parse(r.body);
  if (!code.empty())
    CHECK(j["error"]["code"] == code);
  if (!param.empty())
    CHECK(j["error"]["param"] == param);
}

std::string items_text(uint16_t port, const std::string& key, const std::string& conversation) {
  return fetch(port, http::verb::get, "/v1/conversations/" + conversation + "/items", {}, bearer(key)).body;
}

/// A node whose fallback upstream (every model not served otherwise) is `url`.
std::string g_upstream_url;
void with_upstream(parley::config::settings& s) {
  s.upstream.url = g_upstream_url;
  s.upstream.key = "sk-upstream-secret-0123456789abcdef";
  s.chat.echo_tokens_per_second = 0;
  // One attempt, no breaker: each request sees exactly the upstream's answer.
  s.resilience.max_attempts = 1;
  s.resilience.breaker_failures = 0;
  s.resilience.breaker_failure_percent = 0;
}

json fake_stats(uint16_t fake_port) { return json::parse(fetch(fake_port, http::verb::get, "/_stats").body); }

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

} // namespace

TEST_CASE("API1:2023 broken object level authorization: tenant A cannot read or delete tenant B's conversation",
          "[security][integration]") {
  server_fixture srv([](parley::config::settings& s) { s.chat.echo_tokens_per_second = 0; });
  auto port = srv.port();
  auto a = provision(port, "bola-a");
  auto b = provision(port, "bola-b");
  auto created = fetch(port, http::verb::post, "/v1/conversations", "{}", bearer(b.key));
  REQUIRE(created.status == 200);
  std::string conv_b = json::parse(created.body)["id"];
  REQUIRE(chat(port, b.key, {{"model", "parley-echo"}, {"conversation", conv_b}, {"messages", {user("b private words")}}})
            .status == 200);
  auto before = items_text(port, b.key, conv_b);
  REQUIRE(before.find("b private words") != std::string::npos);

  // Tenant A, with a valid key of its own, by B's conversation id.
  expect_error(fetch(port, http::verb::get, "/v1/conversations/" + conv_b, {}, bearer(a.key)), 404, "not_found");
  expect_error(fetch(port, http::verb::get, "/v1/conversations/" + conv_b + "/items", {}, bearer(a.key)), 404,
               "not_found");
  expect_error(fetch(port, http::verb::delete_, "/v1/conversations/" + conv_b, {}, bearer(a.key)), 404, "not_found");
  auto into = chat(port, a.key, {{"model", "parley-echo"}, {"conversation", conv_b}, {"messages", {user("a was here")}}});
  INFO(into.body);
  CHECK(into.status == 404);
  CHECK(into.body.find("b private words") == std::string::npos);
  auto listed = fetch(port, http::verb::get, "/v1/conversations?limit=100", {}, bearer(a.key));
  REQUIRE(listed.status == 200);
  CHECK(listed.body.find(conv_b) == std::string::npos);
  // The refusal is the same as for an id that exists nowhere: no existence oracle.
  auto nowhere = fetch(port, http::verb::get, "/v1/conversations/conv_01aaaaaaaaaaaaaaaaaaaaaaaa", {}, bearer(a.key));
  CHECK(nowhere.status == 404);
  CHECK(json::parse(nowhere.body)["error"]["code"] == "not_found");

  // B's conversation is untouched: still there, same items, nothing of A's in it.
  CHECK(fetch(port, http::verb::get, "/v1/conversations/" + conv_b, {}, bearer(b.key)).status == 200);
  CHECK(items_text(port, b.key, conv_b) == before);

  // B's keys and tenant record sit behind admin-only paths: A's key gets 401 there.
  auto b_base = "/admin/v1/tenants/" + b.tenant_id;
  expect_error(fetch(port, http::verb::get, b_base, {}, bearer(a.key)), 401, "invalid_api_key");
  expect_error(fetch(port, http::verb::get, b_base + "/keys", {}, bearer(a.key)), 401, "invalid_api_key");
  expect_error(fetch(port, http::verb::post, b_base + "/keys/" + b.key_id + "/revoke", "", bearer(a.key)), 401,
               "invalid_api_key");
  expect_error(fetch(port, http::verb::get, b_base + "/usage", {}, bearer(a.key)), 401, "invalid_api_key");
  CHECK(fetch(port, http::verb::get, "/v1/models", {}, bearer(b.key)).status == 200);
}

TEST_CASE("API2:2023 broken authentication: wrong, malformed, expired and revoked keys are refused 401",
          "[security][integration]") {
  server_fixture srv([](parley::config::settings& s) { s.auth.failed_auth_per_minute = 0; });
  auto port = srv.port();
  auto t = provision(port, "authn");
  auto models = [&](const std::map<std::string, std::string>& h, const std::string& target = "/v1/models") {
    return fetch(port, http::verb::get, target, {}, h);
  };
  REQUIRE(models(bearer(t.key)).status == 200);

  auto wrong = t.key;
  wrong.back() = wrong.back() == 'A' ? 'B' : 'A';
  expect_error(models(bearer(wrong)), 401, "invalid_api_key");
  expect_error(models(bearer(t.key.substr(0, t.key.size() - 1))), 401, "invalid_api_key");
  expect_error(models(bearer(t.key + "A")), 401, "invalid_api_key");
  expect_error(models({{"Authorization", "Basic " + t.key}}), 401, "invalid_api_key");
  expect_error(models({{"Authorization", t.key}}), 401, "invalid_api_key");
  expect_error(models({{"Authorization", "Bearer"}}), 401, "invalid_api_key");
  expect_error(models({{"X-Api-Key", t.key}}), 401, "invalid_api_key");
  // A key in the URL never authenticates (URLs end up in logs and proxies).
  expect_error(models({}, "/v1/models?api_key=" + t.key), 401, "invalid_api_key");
  // Another tenant's key id with this key's secret.
  auto other = provision(port, "authn-other");
  auto spliced = "prly_" + other.key_id + t.key.substr(t.key.rfind('_'));
  expect_error(models(bearer(spliced)), 401, "invalid_api_key");

  // Revoked: refused on the very next request.
  auto revoked = create_key(port, t.tenant_id);
  REQUIRE(models(bearer(revoked["key"])).status == 200);
  REQUIRE(admin_call(port, http::verb::post,
                     "/admin/v1/tenants/" + t.tenant_id + "/keys/" + revoked["id"].get<std::string>() + "/revoke")
            .status == 200);
  expect_error(models(bearer(revoked["key"])), 401, "invalid_api_key");

  // Expired: refused once its time is up (waiting on the condition, bounded).
  auto expiring = create_key(port, t.tenant_id, {{"expires_in_seconds", 1}});
  CHECK(models(bearer(expiring["key"])).status == 200);
  int status = 200;
  wait_until(deadline_in(10s), [&] { return (status = models(bearer(expiring["key"])).status) != 200; }, 100ms);
  CHECK(status == 401);

  // A deleted tenant's key.
  REQUIRE(admin_call(port, http::verb::delete_, "/admin/v1/tenants/" + other.tenant_id).status == 200);
  expect_error(models(bearer(other.key)), 401, "invalid_api_key");
  CHECK(models(bearer(t.key)).status == 200);
}

TEST_CASE("API2:2023 broken authentication: failures from one client and key id are throttled with 429 while a valid key passes",
          "[security][integration]") {
  server_fixture srv([](parley::config::settings& s) { s.auth.failed_auth_per_minute = 3; });
  auto port = srv.port();
  auto t = provision(port, "throttled");
  auto second = create_key(port, t.tenant_id);
  auto wrong = t.key;
  wrong.back() = wrong.back() == 'A' ? 'B' : 'A';
  for (int i = 0; i < 3; ++i)
    expect_error(fetch(port, http::verb::get, "/v1/models", {}, bearer(wrong)), 401, "invalid_api_key");
  auto blocked = fetch(port, http::verb::get, "/v1/models", {}, bearer(wrong));
  expect_error(blocked, 429, "too_many_failed_authentications");
  auto retry = std::atoi(blocked.header("retry-after").c_str());
  CHECK(retry >= 1);
  CHECK(retry <= 60);
  // The right secret of that very key, from the same client, still passes; so does another key.
  CHECK(fetch(port, http::verb::get, "/v1/models", {}, bearer(t.key)).status == 200);
  CHECK(fetch(port, http::verb::get, "/v1/models", {}, bearer(second["key"])).status == 200);
  // Guessing unknown key ids has a budget of its own.
  for (int i = 0; i < 3; ++i)
    CHECK(fetch(port, http::verb::get, "/v1/models", {}, bearer("prly_guess" + std::to_string(i))).status == 401);
  expect_error(fetch(port, http::verb::get, "/v1/models", {}, bearer("prly_guess9")), 429,
               "too_many_failed_authentications");
  CHECK(fetch(port, http::verb::get, "/v1/models", {}, bearer(t.key)).status == 200);
  // Wrong admin credentials are throttled as well.
  for (int i = 0; i < 3; ++i)
    fetch(port, http::verb::get, "/admin/v1/tenants", {}, bearer("not-the-admin-key-" + std::to_string(i)));
  CHECK(fetch(port, http::verb::get, "/admin/v1/tenants", {}, bearer("not-the-admin-key")).status == 429);
  CHECK(admin_call(port, http::verb::get, "/admin/v1/tenants").status == 200);
}

TEST_CASE("API3:2023 broken object property level authorization: a tenant cannot set fields it must not",
          "[security][integration]") {
  temp_dir dir;
  uint16_t fake_port = 0;
  auto fake = start_fake_upstream(dir, fake_port);
  g_upstream_url = "http://127.0.0.1:" + std::to_string(fake_port) + "/v1";
  server_fixture srv(with_upstream);
  auto port = srv.port();
  auto t = provision(port, "props");
  auto base = json{{"model", "fake-model"}, {"messages", {user("hello")}}};
  REQUIRE(chat(port, t.key, base).status == 200);
  auto calls = fake_stats(fake_port)["chat_requests"].get<int>();
  for (const char* field : {"api_base", "api_key", "base_url", "api_version", "organization", "headers",
                            "extra_headers", "extra_body", "extra_query", "tenant_id", "key_id", "upstream",
                            "upstream_url", "provider", "deployment", "url", "endpoint", "timeout"}) {
    INFO("field " << field);
    auto body = base;
    body[field] = "http://127.0.0.1:1/evil";
    expect_error(chat(port, t.key, body), 400, "unknown_parameter", field);
  }
  // None of them reached the upstream, and nothing of them is in what it last received.
  auto st = fake_stats(fake_port);
  CHECK(st["chat_requests"] == calls);
  CHECK(st["last_request"].dump().find("evil") == std::string::npos);
  CHECK(st["last_headers"]["authorization"] == "Bearer sk-upstream-secret-0123456789abcdef");

  // Conversations: only metadata (and an empty items list) may be set; never the owner or id.
  expect_error(fetch(port, http::verb::post, "/v1/conversations", json{{"tenant_id", "ten_other"}}.dump(), bearer(t.key)),
               400, "unknown_parameter", "tenant_id");
  expect_error(fetch(port, http::verb::post, "/v1/conversations", json{{"id", "conv_chosen"}}.dump(), bearer(t.key)),
               400, "unknown_parameter", "id");
  // Key properties (scopes, expiry) are set by the admin only: the tenant's key cannot mint keys.
  expect_error(fetch(port, http::verb::post, "/admin/v1/tenants/" + t.tenant_id + "/keys",
                     json{{"name", "mine"}, {"scopes", {"chat", "conversations"}}}.dump(), bearer(t.key)),
               401, "invalid_api_key");
  expect_error(fetch(port, http::verb::patch, "/admin/v1/tenants/" + t.tenant_id,
                     json{{"config", {{"limits", {{"requests_per_minute", 0}}}}}}.dump(), bearer(t.key)),
               401, "invalid_api_key");
}

TEST_CASE("API4:2023 unrestricted resource consumption: finite tenant defaults, a body limit and a capped max_tokens",
          "[security][integration]") {
  temp_dir dir;
  uint16_t fake_port = 0;
  auto fake = start_fake_upstream(dir, fake_port);
  g_upstream_url = "http://127.0.0.1:" + std::to_string(fake_port) + "/v1";
  server_fixture srv([](parley::config::settings& s) {
    with_upstream(s);
    s.tenant_defaults = parley::config::tenant_default_settings{}; // the product's defaults
    s.http.max_body_bytes = 256 * 1024;
  });
  auto port = srv.port();
  const parley::config::tenant_default_settings product;
  const auto cap = parley::config::chat_settings{}.max_output_tokens;
  REQUIRE(cap > 0);

  // A tenant created without limits gets the node's finite defaults.
  auto t = provision(port, "no-limits-given");
  auto got = admin_call(port, http::verb::get, "/admin/v1/tenants/" + t.tenant_id);
  REQUIRE(got.status == 200);
  auto limits = json::parse(got.body)["config"]["limits"];
  INFO(limits.dump());
  for (const char* name : {"requests_per_minute", "tokens_per_minute", "tokens_per_day", "max_concurrent"}) {
    INFO(name);
    REQUIRE(limits[name].is_number_integer());
    CHECK(limits[name].get<int64_t>() > 0);
  }
  CHECK(limits["requests_per_minute"] == product.requests_per_minute);
  CHECK(limits["tokens_per_day"] == product.tokens_per_day);

  // A body over the limit: 413 before anything parses it.
  auto big = json{{"model", "fake-model"}, {"messages", {user(std::string(300 * 1024, 'x'))}}};
  expect_error(chat(port, t.key, big), 413, "payload_too_large");
  // Only one completion per request; messages are bounded.
  expect_error(chat(port, t.key, {{"model", "fake-model"}, {"n", 50}, {"messages", {user("x")}}}), 400, "", "n");
  json many = json::array();
  for (int i = 0; i < 4097; ++i)
    many.push_back(user("m"));
  expect_error(chat(port, t.key, {{"model", "fake-model"}, {"messages", many}}), 400, "", "messages");

  // What the upstream is asked for is never more than the model's cap, and never left open.
  REQUIRE(chat(port, t.key, {{"model", "fake-model"}, {"messages", {user("no max")}}}).status == 200);
  auto sent = fake_stats(fake_port)["last_request"];
  INFO(sent.dump());
  REQUIRE(sent["max_tokens"].is_number_integer());
  CHECK(sent["max_tokens"].get<int64_t>() <= cap);
  auto asked = chat(port, t.key, {{"model", "fake-model"}, {"max_tokens", 100000}, {"messages", {user("more")}}});
  INFO(asked.body);
  REQUIRE(asked.status == 200);
  sent = fake_stats(fake_port)["last_request"];
  REQUIRE(sent["max_tokens"].is_number_integer());
  CHECK(sent["max_tokens"].get<int64_t>() <= cap);
  // Far beyond the tenant's token budget: refused before the upstream is called.
  auto calls = fake_stats(fake_port)["chat_requests"];
  auto huge = chat(port, t.key, {{"model", "fake-model"}, {"max_tokens", 10000000}, {"messages", {user("all")}}});
  CHECK(huge.status == 429);
  CHECK(fake_stats(fake_port)["chat_requests"] == calls);
}

TEST_CASE("API5:2023 broken function level authorization: tenant keys never reach admin routes and the metrics key only reads metrics",
          "[security][integration]") {
  server_fixture srv([](parley::config::settings& s) {
    s.metrics.key = metrics_key;
    s.auth.failed_auth_per_minute = 0;
  });
  auto port = srv.port();
  auto t = provision(port, "functions");
  auto routes = srv.app().routes();
  REQUIRE_FALSE(routes.empty());
  int admin_routes = 0, metrics_routes = 0;
  for (auto& r : routes) {
    // Captures filled with this tenant's own ids: its own objects, through admin functions.
    std::string path;
    std::size_t i = 0;
    while (i < r.pattern.size()) {
      auto open = r.pattern.find('{', i);
      if (open == std::string::npos) {
        path += r.pattern.substr(i);
        break;
      }
      auto close = r.pattern.find('}', open);
      auto name = r.pattern.substr(open + 1, close - open - 1);
      path += r.pattern.substr(i, open - i) + (name == "key_id" ? t.key_id : name == "model" ? "parley-echo" : t.tenant_id);
      i = close + 1;
    }
    auto verb = http::string_to_verb(r.method);
    INFO(r.method << " " << path << " (access " << r.access << ")");
    if (r.access == "admin") {
      ++admin_routes;
      expect_error(fetch(port, verb, path, r.method == "GET" ? "" : "{}", bearer(t.key)), 401, "invalid_api_key");
    }
    if (r.access == "metrics") {
      ++metrics_routes;
      auto m = fetch(port, verb, path, {}, bearer(metrics_key));
      CHECK(m.status == 200);
      CHECK(m.body.find("# TYPE") != std::string::npos);
      expect_error(fetch(port, verb, path, {}, bearer(t.key)), 401, "invalid_api_key");
    } else if (r.access != "anyone") {
      expect_error(fetch(port, verb, path, r.method == "GET" ? "" : "{}", bearer(metrics_key)), 401, "invalid_api_key");
    }
  }
  CHECK(admin_routes > 0);
  CHECK(metrics_routes == 1);
  // Within the tenant API, a key is limited to its scopes.
  auto chat_only = create_key(port, t.tenant_id, {{"scopes", {"chat"}}});
  expect_error(fetch(port, http::verb::get, "/v1/conversations", {}, bearer(chat_only["key"])), 403, "permission_denied");
  expect_error(fetch(port, http::verb::post, "/v1/conversations", "{}", bearer(chat_only["key"])), 403, "permission_denied");
}

TEST_CASE("API6:2023 unrestricted access to sensitive business flows: one tenant's spending is capped without touching another's",
          "[security][integration]") {
  server_fixture srv([](parley::config::settings& s) { s.chat.echo_tokens_per_second = 0; });
  auto port = srv.port();
  auto greedy = provision(port, "greedy", {{"config", {{"limits", {{"requests_per_minute", 2}}}}}});
  auto modest = provision(port, "modest", {{"config", {{"limits", {{"requests_per_minute", 2}}}}}});
  auto body = json{{"model", "parley-echo"}, {"messages", {user("spend")}}};
  CHECK(chat(port, greedy.key, body).status == 200);
  CHECK(chat(port, greedy.key, body).status == 200);
  expect_error(chat(port, greedy.key, body), 429, "rate_limit_exceeded");
  // A second key of the same tenant shares the tenant's budget.
  auto another = create_key(port, greedy.tenant_id);
  CHECK(chat(port, another["key"], body).status == 429);
  CHECK(chat(port, modest.key, body).status == 200);
}

TEST_CASE("API7:2023 server side request forgery: a tenant cannot choose the upstream", "[security][integration]") {
  raw_upstream canary; // must never be contacted
  temp_dir dir;
  uint16_t fake_port = 0;
  auto fake = start_fake_upstream(dir, fake_port);
  g_upstream_url = "http://127.0.0.1:" + std::to_string(fake_port) + "/v1";
  server_fixture srv(with_upstream);
  auto port = srv.port();
  auto t = provision(port, "ssrf");
  auto target = canary.url();
  for (const char* field : {"base_url", "api_base", "url", "endpoint", "upstream_url", "proxy"}) {
    INFO("field " << field);
    expect_error(chat(port, t.key, {{"model", "fake-model"}, {field, target}, {"messages", {user("x")}}}), 400,
                 "unknown_parameter", field);
  }
  // A model name that is a URL is a name: sent to the configured upstream (or refused), never fetched.
  for (auto model : {target + "/chat/completions", target, "127.0.0.1:" + std::to_string(canary.port()),
                     "//127.0.0.1:" + std::to_string(canary.port()) + "/v1", std::string("file:///etc/passwd"),
                     "http://user@127.0.0.1:" + std::to_string(canary.port())}) {
    INFO("model " << model);
    auto r = chat(port, t.key, {{"model", model}, {"messages", {user("where do you go")}}});
    INFO(r.body.substr(0, 300));
    CHECK((r.status == 200 || r.status == 400 || r.status == 404));
    if (r.status == 200)
      CHECK(fake_stats(fake_port)["last_request"]["model"] == model);
  }
  // Nothing reached the canary, in any form.
  CHECK(canary.connections() == 0);
  // And a tenant's own configuration (admin-only) has no upstream field to set.
  auto patched = admin_call(port, http::verb::patch, "/admin/v1/tenants/" + t.tenant_id,
                            {{"config", {{"base_url", target}}}});
  CHECK(patched.status == 400);
  CHECK(canary.connections() == 0);
}

TEST_CASE("API8:2023 security misconfiguration: security headers on every response and no detail for anonymous callers",
          "[security][integration]") {
  server_fixture srv([](parley::config::settings& s) {
    s.http.max_body_bytes = 4096;
    s.http.max_header_bytes = 4096;
    s.auth.failed_auth_per_minute = 2;
    s.chat.echo_tokens_per_second = 0;
  });
  auto port = srv.port();
  auto t = provision(port, "headers");
  auto version = json::parse(admin_call(port, http::verb::get, "/version").body);
  std::string ver = version["version"], commit = version["commit"];
  REQUIRE_FALSE(ver.empty());

  std::vector<std::pair<std::string, http_reply>> replies;
  auto add = [&](const std::string& what, http_reply r) { replies.emplace_back(what, std::move(r)); };
  add("healthz", fetch(port, http::verb::get, "/healthz"));
  add("anonymous readyz", fetch(port, http::verb::get, "/readyz"));
  add("anonymous version", fetch(port, http::verb::get, "/version"));
  add("models", fetch(port, http::verb::get, "/v1/models", {}, bearer(t.key)));
  add("chat", chat(port, t.key, {{"model", "parley-echo"}, {"messages", {user("hi")}}}));
  add("streamed chat", chat(port, t.key, {{"model", "parley-echo"}, {"stream", true}, {"messages", {user("hi")}}}));
  add("404 unknown route", fetch(port, http::verb::get, "/nope"));
  add("400 non-canonical path", fetch(port, http::verb::get, "//admin/v1/tenants"));
  add("405", fetch(port, http::verb::delete_, "/healthz"));
  add("401 admin", fetch(port, http::verb::get, "/admin/v1/tenants"));
  add("401 tenant", fetch(port, http::verb::get, "/v1/models", {}, bearer("prly_nope")));
  add("403 scope", fetch(port, http::verb::get, "/v1/conversations", {},
                         bearer(create_key(port, t.tenant_id, {{"scopes", {"chat"}}})["key"])));
  add("404 object", admin_call(port, http::verb::get, "/admin/v1/tenants/ten_nope"));
  add("400 bad json", fetch(port, http::verb::post, "/admin/v1/tenants", "{oops", admin_headers()));
  add("400 unknown parameter", chat(port, t.key, {{"model", "parley-echo"}, {"api_key", "x"}, {"messages", {user("hi")}}}));
  add("404 model", chat(port, t.key, {{"model", "no-such-model"}, {"messages", {user("hi")}}}));
  add("413", fetch(port, http::verb::post, "/v1/chat/completions", std::string(8192, ' '), bearer(t.key)));
  add("431", fetch(port, http::verb::get, "/healthz", {}, {{"X-Big", std::string(8192, 'h')}}));
  add("wrong admin credential 1", fetch(port, http::verb::get, "/admin/v1/stats", {}, bearer("wrong-1")));
  add("wrong admin credential 2", fetch(port, http::verb::get, "/admin/v1/stats", {}, bearer("wrong-2")));
  add("429 throttled", fetch(port, http::verb::get, "/admin/v1/stats", {}, bearer("wrong-3")));
  REQUIRE(replies.back().second.status == 429);

  const std::vector<std::string> leaks{srv.dir().path(), "sqlite", "SQL", ".cpp", ".hpp", "exception", "what()",
                                       "std::", "boost", "nlohmann", "errno", "stack", server_fixture::admin_key};
  for (auto& [what, r] : replies) {
    INFO(what << ": " << r.status << " " << r.body.substr(0, 300));
    CHECK(r.header("x-content-type-options") == "nosniff");
    CHECK(r.header("x-frame-options") == "DENY");
    CHECK(r.header("referrer-policy") == "no-referrer");
    CHECK(r.header("content-security-policy").find("default-src 'none'") != std::string::npos);
    CHECK(r.header("cache-control").find("no-store") != std::string::npos);
    CHECK_FALSE(r.header("x-request-id").empty());
    CHECK(r.header("server").find_first_of("0123456789") == std::string::npos); // no version in Server
    CHECK(r.header("x-powered-by").empty());
    if (r.status >= 400) {
      expect_error_shape(r);
      for (auto& l : leaks)
        CHECK(r.body.find(l) == std::string::npos);
    }
  }
  // Anonymous callers learn the status, nothing about the build or the dependencies.
  CHECK(json::parse(replies[1].second.body) == json{{"status", "ready"}});
  CHECK(json::parse(replies[2].second.body) == json{{"status", "ok"}});
  for (std::size_t i = 0; i < 3; ++i) {
    auto& r = replies[i].second;
    CHECK(r.body.find(ver) == std::string::npos);
    if (!commit.empty())
      CHECK(r.body.find(commit) == std::string::npos);
    for (auto& f : r.raw)
      CHECK(std::string(f.value()).find(ver) == std::string::npos);
  }
  // A request the HTTP parser refuses gets the same headers.
  raw_connection c(port);
  c.send("GARBAGE\r\n\r\n");
  c.half_close();
  auto raw = lower(c.drain(5s));
  INFO(raw);
  CHECK(raw.rfind("http/1.1 400", 0) == 0);
  CHECK(raw.find("x-content-type-options: nosniff") != std::string::npos);
  CHECK(raw.find("x-frame-options: deny") != std::string::npos);
  CHECK(raw.find("content-security-policy:") != std::string::npos);
  CHECK(raw.find("x-request-id:") != std::string::npos);
}

TEST_CASE("API9:2023 improper inventory management: every route in the table is documented in docs/api.md",
          "[security][integration]") {
  server_fixture srv;
  auto routes = srv.app().routes();
  REQUIRE_FALSE(routes.empty());
  std::ifstream in(std::string(PARLEY_SOURCE_DIR) + "/docs/api.md");
  REQUIRE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  auto doc = ss.str();
  std::set<std::string> seen;
  for (auto& r : routes) {
    auto entry = r.method + " " + r.pattern;
    INFO("route " << entry << " (access " << r.access << ")");
    CHECK(seen.insert(entry).second); // no route declared twice
    // The entry, not a longer path that starts with it.
    bool found = false;
    for (auto pos = doc.find(entry); pos != std::string::npos && !found; pos = doc.find(entry, pos + 1)) {
      auto end = pos + entry.size();
      found = end == doc.size() || !(std::isalnum(static_cast<unsigned char>(doc[end])) || doc[end] == '/' ||
                                     doc[end] == '_' || doc[end] == '-' || doc[end] == '{');
    }
    CHECK(found);
  }
}

TEST_CASE("API10:2023 unsafe consumption of APIs: malformed, huge or deeply nested upstream JSON yields a clean error",
          "[security][integration]") {
  raw_upstream up;
  g_upstream_url = up.url();
  server_fixture srv(with_upstream);
  auto port = srv.port();
  auto t = provision(port, "consumer");
  auto sse = [](const std::vector<std::string>& data) {
    std::string body;
    for (auto& d : data)
      body += "data: " + d + "\n\n";
    return raw_upstream::response(200, "text/event-stream", body);
  };
  auto chunk = [](const json& delta, const json& finish) {
    return json{{"id", "c1"}, {"object", "chat.completion.chunk"}, {"created", 0}, {"model", "m"},
                {"choices", {{{"index", 0}, {"delta", delta}, {"finish_reason", finish}}}}}
      .dump();
  };
  const std::string deep = std::string(60000, '[') + std::string(60000, ']');
  const std::string deep_object = [] {
    std::string s;
    for (int i = 0; i < 60000; ++i)
      s += "{\"a\":";
    s += "1";
    s += std::string(60000, '}');
    return s;
  }();
  const std::string secret_detail = "Traceback at /srv/upstream/internal_secret.py line 42";

  struct scenario {
    std::string name;
    std::string bytes;
    std::set<int> statuses; ///< acceptable statuses of a non-streamed request
  };
  std::vector<scenario> scenarios{
    {"a malformed JSON event, then the stream ends", sse({"{not json"}), {502}},
    {"a 60000-deep nested array event", sse({deep}), {502}},
    {"a 60000-deep nested object event", sse({deep_object}), {502}},
    {"a deep array as delta content", sse({"{\"choices\":[{\"index\":0,\"delta\":{\"content\":" + deep + "}}]}"}), {502}},
    {"an 8 MiB unterminated event", sse({"[" + [] {
                                            std::string s;
                                            s.reserve(8u << 20);
                                            while (s.size() < (8u << 20))
                                              s += "1,";
                                            return s;
                                          }()}),
     {502}},
    {"an error event nested 60000 deep", sse({"{\"error\":" + deep + "}"}), {502}},
    {"an error event with a 1 MiB message",
     sse({json{{"error", {{"message", std::string(1 << 20, 'E')}}}}.dump()}), {502}},
    {"a malformed event between good ones, then [DONE]",
     sse({chunk({{"role", "assistant"}, {"content", "ok"}}, nullptr), "{broken", chunk(json::object(), "stop"), "[DONE]"}),
     {200, 502}},
    {"a 400 whose error body is nested 60000 deep", raw_upstream::response(400, "application/json", deep), {400, 502}},
    {"a 400 whose error message is nested 60000 deep",
     raw_upstream::response(400, "application/json", "{\"error\":{\"message\":" + deep + "}}"), {400, 502}},
    {"a 400 with a 1 MiB error message",
     raw_upstream::response(400, "application/json", json{{"error", {{"message", std::string(1 << 20, 'M')}}}}.dump()),
     {400, 502}},
    {"a 500 with internal detail in a non-JSON body", raw_upstream::response(500, "text/html", "<pre>" + secret_detail + "</pre>"),
     {502}},
    {"a 200 with a JSON body instead of a stream", raw_upstream::response(200, "application/json", "{\"choices\":" + deep + "}"),
     {502}},
    {"a 200 with binary garbage", raw_upstream::response(200, "text/event-stream", std::string(4096, '\xff')), {502}},
    {"a bad Content-Length", "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: abc\r\n\r\ndata: x\n\n",
     {502}},
    {"a bad chunk size", "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n",
     {502}},
    {"not HTTP at all", "\x00\x01\x02 garbage\r\n\r\n"s, {502}},
    {"a 100 KB response header", "HTTP/1.1 200 OK\r\nX-Big: " + std::string(100000, 'h') + "\r\nContent-Length: 0\r\n\r\n",
     {502}},
  };
  for (auto& sc : scenarios) {
    INFO("upstream sends " << sc.name);
    up.respond_with(sc.bytes);
    auto before = up.requests();
    auto r = chat(port, t.key, {{"model", "up-model"}, {"messages", {user("hi")}}});
    INFO(r.status << " " << r.body.substr(0, 300));
    CHECK(up.requests() == before + 1);
    CHECK(sc.statuses.count(r.status) == 1);
    if (r.status == 200) {
      auto j = json::parse(r.body, nullptr, false);
      REQUIRE(j.is_object());
      CHECK(j["object"] == "chat.completion");
    } else {
      expect_error_shape(r);
    }
    CHECK(r.body.size() < 2048); // nothing of the upstream's bulk is relayed
    CHECK(r.body.find("internal_secret") == std::string::npos);
    CHECK(r.body.find("127.0.0.1") == std::string::npos);
    CHECK(r.body.find(std::to_string(up.port())) == std::string::npos);
    // Streamed, the same upstream answer ends the stream cleanly: an error (or the text) and [DONE].
    auto s = chat(port, t.key, {{"model", "up-model"}, {"stream", true}, {"messages", {user("hi")}}});
    INFO("streamed: " << s.status << " " << s.body.substr(0, 300));
    if (s.status == 200) {
      auto ev = sse_data(s.body);
      REQUIRE_FALSE(ev.empty());
      CHECK(ev.back() == "[DONE]");
      for (std::size_t i = 0; i + 1 < ev.size(); ++i)
        CHECK(json::parse(ev[i], nullptr, false).is_object());
      CHECK(s.body.size() < 4096);
    } else {
      CHECK(s.status >= 400);
      CHECK(s.status != 500);
      expect_error_shape(s);
    }
    REQUIRE(fetch(port, http::verb::get, "/healthz").status == 200);
  }
  // The route still works once the upstream behaves.
  up.respond_with(sse({chunk({{"role", "assistant"}, {"content", "fine"}}, nullptr), chunk(json::object(), "stop"), "[DONE]"}));
  auto ok = chat(port, t.key, {{"model", "up-model"}, {"messages", {user("hi")}}});
  INFO(ok.body);
  REQUIRE(ok.status == 200);
  CHECK(json::parse(ok.body)["choices"][0]["message"]["content"] == "fine");
  auto logs = srv.logs();
  CHECK(logs.find("unhandled") == std::string::npos);
  CHECK(logs.find("exception escaped") == std::string::npos);
  CHECK(logs.find(secret_detail) == std::string::npos);
}
