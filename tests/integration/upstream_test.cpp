#include "support/admin_client.hpp"
#include "support/sse.hpp"
#include "support/wait.hpp"

#include <catch2/catch.hpp>

using namespace parley::test;
namespace http = boost::beast::http;

namespace {

constexpr const char* upstream_key = "sk-upstream-secret-0123456789abcdef";

/// A node whose fallback upstream is a fresh fake upstream process.
struct upstream_node {
  temp_dir dir;
  uint16_t fake_port = 0;
  std::unique_ptr<child_process> fake;
  std::unique_ptr<server_fixture> srv;
  std::string key;

  upstream_node() {
    fake = start_fake_upstream(dir, fake_port);
    static std::string url;
    url = "http://127.0.0.1:" + std::to_string(fake_port) + "/v1";
    srv = std::make_unique<server_fixture>([](parley::config::settings& s) {
      s.upstream.url = url;
      s.upstream.key = upstream_key;
      // These tests look at single failures: no breaker in the way, short backoffs.
      s.resilience.breaker_failures = 0;
      s.resilience.breaker_failure_percent = 0;
      s.resilience.backoff_base_ms = 5;
    });
    auto t = create_tenant(srv->port(), "up");
    key = create_key(srv->port(), t["id"])["key"];
  }

  http_reply chat(const json& body) {
    return fetch(srv->port(), http::verb::post, "/v1/chat/completions", body.dump(), bearer(key));
  }
  json stats() { return json::parse(fetch(fake_port, http::verb::get, "/_stats").body); }
};

json msg(const std::string& text) { return json::array({{{"role", "user"}, {"content", text}}}); }

} // namespace

TEST_CASE("an upstream completion is relayed as JSON with the upstream's usage", "[upstream][integration]") {
  upstream_node n;
  auto r = n.chat({{"model", "fake-model"}, {"messages", msg("hello upstream")}, {"temperature", 0.5},
                   {"user", "end-user-1"}, {"max_tokens", 50}});
  INFO(r.body);
  REQUIRE(r.status == 200);
  auto j = json::parse(r.body);
  CHECK(j["choices"][0]["message"]["content"] == "echo: hello upstream");
  CHECK(j["model"] == "fake-model");
  CHECK(j["usage"]["prompt_tokens"] == 2);      // the fake counts words
  CHECK(j["usage"]["completion_tokens"] == 3);
  auto st = n.stats();
  // Other OpenAI fields pass through; the upstream is always streamed to.
  CHECK(st["last_request"]["temperature"] == 0.5);
  CHECK(st["last_request"]["user"] == "end-user-1");
  CHECK(st["last_request"]["max_tokens"] == 50);
  CHECK(st["last_request"]["stream"] == true);
  CHECK(st["last_headers"]["authorization"] == std::string("Bearer ") + upstream_key);
  CHECK(st["last_headers"]["x-request-id"] == r.header("x-request-id"));
  // The upstream key is never logged or returned.
  CHECK(n.srv->logs().find(upstream_key) == std::string::npos);
  CHECK(r.body.find(upstream_key) == std::string::npos);
}

TEST_CASE("an upstream stream is relayed chunk by chunk", "[upstream][integration]") {
  upstream_node n;
  auto r = n.chat({{"model", "fake-model"}, {"stream", true}, {"stream_options", {{"include_usage", true}}},
                   {"messages", msg("SCRIPT:{\"tokens_per_second\":200} one two three four")}});
  REQUIRE(r.status == 200);
  auto ev = sse_data(r.body);
  REQUIRE(ev.back() == "[DONE]");
  std::string text;
  int usage = 0;
  for (std::size_t i = 0; i + 1 < ev.size(); ++i) {
    auto c = json::parse(ev[i]);
    if (!c["usage"].is_null()) {
      ++usage;
      CHECK(c["usage"]["completion_tokens"] == 5);
      continue;
    }
    text += c["choices"][0]["delta"].value("content", "");
  }
  CHECK(text == "echo: one two three four");
  CHECK(usage == 1);
  // Pooled keep-alive connections are reused across calls.
  for (int i = 0; i < 5; ++i)
    CHECK(n.chat({{"model", "fake-model"}, {"messages", msg("again")}}).status == 200);
}

TEST_CASE("upstream errors map to OpenAI errors without upstream detail", "[upstream][integration]") {
  upstream_node n;
  auto port_text = std::to_string(n.fake_port);
  auto e500 = n.chat({{"model", "fake-model"}, {"messages", msg("SCRIPT:{\"status\":500}")}});
  CHECK(e500.status == 502);
  CHECK(json::parse(e500.body)["error"]["code"] == "upstream_error");
  CHECK(e500.body.find(port_text) == std::string::npos);
  CHECK(e500.body.find("127.0.0.1") == std::string::npos);

  auto e400 = n.chat({{"model", "fake-model"},
                      {"messages", msg("SCRIPT:{\"status\":400,\"error_body\":{\"error\":{\"message\":\"bad temperature\"}}}")}});
  CHECK(e400.status == 400);
  CHECK(json::parse(e400.body)["error"]["message"] == "bad temperature");

  auto e404 = n.chat({{"model", "fake-model"}, {"messages", msg("SCRIPT:{\"status\":404}")}});
  CHECK(e404.status == 404);
  CHECK(json::parse(e404.body)["error"]["code"] == "model_not_found");

  auto e401 = n.chat({{"model", "fake-model"}, {"messages", msg("SCRIPT:{\"status\":401}")}});
  CHECK(e401.status == 502);

  auto rl = n.chat({{"model", "fake-model"}, {"messages", msg("SCRIPT:{\"status\":429,\"ratelimit_headers\":true}")}});
  CHECK(rl.status == 503);
  CHECK(rl.header("x-ratelimit-remaining-requests").empty()); // upstream headers never pass through

  auto reset = n.chat({{"model", "fake-model"}, {"messages", msg("SCRIPT:{\"reset_before_first_byte\":true}")}});
  CHECK(reset.status == 502);
  // The node is fine afterwards.
  CHECK(n.chat({{"model", "fake-model"}, {"messages", msg("ok")}}).status == 200);
}

TEST_CASE("a reset mid-stream ends the stream with an error event and [DONE]", "[upstream][integration]") {
  upstream_node n;
  auto r = n.chat({{"model", "fake-model"}, {"stream", true},
                   {"messages", msg("SCRIPT:{\"reset_after_tokens\":2,\"tokens_per_second\":20} a b c d e f")}});
  REQUIRE(r.status == 200);
  auto ev = sse_data(r.body);
  REQUIRE(ev.size() >= 3);
  CHECK(ev.back() == "[DONE]");
  auto err = json::parse(ev[ev.size() - 2]);
  CHECK(err["error"]["code"] == "upstream_error");
}

TEST_CASE("a client that goes away cancels its upstream request within a second", "[upstream][integration]") {
  upstream_node n;
  auto body = json{{"model", "fake-model"}, {"stream", true},
                   {"messages", msg("SCRIPT:{\"tokens_per_second\":10} " + std::string(200, 'x') +
                                    " a b c d e f g h i j k l m n o p q r s t u v w x y z")}}.dump();
  {
    http_client c(n.srv->port());
    send_chat_raw(c, n.key, body);
    // The upstream is streaming to us: its first token has reached the client.
    read_until(c, "\"content\":\"echo:\"");
    REQUIRE(n.stats()["open_responses"] == 1);
  } // the client goes away in the middle of the stream
  auto t0 = std::chrono::steady_clock::now();
  int disconnects = 0;
  wait_until(deadline_in(std::chrono::seconds(2)),
             [&] { return (disconnects = n.stats()["client_disconnects"].get<int>()) > 0; });
  CHECK(disconnects == 1);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(1000));
  CHECK(n.stats()["streams_completed"] == 0);
}

TEST_CASE("an unreachable upstream answers 502", "[upstream][integration]") {
  static std::string url;
  {
    // A port that was free a moment ago: nothing listens there.
    boost::asio::io_context ioc;
    boost::asio::ip::tcp::acceptor a(ioc, {boost::asio::ip::make_address("127.0.0.1"), 0});
    url = "http://127.0.0.1:" + std::to_string(a.local_endpoint().port()) + "/v1";
  }
  server_fixture srv([](parley::config::settings& s) { s.upstream.url = url; });
  auto t = create_tenant(srv.port(), "unreach");
  std::string key = create_key(srv.port(), t["id"])["key"];
  auto r = fetch(srv.port(), http::verb::post, "/v1/chat/completions",
                 json{{"model", "any"}, {"messages", msg("x")}}.dump(), bearer(key));
  CHECK(r.status == 502);
  CHECK(r.body.find(url) == std::string::npos);
}

TEST_CASE("upstream tokens reach the client as they are produced", "[upstream][integration]") {
  upstream_node n;
  auto body = json{{"model", "fake-model"}, {"stream", true},
                   {"messages", msg("SCRIPT:{\"tokens_per_second\":10} a b c d e f g h i")}}.dump();
  http_client c(n.srv->port());
  auto t0 = std::chrono::steady_clock::now();
  send_chat_raw(c, n.key, body);
  auto seen = read_until(c, "\"content\":\"echo:\"");
  auto first = std::chrono::steady_clock::now() - t0;
  seen = read_until(c, "[DONE]", std::move(seen));
  auto all = std::chrono::steady_clock::now() - t0;
  // 10 tokens at 10/s: the first arrives after ~0.1 s, the last after ~1 s. A relay that
  // buffered the stream would deliver the first with the last; compared as a ratio, which a
  // loaded machine stretches on both sides alike.
  INFO("first token after " << std::chrono::duration_cast<std::chrono::milliseconds>(first).count()
                            << " ms, [DONE] after "
                            << std::chrono::duration_cast<std::chrono::milliseconds>(all).count() << " ms");
  CHECK(first * 2 < all);
  CHECK(all > std::chrono::milliseconds(800));
}

TEST_CASE("a configured route maps a model name to its upstream, model and key", "[upstream][integration]") {
  temp_dir dir;
  uint16_t fake_port = 0;
  auto fake = start_fake_upstream(dir, fake_port);
  ::setenv("PARLEY_TEST_ROUTE_KEY", "sk-route-key-abcdef0123456789", 1);
  static std::string base;
  base = "http://127.0.0.1:" + std::to_string(fake_port) + "/v1";
  server_fixture srv([](parley::config::settings& s) {
    parley::config::route_settings r;
    r.model = "team-model";
    r.upstream_model = "fake-model";
    r.base_url = base;
    r.api_key_env = "PARLEY_TEST_ROUTE_KEY";
    s.routes.push_back(r);
  });
  auto t = create_tenant(srv.port(), "routed", {{"config", {{"allowed_models", {"team-model"}}}}});
  std::string key = create_key(srv.port(), t["id"])["key"];
  auto models = json::parse(fetch(srv.port(), http::verb::get, "/v1/models", {}, bearer(key)).body);
  REQUIRE(models["data"].size() == 1);
  CHECK(models["data"][0]["id"] == "team-model");
  auto r = fetch(srv.port(), http::verb::post, "/v1/chat/completions",
                 json{{"model", "team-model"}, {"messages", msg("routed call")}}.dump(), bearer(key));
  INFO(r.body);
  REQUIRE(r.status == 200);
  CHECK(json::parse(r.body)["model"] == "team-model");
  CHECK(json::parse(r.body)["choices"][0]["message"]["content"] == "echo: routed call");
  auto st = json::parse(fetch(fake_port, http::verb::get, "/_stats").body);
  CHECK(st["last_request"]["model"] == "fake-model");
  CHECK(st["last_headers"]["authorization"] == "Bearer sk-route-key-abcdef0123456789");
  CHECK(srv.logs().find("sk-route-key") == std::string::npos);
  // Without the fallback upstream, an unrouted model is unknown.
  auto nope = fetch(srv.port(), http::verb::post, "/v1/chat/completions",
                    json{{"model", "fake-model"}, {"messages", msg("x")}}.dump(), bearer(key));
  CHECK(nope.status == 404);
}
