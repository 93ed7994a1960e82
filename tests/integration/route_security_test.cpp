// The route sweep: every route of the table (srv.app().routes(), never a hand-kept list, so a
// new route is covered the day it is added) is called without credentials, with the wrong kind
// of credential, through non-canonical spellings of its path and with a deeply nested JSON
// body. Captures are filled with real ids, and the canonical call with the right credential is
// shown to succeed, so the sweep would notice a refusal turning into a success.
#include "support/admin_client.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <set>

using namespace parley::test;
namespace http = boost::beast::http;
using parley::runtime::route_info;

namespace {

constexpr const char* metrics_key = "test-metrics-key-0123456789abcdef01234567";

/// The sweep sends hundreds of refused credentials from one address on purpose: the
/// failed-authentication throttle (tested in owasp_test.cpp) would turn its 401s into 429s.
void sweep_settings(parley::config::settings& s) {
  s.auth.failed_auth_per_minute = 0;
  s.metrics.key = metrics_key;
  s.chat.echo_tokens_per_second = 0;
}

/// Real objects whose ids fill the routes' captures.
struct world {
  std::string tenant_id, key_id, key, conversation_id;
};

world provision(uint16_t port, const std::string& slug) {
  auto t = create_tenant(port, slug);
  auto k = create_key(port, t["id"]);
  world w{t["id"], k["id"], k["key"], ""};
  auto c = fetch(port, http::verb::post, "/v1/conversations", "{}", bearer(w.key));
  INFO(c.body);
  REQUIRE(c.status == 200);
  w.conversation_id = json::parse(c.body)["id"];
  return w;
}

std::vector<std::string> segments(const std::string& path) {
  std::vector<std::string> out;
  std::size_t i = 1;
  while (i <= path.size()) {
    auto j = path.find('/', i);
    if (j == std::string::npos)
      j = path.size();
    out.push_back(path.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

/// The route's path with every `{capture}` filled with a real id from `w`. A capture this
/// function does not know fails the test, so a new route gets real ids, not placeholders.
std::string fill(const route_info& r, const world& w) {
  std::string out;
  std::string prev;
  for (auto& seg : segments(r.pattern)) {
    std::string value = seg;
    if (seg.size() > 2 && seg.front() == '{' && seg.back() == '}') {
      auto name = seg.substr(1, seg.size() - 2);
      if (name == "id" && prev == "tenants")
        value = w.tenant_id;
      else if (name == "id" && prev == "conversations")
        value = w.conversation_id;
      else if (name == "key_id")
        value = w.key_id;
      else if (name == "model")
        value = "parley-echo";
      else
        FAIL("route " << r.method << " " << r.pattern << ": no real value for the capture " << seg
                      << "; teach fill() in route_security_test.cpp about it");
    }
    out += "/" + value;
    prev = seg;
  }
  return out;
}

bool has_body(const route_info& r) { return r.method == "POST" || r.method == "PATCH"; }

/// A body the route's handler would accept (an object; its fields are what the deep-nesting
/// test replaces one by one). Routes without a body get an empty object.
json valid_body(const route_info& r) {
  static int n = 0;
  if (r.method == "POST" && r.pattern == "/admin/v1/tenants")
    return {{"slug", "swept-" + std::to_string(++n)}, {"name", "Swept"}};
  if (r.method == "POST" && r.pattern == "/admin/v1/tenants/{id}/keys")
    return {{"name", "swept key"}};
  if (r.method == "PATCH" && r.pattern == "/admin/v1/tenants/{id}")
    return {{"name", "Renamed"}};
  if (r.method == "POST" && r.pattern == "/v1/chat/completions")
    return {{"model", "parley-echo"}, {"messages", {{{"role", "user"}, {"content", "hello sweep"}}}}};
  if (r.method == "POST" && r.pattern == "/v1/conversations")
    return {{"metadata", {{"purpose", "sweep"}}}};
  return json::object();
}

std::string body_text(const route_info& r) { return has_body(r) ? valid_body(r).dump() : std::string(); }

/// The credential that passes `r`'s access check ("" = none needed).
std::string right_key(const route_info& r, const world& w) {
  if (r.access == "tenant")
    return w.key;
  if (r.access == "admin")
    return server_fixture::admin_key;
  if (r.access == "metrics")
    return metrics_key;
  return {};
}

/// Credentials of the wrong kind for `r` (each must be refused 401). Exempt routes get none;
/// an access kind the sweep does not know fails the test.
std::vector<std::pair<std::string, std::string>> wrong_keys(const route_info& r, const world& w) {
  if (r.access == "anyone" || r.access == "anyone_or_admin")
    return {};
  std::vector<std::pair<std::string, std::string>> out{
    {"no credential", ""}, {"a key that is nobody's", "prly_01hzzzzzzzzzzzzzzzzzzzzzzz_" + std::string(43, 'A')}};
  if (r.access == "tenant") {
    out.emplace_back("the admin key", server_fixture::admin_key);
    out.emplace_back("the metrics key", metrics_key);
  } else if (r.access == "admin") {
    out.emplace_back("a tenant key", w.key);
    out.emplace_back("the metrics key", metrics_key);
  } else if (r.access == "metrics") {
    out.emplace_back("a tenant key", w.key);
  } else {
    FAIL("route " << r.method << " " << r.pattern << " has access '" << r.access
                  << "', which the sweep does not know");
  }
  return out;
}

std::map<std::string, std::string> auth(const std::string& key) {
  return key.empty() ? std::map<std::string, std::string>{} : bearer(key);
}

/// Spellings of `path` that are not its canonical form; each names one trick.
std::vector<std::pair<std::string, std::string>> non_canonical(const std::string& path) {
  auto segs = segments(path);
  std::vector<std::pair<std::string, std::string>> out{
    {"doubled slash prefix", "/" + path},
    {"trailing slash", path + "/"},
    {"'/./' prefix", "/." + path},
    {"'%2e' segment prefix", "/%2e" + path},
    {"'x/%2e%2e' prefix", "/x/%2e%2e" + path},
    {"'x/%2E%2E' prefix", "/x/%2E%2E" + path},
    {"'x/..' prefix", "/x/.." + path},
    {"'%2F' for the first slash", "/%2F" + path.substr(1)},
    {"fragment", path + "#x"},
    {"backslash prefix", "/\\" + path.substr(1)},
  };
  if (segs.size() >= 2) {
    auto second = path.find('/', 1);
    out.emplace_back("inner '//'", path.substr(0, second) + "/" + path.substr(second));
    out.emplace_back("'%2F' for an inner slash", path.substr(0, second) + "%2F" + path.substr(second + 1));
    out.emplace_back("'%2f' for an inner slash", path.substr(0, second) + "%2f" + path.substr(second + 1));
    out.emplace_back("'%5C' for an inner slash", path.substr(0, second) + "%5C" + path.substr(second + 1));
    out.emplace_back("inner '/./'", path.substr(0, second) + "/." + path.substr(second));
    out.emplace_back("inner 'x/../'", path.substr(0, second) + "/x/.." + path.substr(second));
    out.emplace_back("inner '/%2e/'", path.substr(0, second) + "/%2e" + path.substr(second));
  }
  return out;
}

void expect_refused_401(const http_reply& r) {
  INFO(r.body);
  REQUIRE(r.status == 401);
  auto j = json::parse(r.body, nullptr, false);
  REQUIRE(j.is_object());
  CHECK(j["error"]["code"] == "invalid_api_key");
  CHECK(j["error"]["type"] == "invalid_request_error");
}

std::vector<route_info> table(server_fixture& srv) {
  auto routes = srv.app().routes();
  REQUIRE_FALSE(routes.empty());
  return routes;
}

} // namespace

TEST_CASE("every route refuses calls without credentials and with the wrong kind of credential",
          "[security][integration]") {
  server_fixture srv(sweep_settings);
  auto w = provision(srv.port(), "cred-sweep");
  int checked = 0;
  for (auto& r : table(srv)) {
    auto path = fill(r, w);
    for (auto& [what, key] : wrong_keys(r, w)) {
      INFO(r.method << " " << path << " (access " << r.access << ") with " << what);
      expect_refused_401(fetch(srv.port(), http::string_to_verb(r.method), path, body_text(r), auth(key)));
      ++checked;
    }
  }
  CHECK(checked > 0);
  // Nothing refused above happened: the key, conversation and tenant are as they were.
  CHECK(fetch(srv.port(), http::verb::get, "/v1/conversations/" + w.conversation_id, {}, bearer(w.key)).status == 200);
  auto t = json::parse(admin_call(srv.port(), http::verb::get, "/admin/v1/tenants/" + w.tenant_id).body);
  CHECK(t["status"] == "active");
  CHECK(t["name"] == "Tenant cred-sweep");
}

TEST_CASE("a tenant key without the route's scope is refused 403 on every scoped tenant route",
          "[security][integration]") {
  server_fixture srv(sweep_settings);
  auto w = provision(srv.port(), "scope-sweep");
  int checked = 0;
  for (auto& r : table(srv)) {
    if (r.access != "tenant" || r.scope.empty())
      continue;
    // A key of the same tenant with some other scope.
    std::string other = r.scope == "chat" ? "conversations" : "chat";
    std::string key = create_key(srv.port(), w.tenant_id, {{"scopes", {other}}})["key"];
    auto path = fill(r, w);
    INFO(r.method << " " << path << " needs scope " << r.scope << "; the key has " << other);
    auto reply = fetch(srv.port(), http::string_to_verb(r.method), path, body_text(r), bearer(key));
    INFO(reply.body);
    CHECK(reply.status == 403);
    ++checked;
  }
  CHECK(checked > 0);
}

TEST_CASE("every route refuses non-canonical spellings of its path with and without its credential",
          "[security][integration]") {
  server_fixture srv(sweep_settings);
  auto w = provision(srv.port(), "path-sweep");
  const std::set<int> refusals{400, 401, 403, 404};
  int checked = 0;
  for (auto& r : table(srv)) {
    auto path = fill(r, w);
    auto spellings = non_canonical(path);
    REQUIRE(spellings.size() >= 3);
    for (auto& [trick, target] : spellings) {
      for (bool with_key : {true, false}) {
        auto key = with_key ? right_key(r, w) : std::string();
        INFO(r.method << " " << target << " (" << trick << " of " << r.pattern << ", access " << r.access
                      << (with_key ? ", with its credential)" : ", without credential)"));
        auto reply = fetch(srv.port(), http::string_to_verb(r.method), target, body_text(r), auth(key));
        INFO(reply.status << " " << reply.body);
        CHECK(refusals.count(reply.status) == 1);
        ++checked;
      }
    }
  }
  CHECK(checked > 0);
  // None of those calls reached a handler that changes state.
  CHECK(fetch(srv.port(), http::verb::get, "/v1/conversations/" + w.conversation_id, {}, bearer(w.key)).status == 200);
  auto t = json::parse(admin_call(srv.port(), http::verb::get, "/admin/v1/tenants/" + w.tenant_id).body);
  CHECK(t["status"] == "active");
  CHECK(t["name"] == "Tenant path-sweep");
  auto keys = json::parse(admin_call(srv.port(), http::verb::get, "/admin/v1/tenants/" + w.tenant_id + "/keys").body);
  REQUIRE(keys["data"].size() == 1);
  CHECK(keys["data"][0]["revoked_at"].is_null());
  CHECK(fetch(srv.port(), http::verb::get, "/v1/models", {}, bearer(w.key)).status == 200);
}

TEST_CASE("every route succeeds on its canonical path with the right credential",
          "[security][integration]") {
  // The control for the sweeps above: the same filled paths and bodies do reach the handler.
  server_fixture srv(sweep_settings);
  auto routes = table(srv);
  auto w = provision(srv.port(), "ok-sweep");
  int checked = 0;
  for (auto& r : routes) {
    if (r.method != "GET")
      continue;
    auto path = fill(r, w);
    INFO(r.method << " " << path << " (access " << r.access << ")");
    auto reply = fetch(srv.port(), http::verb::get, path, {}, auth(right_key(r, w)));
    INFO(reply.body);
    CHECK(reply.status / 100 == 2);
    if (r.access == "anyone_or_admin") {
      auto admin = fetch(srv.port(), http::verb::get, path, {}, admin_headers());
      CHECK(admin.status / 100 == 2);
    }
    ++checked;
  }
  CHECK(checked > 0);
  // Routes that change state: each on objects of its own, so one cannot spoil another.
  int n = 0;
  for (auto& r : routes) {
    if (r.method == "GET")
      continue;
    auto fresh = provision(srv.port(), "ok-sweep-" + std::to_string(++n));
    auto path = fill(r, fresh);
    INFO(r.method << " " << path << " (access " << r.access << ")");
    auto reply = fetch(srv.port(), http::string_to_verb(r.method), path, body_text(r), auth(right_key(r, fresh)));
    INFO(reply.body);
    CHECK(reply.status / 100 == 2);
  }
}

TEST_CASE("a 60000-deep nested array in any field of any JSON body gets 400 and the node stays healthy",
          "[security][integration]") {
  server_fixture srv(sweep_settings);
  auto routes = table(srv);
  const std::string deep = std::string(60000, '[') + std::string(60000, ']');
  const std::string mark = "\"@DEEP@\"";
  auto with_deep = [&](std::string text) { return text.replace(text.find(mark), mark.size(), deep); };
  int checked = 0, n = 0;
  for (auto& r : routes) {
    if (!has_body(r))
      continue;
    // Objects of its own per route: a route that wrongly acts on such a body (revoking the
    // key, say) must not turn the next route's answers into 401s.
    auto w = provision(srv.port(), "deep-sweep-" + std::to_string(++n));
    auto path = fill(r, w);
    auto body = valid_body(r);
    // Every field of the valid body in turn, one field added, one nested below the top, and
    // the whole body.
    std::vector<std::pair<std::string, std::string>> bodies;
    for (auto& [k, v] : body.items()) {
      auto b = body;
      b[k] = "@DEEP@";
      bodies.emplace_back("field " + k, with_deep(b.dump()));
    }
    auto added = body;
    added["nested"] = "@DEEP@";
    bodies.emplace_back("an added field", with_deep(added.dump()));
    if (body.contains("messages")) {
      auto b = body;
      b["messages"][0]["content"] = "@DEEP@";
      bodies.emplace_back("messages[0].content", with_deep(b.dump()));
    }
    if (body.contains("metadata")) {
      auto b = body;
      b["metadata"]["purpose"] = "@DEEP@";
      bodies.emplace_back("metadata.purpose", with_deep(b.dump()));
    }
    bodies.emplace_back("the whole body", deep);
    for (auto& [where, text] : bodies) {
      INFO(r.method << " " << path << ": deep array in " << where);
      auto reply = fetch(srv.port(), http::string_to_verb(r.method), path, text, auth(right_key(r, w)));
      INFO(reply.body.substr(0, 300));
      CHECK(reply.status == 400);
      auto j = json::parse(reply.body, nullptr, false);
      CHECK(j.is_object());
      if (reply.status == 400 && j.is_object()) {
        CHECK(j["error"]["type"] == "invalid_request_error");
        CHECK(j["error"]["message"].is_string());
        CHECK(j["error"].contains("param"));
        CHECK(j["error"].contains("code"));
      }
      CHECK(reply.body.size() < 2000); // the nesting is not echoed back
      ++checked;
    }
  }
  CHECK(checked > 0);
  CHECK(fetch(srv.port(), http::verb::get, "/healthz").status == 200);
  CHECK(srv.logs().find("exception") == std::string::npos);
}
