#include "support/http_client.hpp"
#include "support/server_fixture.hpp"
#include "support/wait.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <set>

using namespace parley::test;
using json = nlohmann::json;
namespace http = boost::beast::http;

namespace {
void expect_openai_error(const http_reply& r, int status, const std::string& code) {
  INFO(r.body);
  CHECK(r.status == status);
  CHECK(r.header("content-type") == "application/json");
  auto j = json::parse(r.body);
  REQUIRE(j.contains("error"));
  CHECK(j["error"].contains("message"));
  CHECK(j["error"].contains("type"));
  CHECK(j["error"].contains("param"));
  CHECK(j["error"]["code"] == code);
  CHECK_FALSE(r.header("x-request-id").empty());
}
} // namespace

TEST_CASE("healthz, readyz and version answer on a fresh node", "[net][integration]") {
  server_fixture srv;
  auto h = fetch(srv.port(), http::verb::get, "/healthz");
  CHECK(h.status == 200);
  CHECK(json::parse(h.body)["status"] == "ok");

  // Anonymous callers get the status only; the admin gets every dependency.
  auto anon = fetch(srv.port(), http::verb::get, "/readyz");
  CHECK(anon.status == 200);
  CHECK(json::parse(anon.body) == json{{"status", "ready"}});
  std::map<std::string, std::string> admin{
    {"Authorization", std::string("Bearer ") + server_fixture::admin_key}};
  auto r = fetch(srv.port(), http::verb::get, "/readyz", "", admin);
  INFO(r.body);
  CHECK(r.status == 200);
  auto rj = json::parse(r.body);
  CHECK(rj["status"] == "ready");
  std::set<std::string> names;
  for (auto& c : rj["checks"]) {
    names.insert(c["name"].get<std::string>());
    CHECK(c["ok"] == true);
  }
  CHECK(names == std::set<std::string>{"node", "store", "migrations"});

  auto anon_v = fetch(srv.port(), http::verb::get, "/version");
  CHECK(anon_v.status == 200);
  CHECK(json::parse(anon_v.body) == json{{"status", "ok"}});
  CHECK(fetch(srv.port(), http::verb::get, "/version", "",
              {{"Authorization", "Bearer wrong-key-0123456789abcdef0123456789"}})
          .status == 401);
  auto v = fetch(srv.port(), http::verb::get, "/version", "", admin);
  CHECK(v.status == 200);
  auto vj = json::parse(v.body);
  CHECK(vj["version"].get<std::string>().size() > 0);
  CHECK(vj.contains("commit"));
  CHECK(vj.contains("build_type"));
}

TEST_CASE("readyz answers 503 once the node is draining", "[net][integration]") {
  server_fixture srv;
  CHECK(fetch(srv.port(), http::verb::get, "/readyz").status == 200);
  // That probe is over on the server's side too (it counts a request until its answer is
  // written), so the count below is the next one's.
  REQUIRE(wait_until(deadline_in(std::chrono::seconds(5)), [&] { return srv.app().in_flight() == 0; }));
  // A readiness probe in flight when draining starts: its header is in, its body is not.
  http_client c(srv.port());
  c.send_raw(std::string("GET /readyz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ") +
             server_fixture::admin_key + "\r\nContent-Length: 2\r\n\r\n{");
  // The node counts a request as in flight once it has read its header.
  REQUIRE(wait_until(deadline_in(std::chrono::seconds(5)), [&] { return srv.app().in_flight() == 1; }));
  srv.app().begin_shutdown();
  CHECK(connection_refused(srv.port()));
  c.send_raw("}");
  auto r = c.read_reply();
  INFO(r.body);
  CHECK(r.status == 503);
  auto j = json::parse(r.body);
  CHECK(j["status"] == "not_ready");
  bool node_draining = false;
  for (auto& ch : j["checks"])
    if (ch["name"] == "node")
      node_draining = ch["ok"] == false && ch["detail"] == "draining";
  CHECK(node_draining);
  CHECK(r.header("connection") == "close");
  CHECK(c.closed_by_peer());
}

TEST_CASE("a sane incoming request id is echoed and a bad one is replaced", "[net][integration]") {
  server_fixture srv;
  auto a = fetch(srv.port(), http::verb::get, "/healthz", {}, {{"X-Request-ID", "abc-123.x:y_z"}});
  CHECK(a.header("x-request-id") == "abc-123.x:y_z");
  CHECK(a.header("x-parley-request-id").size() == 32); // parley's own id is still there

  auto b = fetch(srv.port(), http::verb::get, "/healthz", {}, {{"X-Request-ID", "bad id with spaces"}});
  CHECK(b.header("x-request-id").size() == 32);
  CHECK(b.header("x-request-id") != "bad id with spaces");
  CHECK(b.header("x-parley-request-id").empty()); // x-request-id already is parley's

  auto c1 = fetch(srv.port(), http::verb::get, "/healthz");
  auto c2 = fetch(srv.port(), http::verb::get, "/healthz");
  CHECK(c1.header("x-request-id").size() == 32);
  CHECK(c1.header("x-request-id") != c2.header("x-request-id"));

  // The access log line carries the id the client saw (access_log_line() waits for the line,
  // which is written after the response).
  auto la = srv.access_log_line("abc-123.x:y_z");
  CHECK(la.value("client_request_id", "") == "abc-123.x:y_z");
  CHECK(la.value("request_id", "") == a.header("x-parley-request-id"));
  CHECK(srv.access_log_line(c1.header("x-request-id")).is_object());
}

TEST_CASE("an unknown route answers 404 and a wrong method 405 with Allow", "[net][integration]") {
  server_fixture srv;
  expect_openai_error(fetch(srv.port(), http::verb::get, "/nope"), 404, "unknown_url");
  // A trailing slash is not the route's canonical spelling: refused before routing.
  auto slash = fetch(srv.port(), http::verb::get, "/healthz/");
  CHECK(slash.status == 400);
  CHECK(json::parse(slash.body)["error"]["type"] == "invalid_request_error");
  auto r = fetch(srv.port(), http::verb::post, "/healthz", "{}");
  expect_openai_error(r, 405, "method_not_allowed");
  CHECK(r.header("allow") == "GET");
}

TEST_CASE("a body over the limit answers 413 and headers over the limit 431", "[net][integration]") {
  server_fixture srv([](parley::config::settings& s) {
    s.http.max_body_bytes = 1024;
    s.http.max_header_bytes = 2048;
  });
  expect_openai_error(fetch(srv.port(), http::verb::post, "/healthz", std::string(4096, 'x')), 413,
                      "payload_too_large");
  // Chunked bodies are limited too (no Content-Length to check up front).
  {
    http_client c(srv.port());
    std::string chunk(1500, 'y');
    char size_hex[16];
    std::snprintf(size_hex, sizeof size_hex, "%zx", chunk.size());
    c.send_raw("POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
               std::string(size_hex) + "\r\n" + chunk + "\r\n0\r\n\r\n");
    expect_openai_error(c.read_reply(), 413, "payload_too_large");
  }
  expect_openai_error(fetch(srv.port(), http::verb::get, "/healthz", {},
                            {{"X-Big", std::string(4096, 'h')}}),
                      431, "request_header_fields_too_large");
  // The node is still healthy afterwards.
  CHECK(fetch(srv.port(), http::verb::get, "/healthz").status == 200);
}

TEST_CASE("a malformed request answers 400 in OpenAI's shape", "[net][integration]") {
  server_fixture srv;
  http_client c(srv.port());
  c.send_raw("GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n");
  auto r = c.read_reply();
  CHECK(r.status == 400);
  CHECK(json::parse(r.body)["error"]["type"] == "invalid_request_error");
}

TEST_CASE("keep-alive serves several requests on one connection", "[net][integration]") {
  server_fixture srv;
  http_client c(srv.port());
  for (int i = 0; i < 5; ++i)
    CHECK(c.get("/healthz").status == 200);
}

TEST_CASE("a client that sends its request too slowly is disconnected", "[net][integration]") {
  server_fixture srv([](parley::config::settings& s) { s.http.read_timeout_seconds = 1; });
  http_client c(srv.port());
  c.send_raw("GET /healthz HTTP/1.1\r\nHost: x\r\n");  // never finishes the header
  auto start = std::chrono::steady_clock::now();
  CHECK(c.closed_by_peer(std::chrono::milliseconds(3000)));
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::milliseconds(2500));
}

TEST_CASE("responses carry the security headers", "[net][integration]") {
  server_fixture srv;
  auto r = fetch(srv.port(), http::verb::get, "/healthz");
  CHECK(r.header("x-content-type-options") == "nosniff");
  CHECK(r.header("x-frame-options") == "DENY");
  CHECK(r.header("cache-control") == "no-store");
  CHECK_FALSE(r.header("content-security-policy").empty());
  CHECK(r.header("access-control-allow-origin").empty()); // CORS off by default
}

TEST_CASE("CORS answers preflights for allowed origins only", "[net][integration]") {
  server_fixture srv([](parley::config::settings& s) {
    s.http.cors_allowed_origins = {"https://app.example.com"};
  });
  auto pre = fetch(srv.port(), http::verb::options, "/v1/models", {},
                   {{"Origin", "https://app.example.com"},
                    {"Access-Control-Request-Method", "GET"},
                    {"Access-Control-Request-Headers", "authorization, x-stainless-os"}});
  CHECK(pre.status == 204);
  CHECK(pre.header("access-control-allow-origin") == "https://app.example.com");
  CHECK(pre.header("access-control-allow-methods").find("POST") != std::string::npos);
  CHECK(pre.header("access-control-allow-headers") == "authorization, x-stainless-os");
  CHECK(pre.header("vary") == "Origin");

  auto bad = fetch(srv.port(), http::verb::options, "/v1/models", {},
                   {{"Origin", "https://evil.example.com"}, {"Access-Control-Request-Method", "GET"}});
  expect_openai_error(bad, 403, "origin_not_allowed");
  CHECK(bad.header("access-control-allow-origin").empty());

  auto actual = fetch(srv.port(), http::verb::get, "/healthz", {}, {{"Origin", "https://app.example.com"}});
  CHECK(actual.status == 200);
  CHECK(actual.header("access-control-allow-origin") == "https://app.example.com");
  CHECK(actual.header("access-control-expose-headers").find("x-request-id") != std::string::npos);

  auto other = fetch(srv.port(), http::verb::get, "/healthz", {}, {{"Origin", "https://evil.example.com"}});
  CHECK(other.header("access-control-allow-origin").empty());
}
