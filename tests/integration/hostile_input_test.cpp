// Hostile bytes on the listener: whatever arrives, the node keeps serving, and nothing on the
// request path ends the process (a crash here ends the whole test binary). Also the network
// edge's own defences: the per-client connection cap and trusted-proxy client addresses.
#include "support/admin_client.hpp"
#include "support/raw_connection.hpp"

#include <catch2/catch.hpp>

#include <random>

using namespace parley::test;
namespace http = boost::beast::http;
using namespace std::chrono_literals;
using namespace std::string_literals;

namespace {

enum class expect {
  refused,         ///< every response (if any) is a 4xx; closing without one is fine too
  answered_400,    ///< the first response is a 400
  ok_then_refused, ///< the first response is a 200, any later one a 4xx
  no_5xx,          ///< anything but a 5xx (odd but legal input the server may serve)
};

struct hostile_case {
  std::string name;
  std::string bytes;
  expect what;
  bool reset = false; ///< vanish with RST after sending, instead of a half-close
  int oks = 1;        ///< ok_then_refused: how many 200s come first
};

std::string admin_auth() { return std::string("Authorization: Bearer ") + server_fixture::admin_key + "\r\n"; }

/// POST /admin/v1/tenants with the admin key and `body` as is (Content-Length counted).
std::string admin_post(const std::string& body) {
  return "POST /admin/v1/tenants HTTP/1.1\r\nHost: x\r\n" + admin_auth() +
         "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

std::vector<hostile_case> cases() {
  std::vector<hostile_case> c;
  auto add = [&](std::string name, std::string bytes, expect e, bool reset = false) {
    c.push_back({std::move(name), std::move(bytes), e, reset});
  };
  add("GARBAGE and a blank line", "GARBAGE\r\n\r\n", expect::answered_400);
  add("blank lines only", "\r\n\r\n\r\n\r\n", expect::refused);
  add("a method alone", "GET\r\n\r\n", expect::refused);
  add("an HTTP/0.9 request line", "GET /healthz\r\n\r\n", expect::refused);
  add("a request line with a fourth part", "GET /healthz HTTP/1.1 extra\r\nHost: x\r\n\r\n", expect::refused);
  add("two spaces in the request line", "GET  /healthz HTTP/1.1\r\nHost: x\r\n\r\n", expect::refused);
  add("no method", " /healthz HTTP/1.1\r\nHost: x\r\n\r\n", expect::refused);
  add("a bad protocol name", "GET /healthz HTTQ/1.1\r\nHost: x\r\n\r\n", expect::refused);
  add("HTTP/9.9", "GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", expect::no_5xx);
  add("HTTP/1.0 without Host", "GET /healthz HTTP/1.0\r\n\r\n", expect::no_5xx);
  add("an unknown method", "BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n", expect::refused);
  add("an unknown method on an admin route", "PROPFIND /admin/v1/tenants HTTP/1.1\r\nHost: x\r\n" + admin_auth() + "\r\n",
      expect::refused);
  add("a lower-case method", "get /healthz HTTP/1.1\r\nHost: x\r\n\r\n", expect::refused);
  add("CONNECT", "CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n", expect::refused);
  add("OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", expect::refused);
  add("an absolute-form target", "GET http://127.0.0.1/admin/v1/tenants HTTP/1.1\r\nHost: x\r\n" + admin_auth() + "\r\n",
      expect::refused);
  add("a NUL inside the method", "G\0ET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"s, expect::refused);
  add("a malformed percent escape", "GET /healthz%zz HTTP/1.1\r\nHost: x\r\n\r\n", expect::refused);
  add("a lone percent", "GET /% HTTP/1.1\r\nHost: x\r\n\r\n", expect::refused);
  add("an encoded NUL", "GET /healthz%00 HTTP/1.1\r\nHost: x\r\n\r\n", expect::refused);
  add("a non-ASCII target", "GET /h\xc3\xa9\xff HTTP/1.1\r\nHost: x\r\n\r\n", expect::refused);
  {
    std::mt19937 rng(20261202); // fixed seed: the same bytes on every run
    std::string bytes(8192, '\0');
    for (auto& b : bytes)
      b = static_cast<char>(rng() & 0xff);
    add("8 KiB of random bytes", bytes, expect::refused);
  }
  add("1 KiB of 0xff", std::string(1024, '\xff'), expect::refused);
  add("1 KiB of NUL", std::string(1024, '\0'), expect::refused);
  add("a TLS ClientHello", "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"s + std::string(160, '\x42'),
      expect::refused);
  add("a truncated header", "GET /healthz HTTP/1.1\r\nHost: x\r\n", expect::refused);
  add("a truncated request line", "GET /heal", expect::refused);
  add("a truncated body", "POST /admin/v1/tenants HTTP/1.1\r\nHost: x\r\n" + admin_auth() +
                            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"slug\"",
      expect::refused);
  add("a truncated chunked body", "POST /admin/v1/tenants HTTP/1.1\r\nHost: x\r\n" + admin_auth() +
                                    "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"sl",
      expect::refused);
  add("a truncated header, then RST", "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le", expect::refused,
      true);
  add("a truncated body, then RST", "POST /admin/v1/tenants HTTP/1.1\r\nHost: x\r\n" + admin_auth() +
                                      "Content-Length: 50\r\n\r\n{\"slug\":",
      expect::refused, true);
  add("stray binary bytes after a complete request",
      "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02garbage\xff\xfe\r\n\r\n"s, expect::ok_then_refused);
  add("GARBAGE after a complete request", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n", expect::ok_then_refused);
  add("half a request after a complete one", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /hea", expect::ok_then_refused);
  add("a complete request with stray CRLFs after", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\r\n\r\n\r\n",
      expect::ok_then_refused);
  add("Content-Length and Transfer-Encoding together",
      "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
      "GET /admin/v1/tenants HTTP/1.1\r\nHost: x\r\n\r\n",
      expect::refused);
  add("two different Content-Lengths", "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
      expect::refused);
  add("a negative Content-Length", "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", expect::refused);
  add("a 20-digit Content-Length", "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
      expect::refused);
  add("an overflowing chunk size", "POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   "ffffffffffffffffffffff\r\nab\r\n0\r\n\r\n",
      expect::refused);
  add("a chunk size that is not hex", "POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
      expect::refused);
  add("an unknown transfer coding", "POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
      expect::refused);
  add("a header line without a colon", "GET /healthz HTTP/1.1\r\nHost x\r\n\r\n", expect::refused);
  add("an obs-folded header", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n\r\n", expect::no_5xx);
  add("a NUL in a header value", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n"s, expect::refused);
  add("a NUL in the bearer key", "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer prly_\0\xff\r\n\r\n"s,
      expect::refused);
  add("a 20 KB bearer key", "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer prly_" + std::string(20000, 'A') + "\r\n\r\n",
      expect::refused);
  {
    std::string many = "GET /healthz HTTP/1.1\r\nHost: x\r\n";
    for (int i = 0; i < 5000; ++i)
      many += "X: y\r\n";
    add("5000 header lines", many + "\r\n", expect::refused);
  }
  add("a 20 KB target", "GET /" + std::string(20000, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n", expect::refused);
  add("a path of 5000 segments", "GET " + [] {
        std::string p;
        for (int i = 0; i < 5000; ++i)
          p += "/a";
        return p;
      }() + " HTTP/1.1\r\nHost: x\r\n\r\n",
      expect::refused);
  add("Expect: 100-continue and no body", "POST /healthz HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
      expect::no_5xx);
  add("an Upgrade to websocket", "GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
      expect::no_5xx);
  add("invalid UTF-8 in a JSON body", admin_post("{\"slug\":\"a\",\"name\":\"\xc3\x28\xff\"}"), expect::answered_400);
  add("a JSON body that is binary", admin_post("\x01\x02\x03{[\"\xff\x00"s), expect::answered_400);
  add("a JSON number out of range", admin_post("{\"slug\":\"big\",\"name\":\"x\",\"n\":1e999}"), expect::answered_400);
  add("a JSON key repeated", admin_post("{\"slug\":\"rep\",\"name\":\"x\",\"slug\":\"other\"}"), expect::answered_400);
  {
    std::string pipelined;
    for (int i = 0; i < 100; ++i)
      pipelined += "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    add("100 pipelined requests and garbage", pipelined + "\x01\x02GARBAGE\r\n\r\n", expect::ok_then_refused);
    c.back().oks = 100;
  }
  return c;
}

std::string describe(const std::vector<int>& statuses) {
  std::string s;
  for (auto st : statuses)
    s += std::to_string(st) + " ";
  return s.empty() ? "(no response)" : s;
}

/// The client field of the access-log line of `request_id` (waited for, bounded).
std::string logged_client(server_fixture& srv, const std::string& request_id) {
  auto line = srv.access_log_line(request_id);
  return line.is_object() ? line.value("client", "") : "(no access-log line for " + request_id + ")";
}

} // namespace

TEST_CASE("any sequence of bytes sent to the listener leaves the node serving", "[security][integration]") {
  server_fixture srv([](parley::config::settings& s) {
    s.http.read_timeout_seconds = 5;
    s.auth.failed_auth_per_minute = 0;
  });
  // A keep-alive connection opened before the onslaught must still work after it.
  http_client bystander(srv.port());
  REQUIRE(bystander.get("/healthz").status == 200);
  for (auto& hc : cases()) {
    INFO("case: " << hc.name);
    std::vector<int> got;
    {
      raw_connection c(srv.port());
      REQUIRE(c.connected());
      c.send(hc.bytes);
      if (hc.reset) {
        c.reset();
      } else {
        c.half_close();
        bool closed = false;
        auto raw = c.drain(10s, &closed);
        got = raw_connection::statuses(raw);
        INFO("responses: " << describe(got) << "\n" << raw.substr(0, 600));
        CHECK(closed); // the server ends the connection once the client has nothing more to send
        switch (hc.what) {
          case expect::refused:
            for (auto st : got)
              CHECK((st >= 400 && st < 500));
            break;
          case expect::answered_400:
            REQUIRE_FALSE(got.empty());
            CHECK(got.front() == 400);
            CHECK(raw.find("\"invalid_request_error\"") != std::string::npos);
            break;
          case expect::ok_then_refused:
            REQUIRE(got.size() >= static_cast<std::size_t>(hc.oks));
            for (std::size_t i = 0; i < got.size(); ++i) {
              if (i < static_cast<std::size_t>(hc.oks))
                CHECK(got[i] == 200);
              else
                CHECK((got[i] >= 400 && got[i] < 500));
            }
            break;
          case expect::no_5xx:
            for (auto st : got)
              CHECK(st < 500);
            break;
        }
      }
    }
    // After every case a fresh connection is served at once.
    auto h = fetch(srv.port(), http::verb::get, "/healthz");
    REQUIRE(h.status == 200);
  }
  CHECK(bystander.get("/healthz").status == 200);
  auto admin = admin_call(srv.port(), http::verb::get, "/admin/v1/tenants");
  CHECK(admin.status == 200);
  // None of it reached a handler that creates something.
  CHECK(json::parse(admin.body)["data"].empty());
  auto logs = srv.logs();
  CHECK(logs.find("exception escaped") == std::string::npos);
  CHECK(logs.find("unhandled") == std::string::npos);
  CHECK(logs.find("\"level\":\"critical\"") == std::string::npos);
}

TEST_CASE("a fifth concurrent connection from one client is closed at once while the first four serve",
          "[security][integration]") {
  server_fixture srv([](parley::config::settings& s) { s.http.max_connections_per_client = 4; });
  std::vector<std::unique_ptr<http_client>> four;
  for (int i = 0; i < 4; ++i) {
    four.push_back(std::make_unique<http_client>(srv.port()));
    REQUIRE(four.back()->get("/healthz").status == 200); // admitted and serving
  }
  {
    raw_connection fifth(srv.port());
    REQUIRE(fifth.connected()); // the kernel completes the handshake; the server then refuses
    fifth.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    bool closed = false;
    auto raw = fifth.drain(5s, &closed);
    CHECK(closed);
    CHECK(raw.empty()); // closed without an answer
  }
  for (auto& c : four)
    CHECK(c->get("/healthz").status == 200);
  // A connection that goes frees its place (the server notices the close asynchronously).
  four.pop_back();
  bool served = false;
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!served && std::chrono::steady_clock::now() < deadline) {
    raw_connection again(srv.port());
    again.send("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    auto st = raw_connection::statuses(again.drain(2s));
    served = st.size() == 1 && st[0] == 200;
  }
  CHECK(served);
}

TEST_CASE("behind a trusted proxy the access log names the client from X-Forwarded-For",
          "[security][integration]") {
  server_fixture srv([](parley::config::settings& s) { s.http.trusted_proxies = {"127.0.0.1"}; });
  auto r = fetch(srv.port(), http::verb::get, "/healthz", {}, {{"X-Forwarded-For", "203.0.113.7"}});
  REQUIRE(r.status == 200);
  CHECK(logged_client(srv, r.header("x-request-id")) == "203.0.113.7");
  // A chain: the nearest untrusted hop is the client, whatever the client claimed before it.
  auto chain = fetch(srv.port(), http::verb::get, "/healthz", {},
                     {{"X-Forwarded-For", "198.51.100.1, 203.0.113.9, 127.0.0.1"}});
  CHECK(logged_client(srv, chain.header("x-request-id")) == "203.0.113.9");
  // Without the header the proxy itself is the client.
  auto plain = fetch(srv.port(), http::verb::get, "/healthz");
  CHECK(logged_client(srv, plain.header("x-request-id")) == "127.0.0.1");
}

TEST_CASE("without trusted proxies X-Forwarded-For and Forwarded are ignored", "[security][integration]") {
  server_fixture srv;
  auto r = fetch(srv.port(), http::verb::get, "/healthz", {},
                 {{"X-Forwarded-For", "203.0.113.7"}, {"Forwarded", "for=198.51.100.9"}});
  REQUIRE(r.status == 200);
  CHECK(logged_client(srv, r.header("x-request-id")) == "127.0.0.1");
  auto only_xff = fetch(srv.port(), http::verb::get, "/healthz", {}, {{"X-Forwarded-For", "203.0.113.7"}});
  CHECK(logged_client(srv, only_xff.header("x-request-id")) == "127.0.0.1");
}
