#include "support/admin_client.hpp"
#include "support/sse.hpp"

#include <catch2/catch.hpp>

using namespace parley::test;
namespace http = boost::beast::http;

namespace {

struct cache_node {
  temp_dir dir;
  uint16_t fake_port = 0;
  std::unique_ptr<child_process> fake;
  std::unique_ptr<server_fixture> srv;
  std::string tenant_id, key;

  explicit cache_node(const json& limits = json::object()) {
    fake = start_fake_upstream(dir, fake_port);
    static std::string url;
    url = "http://127.0.0.1:" + std::to_string(fake_port) + "/v1";
    srv = std::make_unique<server_fixture>([](parley::config::settings& s) { s.upstream.url = url; });
    auto t = create_tenant(srv->port(), "cached", {{"config", {{"cache", {{"ttl_seconds", 60}}}, {"limits", limits}}}});
    tenant_id = t["id"];
    key = create_key(srv->port(), tenant_id)["key"];
  }
  http_reply chat(json body, std::map<std::string, std::string> headers = {}) {
    headers["Authorization"] = "Bearer " + key;
    if (!body.contains("model"))
      body["model"] = "fake-model";
    return fetch(srv->port(), http::verb::post, "/v1/chat/completions", body.dump(), headers);
  }
  int upstream_calls() {
    return json::parse(fetch(fake_port, http::verb::get, "/_stats").body)["chat_requests"].get<int>();
  }
};

json msgs(const std::string& text) { return json::array({{{"role", "user"}, {"content", text}}}); }

} // namespace

TEST_CASE("a deterministic request is answered from the cache without calling the upstream",
          "[cache][integration]") {
  cache_node n;
  json body = {{"temperature", 0}, {"messages", msgs("cache me please")}};
  auto first = n.chat(body);
  REQUIRE(first.status == 200);
  CHECK(first.header("x-parley-cache") == "miss");
  auto second = n.chat(body);
  REQUIRE(second.status == 200);
  CHECK(second.header("x-parley-cache") == "hit");
  CHECK(n.upstream_calls() == 1);
  auto a = json::parse(first.body), b = json::parse(second.body);
  CHECK(a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]);
  CHECK(a["usage"] == b["usage"]);
  CHECK(a["id"] != b["id"]);

  // The same request as a stream is served from the cache as a stream.
  body["stream"] = true;
  auto streamed = n.chat(body);
  CHECK(streamed.header("x-parley-cache") == "hit");
  std::string text;
  for (auto& e : sse_data(streamed.body)) {
    if (e == "[DONE]")
      continue;
    auto chunk = json::parse(e);
    for (auto& c : chunk["choices"])
      text += c["delta"].value("content", "");
  }
  CHECK(text == a["choices"][0]["message"]["content"]);
  CHECK(sse_data(streamed.body).back() == "[DONE]");
  CHECK(n.upstream_calls() == 1);

  // Anything that changes the output is another entry.
  CHECK(n.chat({{"temperature", 0}, {"messages", msgs("cache me please")}, {"max_tokens", 2}})
          .header("x-parley-cache") == "miss");
  CHECK(n.upstream_calls() == 2);
  auto stats = json::parse(admin_call(n.srv->port(), http::verb::get, "/admin/v1/stats").body);
  CHECK(stats["cache"]["hits"] == 2);
  CHECK(stats["cache"]["misses"] == 2);
}

TEST_CASE("the cache is opt-in for sampled requests and can be bypassed or flushed", "[cache][integration]") {
  cache_node n;
  json sampled = {{"temperature", 0.7}, {"messages", msgs("sampled")}};
  CHECK(n.chat(sampled).header("x-parley-cache") == "bypass");
  CHECK(n.chat(sampled).header("x-parley-cache") == "bypass");
  CHECK(n.upstream_calls() == 2);
  CHECK(n.chat(sampled, {{"x-parley-cache", "use"}}).header("x-parley-cache") == "miss");
  CHECK(n.chat(sampled, {{"x-parley-cache", "use"}}).header("x-parley-cache") == "hit");
  CHECK(n.upstream_calls() == 3);

  json det = {{"temperature", 0}, {"messages", msgs("deterministic")}};
  n.chat(det);
  CHECK(n.chat(det, {{"x-parley-cache", "bypass"}}).header("x-parley-cache") == "bypass");
  CHECK(n.upstream_calls() == 5);

  auto flushed = admin_call(n.srv->port(), http::verb::post, "/admin/v1/tenants/" + n.tenant_id + "/cache/flush");
  INFO(flushed.body);
  REQUIRE(flushed.status == 200);
  CHECK(json::parse(flushed.body)["entries"] == 2);
  CHECK(n.chat(det).header("x-parley-cache") == "miss");
  CHECK(n.upstream_calls() == 6);
  CHECK(admin_call(n.srv->port(), http::verb::post, "/admin/v1/tenants/ten_nope/cache/flush").status == 404);
}

TEST_CASE("a cache hit counts toward the request limit", "[cache][limits][integration]") {
  cache_node n(json{{"requests_per_minute", 3}});
  json det = {{"temperature", 0}, {"messages", msgs("limited")}};
  CHECK(n.chat(det).status == 200);
  CHECK(n.chat(det).status == 200);
  CHECK(n.chat(det).status == 200);
  auto r = n.chat(det);
  CHECK(r.status == 429);
  CHECK(n.upstream_calls() == 1);
}
