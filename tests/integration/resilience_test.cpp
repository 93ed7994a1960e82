// Upstream resilience end to end: the real server (server_fixture) with resilient routes to
// fake upstream processes (tests/fake_upstream) over loopback, faults scripted per test.
#include "support/admin_client.hpp"
#include "support/sse.hpp"
#include "support/wait.hpp"

#include <boost/asio.hpp>
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <thread>

using namespace parley::test;
namespace http = boost::beast::http;
namespace asio = boost::asio;
using std::chrono::milliseconds;
using steady = std::chrono::steady_clock;

namespace {

/// A fake upstream process in its own scratch directory.
struct fake_upstream {
  temp_dir dir;
  uint16_t port = 0;
  std::unique_ptr<child_process> proc;

  fake_upstream() { proc = start_fake_upstream(dir, port); }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port) + "/v1"; }
  json stats() const { return json::parse(fetch(port, http::verb::get, "/_stats").body); }
  int64_t requests() const { return stats()["chat_requests"].get<int64_t>(); }
  /// The next `count` chat requests (-1: all until reset) follow `script`.
  void script(const json& s, int count) const {
    auto r = fetch(port, http::verb::post, "/_script", json{{"count", count}, {"script", s}}.dump());
    REQUIRE(r.status == 200);
  }
  void reset() const { REQUIRE(fetch(port, http::verb::post, "/_reset").status == 200); }
};

/// Routes for the next server_fixture (its tweak is a plain function pointer).
std::vector<parley::config::route_settings> next_routes;

void use_routes(parley::config::settings& s) { s.routes = next_routes; }

/// Test defaults on top of the [resilience] defaults: short backoffs and a short open breaker.
parley::config::resilience_settings quick() {
  parley::config::settings s;
  auto r = s.resilience;
  r.backoff_base_ms = 5;
  r.backoff_max_ms = 20;
  r.breaker_open_ms = 1000;
  return r;
}

/// The same, with no retries and no breaker: a test of one attempt.
parley::config::resilience_settings single_attempt() {
  auto r = quick();
  r.max_attempts = 1;
  r.breaker_failures = 0;
  r.breaker_failure_percent = 0;
  return r;
}

parley::config::route_settings route_to(const std::string& model, const std::string& base_url,
                                        parley::config::resilience_settings r,
                                        std::vector<std::string> fallbacks = {}) {
  parley::config::route_settings rs;
  rs.model = model;
  rs.upstream_model = "fake-model";
  rs.base_url = base_url;
  rs.resilience = std::move(r);
  rs.fallbacks = std::move(fallbacks);
  return rs;
}

json msg(const std::string& text) { return json::array({{{"role", "user"}, {"content", text}}}); }

/// A node serving `routes`, with one tenant and its key.
struct node {
  std::unique_ptr<server_fixture> srv;
  std::string key;
  std::string tenant_id;

  explicit node(std::vector<parley::config::route_settings> routes, const json& tenant_extra = json::object()) {
    next_routes = std::move(routes);
    srv = std::make_unique<server_fixture>(use_routes);
    auto t = create_tenant(srv->port(), "res", tenant_extra);
    tenant_id = t["id"];
    key = create_key(srv->port(), tenant_id)["key"];
  }

  /// The tenant's usage ledger: one row per upstream attempt.
  json attempts() const {
    auto r = fetch(srv->port(), http::verb::get, "/admin/v1/tenants/" + tenant_id + "/usage/attempts",
                   "", {{"Authorization", std::string("Bearer ") + server_fixture::admin_key}});
    REQUIRE(r.status == 200);
    return json::parse(r.body)["data"];
  }

  /// The ledger rows of one request, once there are any: a turn commits its rows when its call
  /// has ended (a failed one right after its error was sent), so their arrival is the positive
  /// event that says no further attempt of that request can follow. Null after 5 s without.
  json attempts_of(const std::string& request_id) const {
    json mine = json::array();
    bool ended = wait_until(deadline_in(std::chrono::seconds(5)), [&] {
      mine = json::array();
      for (auto& row : attempts())
        if (row["request_id"] == request_id)
          mine.push_back(row);
      return !mine.empty();
    });
    return ended ? mine : json(nullptr);
  }

  /// The tenant's usage rollup summed over all rows: {requests, errors} (upstream attempts).
  std::pair<int64_t, int64_t> usage() const {
    auto r = fetch(srv->port(), http::verb::get, "/admin/v1/tenants/" + tenant_id + "/usage", "",
                   {{"Authorization", std::string("Bearer ") + server_fixture::admin_key}});
    REQUIRE(r.status == 200);
    int64_t requests = 0, errors = 0;
    auto rows = json::parse(r.body);
    for (auto& row : rows["data"]) {
      requests += row["requests"].get<int64_t>();
      errors += row["errors"].get<int64_t>();
    }
    return {requests, errors};
  }

  /// One call through the built-in echo model: the key is cached and the tenant's actor runs,
  /// so that a timed call measures the upstream path only.
  void warm_up() const {
    auto r = chat({{"model", "parley-echo"}, {"messages", msg("warm")}, {"max_tokens", 1}});
    REQUIRE(r.status == 200);
  }

  http_reply chat(const json& body) const {
    return fetch(srv->port(), http::verb::post, "/v1/chat/completions", body.dump(), bearer(key));
  }
  json readyz() const {
    return json::parse(fetch(srv->port(), http::verb::get, "/readyz", "",
                             {{"Authorization", std::string("Bearer ") + server_fixture::admin_key}})
                         .body);
  }
  /// This deployment's entry in /readyz's upstreams.
  json upstream(const std::string& route) const {
    auto r = readyz();
    if (r.contains("upstreams"))
      for (auto& u : r["upstreams"])
        if (u.value("route", "") == route)
          return u;
    return nullptr;
  }
};

json chat_body(const std::string& model, const std::string& text, bool stream = false) {
  json b = {{"model", model}, {"messages", msg(text)}};
  if (stream)
    b["stream"] = true;
  return b;
}

/// Calls `fn` and returns how long it took.
template <class F>
milliseconds timed(F&& fn) {
  auto t = steady::now();
  fn();
  return std::chrono::duration_cast<milliseconds>(steady::now() - t);
}

/// At the setting: never before it (less a millisecond of rounding), and within half the
/// setting after it. The faults these tests script last far longer (a stall of 3 s, a stream of
/// 2.4 s, a connect that never completes), so a timeout that did not fire, or fired on another
/// timer, still fails; the room above the setting absorbs a loaded machine (2 cores, ctest -j2),
/// where a request crosses several threads that may each wait for a core.
void check_near(milliseconds took, int setting_ms) {
  INFO("took " << took.count() << " ms for a setting of " << setting_ms << " ms");
  CHECK(took.count() >= setting_ms - 1);
  CHECK(took.count() <= setting_ms * 3 / 2);
}

/// After a warm-up, one timed call that must fail with 504 upstream_timeout at `setting_ms`
/// (check_near); returns the reply for further checks.
http_reply expect_timeout_504(const node& n, const json& body, int setting_ms) {
  n.warm_up();
  http_reply rep;
  auto took = timed([&] { rep = n.chat(body); });
  INFO(rep.body);
  CHECK(rep.status == 504);
  CHECK(json::parse(rep.body)["error"]["code"] == "upstream_timeout");
  check_near(took, setting_ms);
  return rep;
}

/// The streamed error event (the frame before [DONE]) of an SSE body, or null.
json stream_error(const std::string& body) {
  auto ev = sse_data(body);
  if (ev.size() < 2 || ev.back() != "[DONE]")
    return nullptr;
  auto j = json::parse(ev[ev.size() - 2], nullptr, false);
  return j.is_object() && j.contains("error") ? j : json(nullptr);
}

std::string free_port_url(const std::string& scheme, const asio::ip::tcp::acceptor& a) {
  return scheme + "://127.0.0.1:" + std::to_string(a.local_endpoint().port()) + "/v1";
}

} // namespace

// ---- fallbacks -----------------------------------------------------------------------------------

TEST_CASE("a 30 % rate of random 503s on the primary with one healthy fallback keeps client success at 99 % or more",
          "[resilience][integration]") {
  fake_upstream primary, backup;
  primary.script({{"fail_ratio", 0.3}, {"status", 503}, {"seed", 6}}, -1);
  auto r = quick();
  r.max_attempts = 2;
  node n({route_to("main-model", primary.url(), r, {"backup-model"}), route_to("backup-model", backup.url(), quick())});

  constexpr int threads = 6, per_thread = 50;
  std::atomic<int> ok{0}, by_backup{0}, by_main{0}, wrong{0};
  std::mutex mu;
  std::vector<std::string> failures, thrown;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        // A worker only records what happened (a throw here would end the whole run); the
        // test thread asserts.
        try {
          bool stream = i % 5 == 0;
          auto text = "call " + std::to_string(t) + " " + std::to_string(i);
          auto rep = n.chat(chat_body("main-model", text, stream));
          if (rep.status != 200) {
            std::lock_guard<std::mutex> lock(mu);
            failures.push_back(std::to_string(rep.status) + " " + rep.body);
            continue;
          }
          std::string model, content;
          if (stream) {
            auto ev = sse_data(rep.body);
            if (ev.empty() || ev.back() != "[DONE]" || stream_error(rep.body).is_object()) {
              std::lock_guard<std::mutex> lock(mu);
              failures.push_back("stream: " + rep.body);
              continue;
            }
            for (std::size_t k = 0; k + 1 < ev.size(); ++k) {
              auto c = json::parse(ev[k]);
              if (!model.empty() && c["model"] != model)
                ++wrong; // every chunk names the same model
              model = c["model"];
              if (!c["choices"].empty())
                content += c["choices"][0]["delta"].value("content", "");
            }
          } else {
            auto j = json::parse(rep.body);
            model = j["model"];
            content = j["choices"][0]["message"]["content"];
          }
          if (content != "echo: " + text)
            ++wrong;
          ++ok;
          if (model == "backup-model")
            ++by_backup;
          else if (model == "main-model")
            ++by_main;
          else
            ++wrong;
        } catch (const std::exception& e) { // no answer, or one that is not the API's JSON
          std::lock_guard<std::mutex> lock(mu);
          thrown.push_back(e.what());
        }
      }
    });
  for (auto& th : pool)
    th.join();
  const int total = threads * per_thread;
  INFO("failures: " << (failures.empty() ? std::string("none") : failures.front()));
  INFO("thrown: " << (thrown.empty() ? std::string("none") : thrown.front()));
  CHECK(thrown.empty());
  CHECK(ok >= total * 99 / 100);
  CHECK(wrong == 0);
  CHECK(by_main + by_backup == ok);
  // The fallback did serve some, and every response it served names it.
  CHECK(by_backup > 0);
  CHECK(backup.requests() == by_backup);
  auto st = primary.stats();
  INFO(st.dump());
  // Faults were injected at about the scripted rate.
  auto injected = st["injected_failures"].get<double>() / st["chat_requests"].get<double>();
  CHECK(injected > 0.2);
  CHECK(injected < 0.4);
}

TEST_CASE("a fallback the tenant may not use is skipped", "[resilience][integration]") {
  fake_upstream primary, backup;
  primary.script({{"status", 503}}, -1);
  node n({route_to("main-model", primary.url(), single_attempt(), {"backup-model"}),
          route_to("backup-model", backup.url(), quick())},
         {{"config", {{"allowed_models", {"main-model"}}}}});
  auto r = n.chat(chat_body("main-model", "hi"));
  CHECK(r.status == 503);
  CHECK(backup.requests() == 0);
  CHECK(primary.requests() == 1);
}

// ---- timeouts ------------------------------------------------------------------------------------

TEST_CASE("the connect timeout fires at connect_timeout_ms", "[resilience][integration]") {
  // A listener with a full accept queue: Linux drops further SYNs, so connects hang.
  asio::io_context ioc;
  asio::ip::tcp::acceptor acc(ioc);
  asio::ip::tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), 0);
  acc.open(ep.protocol());
  acc.bind(ep);
  acc.listen(0);
  asio::ip::tcp::socket filler(ioc);
  filler.connect(acc.local_endpoint()); // fills the queue (never accepted)
  {
    // Check that this kernel indeed leaves a further connect hanging.
    boost::beast::tcp_stream probe(ioc);
    probe.expires_after(milliseconds(150));
    boost::system::error_code ec;
    probe.async_connect(acc.local_endpoint(), [&](boost::system::error_code e) { ec = e; });
    ioc.run();
    ioc.restart();
    INFO("a connect to a full accept queue ended with: " << ec.message());
    REQUIRE(ec == boost::beast::error::timeout);
  }
  auto r = single_attempt();
  r.connect_timeout_ms = 800;
  node n({route_to("m", free_port_url("http", acc), r)});
  expect_timeout_504(n, chat_body("m", "hello"), 800);
}

TEST_CASE("the TLS handshake timeout fires at tls_timeout_ms", "[resilience][integration]") {
  // A listener that completes TCP handshakes (the kernel does) but never says a TLS word.
  asio::io_context ioc;
  asio::ip::tcp::acceptor acc(ioc, {asio::ip::make_address("127.0.0.1"), 0});
  auto r = single_attempt();
  r.tls_timeout_ms = 800;
  node n({route_to("m", free_port_url("https", acc), r)});
  expect_timeout_504(n, chat_body("m", "hello"), 800);
}

TEST_CASE("the first-byte timeout fires at first_byte_timeout_ms and cancels the upstream request",
          "[resilience][integration]") {
  fake_upstream up;
  auto r = single_attempt();
  r.first_byte_timeout_ms = 800;
  node n({route_to("m", up.url(), r)});
  expect_timeout_504(n, chat_body("m", "SCRIPT:{\"latency_ms\":3000} slow"), 800);
  // The upstream saw its client go away (the request was cancelled, not left to run).
  CHECK(wait_until(deadline_in(milliseconds(1000)), [&] { return up.stats()["client_disconnects"] == 1; }));
  CHECK(up.stats()["open_responses"] == 0);
  CHECK(up.requests() == 1);
}

TEST_CASE("the idle timeout ends a started stream with an error event at idle_timeout_ms",
          "[resilience][integration]") {
  fake_upstream up;
  auto r = quick(); // retries allowed: none may happen once tokens flowed
  r.idle_timeout_ms = 800;
  node n({route_to("m", up.url(), r)});
  n.warm_up();
  http_reply rep;
  auto took = timed([&] {
    rep = n.chat(chat_body("m", "SCRIPT:{\"stall_after_tokens\":2,\"stall_ms\":3000} a b c d", true));
  });
  REQUIRE(rep.status == 200);
  auto err = stream_error(rep.body);
  INFO(rep.body);
  REQUIRE(err.is_object());
  CHECK(err["error"]["code"] == "upstream_timeout");
  CHECK(err["error"]["type"] == "server_error");
  // The two tokens before the stall reached the client.
  CHECK(rep.body.find("\"content\":\"echo:\"") != std::string::npos);
  CHECK(rep.body.find("\"content\":\" a\"") != std::string::npos);
  check_near(took, 800);
  // No retry once tokens flowed: the request's ledger rows (committed when its call ended)
  // hold its one attempt, and the upstream saw one request.
  auto rows = n.attempts_of(rep.header("x-request-id"));
  INFO(rows.dump());
  REQUIRE(rows.is_array());
  CHECK(rows.size() == 1);
  CHECK(up.requests() == 1);
  CHECK(wait_until(deadline_in(milliseconds(1000)), [&] { return up.stats()["client_disconnects"] == 1; }));
}

TEST_CASE("the idle timeout before the first token answers 504 at idle_timeout_ms",
          "[resilience][integration]") {
  fake_upstream up;
  auto r = single_attempt();
  r.idle_timeout_ms = 800;
  node n({route_to("m", up.url(), r)});
  expect_timeout_504(n, chat_body("m", "SCRIPT:{\"stall_after_tokens\":0,\"stall_ms\":3000} a b"), 800);
}

TEST_CASE("the total timeout of a non-streaming call answers 504 at total_timeout_ms",
          "[resilience][integration]") {
  fake_upstream up;
  auto r = single_attempt();
  r.total_timeout_ms = 1000;
  node n({route_to("m", up.url(), r)});
  // 12 tokens at 5 per second: 2.4 s, each gap well within the idle timeout.
  expect_timeout_504(n, chat_body("m", "SCRIPT:{\"tokens_per_second\":5} a b c d e f g h i j k"), 1000);
  CHECK(wait_until(deadline_in(milliseconds(1000)), [&] { return up.stats()["client_disconnects"] == 1; }));
  CHECK(up.stats()["streams_completed"] == 0);
}

// ---- resets --------------------------------------------------------------------------------------

TEST_CASE("resets before the first byte are retried and a later attempt serves the client",
          "[resilience][integration]") {
  fake_upstream up;
  auto r = quick();
  r.breaker_failures = 0;
  r.breaker_failure_percent = 0;
  r.max_attempts = 3;
  node n({route_to("m", up.url(), r)});
  SECTION("one reset: two attempts") {
    up.script({{"reset_before_first_byte", true}}, 1);
    auto rep = n.chat(chat_body("m", "after a reset"));
    INFO(rep.body);
    CHECK(rep.status == 200);
    CHECK(json::parse(rep.body)["choices"][0]["message"]["content"] == "echo: after a reset");
    CHECK(up.requests() == 2);
    // One ledger row per attempt, durable before the answer: the failed one and the served one.
    auto u = n.usage();
    CHECK(u.first == 2);
    CHECK(u.second == 1);
    auto rows = n.attempts();
    INFO(rows.dump());
    REQUIRE(rows.size() == 2);
    CHECK(rows[0]["request_id"] == rows[1]["request_id"]);
    CHECK(rows[0]["attempt"] == 1);
    CHECK(rows[0]["outcome"] == "error");
    CHECK(rows[0]["completion_tokens"] == 0);
    CHECK(rows[1]["attempt"] == 2);
    CHECK(rows[1]["outcome"] == "ok");
    CHECK(rows[1]["completion_tokens"] == 4);
    CHECK(rows[1]["served_model"] == "m");
  }
  SECTION("two resets: three attempts, streaming") {
    up.script({{"reset_before_first_byte", true}}, 2);
    auto rep = n.chat(chat_body("m", "after two resets", true));
    CHECK(rep.status == 200);
    CHECK_FALSE(stream_error(rep.body).is_object());
    CHECK(sse_data(rep.body).back() == "[DONE]");
    CHECK(up.requests() == 3);
  }
  SECTION("resets beyond max_attempts: the client gets 502 after three attempts") {
    up.script({{"reset_before_first_byte", true}}, 5);
    auto rep = n.chat(chat_body("m", "always reset"));
    CHECK(rep.status == 502);
    CHECK(up.requests() == 3);
    // A failed request's rows are committed after its answer: wait for them.
    auto u = n.usage();
    wait_until(deadline_in(std::chrono::seconds(5)), [&] { return (u = n.usage()).first >= 3; });
    CHECK(u.first == 3);
    CHECK(u.second == 3);
  }
}

TEST_CASE("a reset after the first token ends the stream with an error event and is not retried",
          "[resilience][integration]") {
  fake_upstream up;
  auto r = quick();
  r.max_attempts = 3;
  node n({route_to("m", up.url(), r)});
  auto rep = n.chat(chat_body("m", "SCRIPT:{\"reset_after_tokens\":2,\"tokens_per_second\":50} a b c d e", true));
  REQUIRE(rep.status == 200);
  auto err = stream_error(rep.body);
  INFO(rep.body);
  REQUIRE(err.is_object());
  CHECK(err["error"]["code"] == "upstream_error");
  CHECK(sse_data(rep.body).back() == "[DONE]");
  // The request's ledger rows are committed once its call has ended, after any retry it made:
  // exactly one attempt, and the upstream saw one request.
  auto rows = n.attempts_of(rep.header("x-request-id"));
  INFO(rows.dump());
  REQUIRE(rows.is_array());
  CHECK(rows.size() == 1);
  CHECK(up.requests() == 1);
}

// ---- Retry-After ---------------------------------------------------------------------------------

TEST_CASE("an upstream's Retry-After is waited for up to retry_after_max_ms and a longer one is not retried",
          "[resilience][integration]") {
  fake_upstream up;
  auto r = quick();
  r.breaker_failures = 0;
  r.breaker_failure_percent = 0;
  r.retry_after_max_ms = 2000;
  node n({route_to("m", up.url(), r)});
  n.warm_up();
  SECTION("Retry-After: 1 (second) is honoured, then the retry succeeds") {
    up.script({{"status", 503}, {"retry_after", 1}}, 1);
    http_reply rep;
    auto took = timed([&] { rep = n.chat(chat_body("m", "later")); });
    CHECK(rep.status == 200);
    CHECK(up.requests() == 2);
    CHECK(took >= milliseconds(1000));
    CHECK(took < milliseconds(1800)); // and not the 2 s cap: the upstream's own second
  }
  SECTION("Retry-After: 60 is beyond the cap: the 429 is answered at once, without a retry") {
    up.script({{"status", 429}, {"retry_after", 60}}, 1);
    http_reply rep;
    auto took = timed([&] { rep = n.chat(chat_body("m", "much later")); });
    CHECK(rep.status == 503);
    CHECK(up.requests() == 1);
    CHECK(took < milliseconds(2000)); // not even the cap was waited, let alone the 60 s
  }
}

// ---- circuit breaker -----------------------------------------------------------------------------

TEST_CASE("consecutive failures open the circuit breaker, which fails fast and recovers through half-open",
          "[resilience][integration]") {
  fake_upstream up;
  auto r = quick();
  r.max_attempts = 1;
  r.breaker_failures = 3;
  r.breaker_failure_percent = 0;
  r.breaker_open_ms = 2000; // the checks while open must fit in it, however loaded the machine
  node n({route_to("flaky", up.url(), r)});
  CHECK(n.upstream("flaky")["breaker"] == "closed");

  up.script({{"status", 500}}, -1);
  auto before_opening = steady::now();
  for (int i = 0; i < 3; ++i) {
    if (i == 2)
      before_opening = steady::now(); // the third failure opens the breaker
    CHECK(n.chat(chat_body("flaky", "fail " + std::to_string(i))).status == 502);
  }
  REQUIRE(up.requests() == 3);
  auto u = n.upstream("flaky");
  INFO(n.readyz().dump());
  CHECK(u["breaker"] == "open");
  CHECK(u["breaker_opened"] == 1);
  auto opened_at = steady::now();

  // Open: refused at once without a request upstream.
  http_client c(n.srv->port());
  std::vector<milliseconds::rep> micros;
  for (int i = 0; i < 7; ++i) {
    auto t = steady::now();
    auto rep = c.post("/v1/chat/completions", chat_body("flaky", "refused").dump(), bearer(n.key));
    micros.push_back(std::chrono::duration_cast<std::chrono::microseconds>(steady::now() - t).count());
    CHECK(rep.status == 503);
    CHECK(json::parse(rep.body)["error"]["code"] == "overloaded");
    CHECK(json::parse(rep.body)["error"]["message"].get<std::string>().find("circuit breaker") != std::string::npos);
  }
  std::sort(micros.begin(), micros.end());
  INFO("fast-fail latencies (us), sorted: " << json(micros).dump());
  // The median, at the client, over HTTP: a few milliseconds when idle; the bound leaves room
  // for a loaded machine and is still far below any upstream timeout or backoff.
  CHECK(micros[micros.size() / 2] < 50000);
  CHECK(up.requests() == 3);
  REQUIRE(steady::now() - opened_at < milliseconds(2000)); // all of this happened while open

  // After breaker_open_ms (a real time: waited for as a condition, bounded) the next call is a
  // probe; the upstream has recovered.
  up.reset();
  REQUIRE(wait_until(deadline_in(milliseconds(10000)), [&] { return n.upstream("flaky")["breaker"] == "half_open"; }));
  CHECK(steady::now() - before_opening >= milliseconds(2000)); // not before breaker_open_ms
  auto probe = n.chat(chat_body("flaky", "probe"));
  CHECK(probe.status == 200);
  CHECK(up.requests() == 1);
  CHECK(n.upstream("flaky")["breaker"] == "closed");
  for (int i = 0; i < 3; ++i)
    CHECK(n.chat(chat_body("flaky", "flows again")).status == 200);
  CHECK(up.requests() == 4);
}

TEST_CASE("a failed half-open probe opens the circuit breaker again", "[resilience][integration]") {
  fake_upstream up;
  auto r = quick();
  r.max_attempts = 1;
  r.breaker_failures = 2;
  r.breaker_failure_percent = 0;
  r.breaker_open_ms = 1000; // the refused call below must come while it is open again
  node n({route_to("flaky", up.url(), r)});
  up.script({{"status", 503}}, -1);
  for (int i = 0; i < 2; ++i)
    n.chat(chat_body("flaky", "x"));
  REQUIRE(n.upstream("flaky")["breaker"] == "open");
  // breaker_open_ms is a real time: wait until it has passed (bounded).
  REQUIRE(wait_until(deadline_in(milliseconds(10000)), [&] { return n.upstream("flaky")["breaker"] == "half_open"; }));
  CHECK(n.chat(chat_body("flaky", "probe")).status == 503); // the probe reaches the upstream and fails
  CHECK(up.requests() == 3);
  auto u = n.upstream("flaky");
  CHECK(u["breaker"] == "open");
  CHECK(u["breaker_opened"] == 2);
  CHECK(n.chat(chat_body("flaky", "refused")).status == 503);
  CHECK(up.requests() == 3);
}

TEST_CASE("an open circuit breaker sends calls to the fallback at once", "[resilience][integration]") {
  fake_upstream primary, backup;
  auto r = quick();
  r.max_attempts = 1;
  r.breaker_failures = 2;
  r.breaker_failure_percent = 0;
  r.breaker_open_ms = 60000;
  node n({route_to("main-model", primary.url(), r, {"backup-model"}), route_to("backup-model", backup.url(), quick())});
  primary.script({{"status", 503}}, -1);
  for (int i = 0; i < 5; ++i) {
    auto rep = n.chat(chat_body("main-model", "x " + std::to_string(i)));
    REQUIRE(rep.status == 200);
    CHECK(json::parse(rep.body)["model"] == "backup-model");
  }
  CHECK(primary.requests() == 2); // then the breaker opened
  CHECK(backup.requests() == 5);
}

// ---- retry budget --------------------------------------------------------------------------------

TEST_CASE("the retry budget bounds upstream requests during an outage", "[resilience][integration]") {
  fake_upstream up;
  up.script({{"status", 503}}, -1);
  auto r = quick();
  r.breaker_failures = 0;
  r.breaker_failure_percent = 0;
  r.max_attempts = 3;
  r.backoff_base_ms = 1;
  r.backoff_max_ms = 5;
  r.retry_budget_percent = 20;
  r.retry_budget_min_per_second = 1;
  node n({route_to("down", up.url(), r)});
  constexpr int N = 100, threads = 4;
  std::atomic<int> unavailable{0}, thrown{0};
  std::vector<std::thread> pool;
  auto t = steady::now();
  for (int k = 0; k < threads; ++k)
    pool.emplace_back([&] {
      // Workers only count (an exception here would end the whole run); the test thread asserts.
      for (int i = 0; i < N / threads; ++i) {
        try {
          if (n.chat(chat_body("down", "x")).status == 503)
            ++unavailable;
        } catch (const std::exception&) {
          ++thrown;
        }
      }
    });
  for (auto& th : pool)
    th.join();
  REQUIRE(steady::now() - t < std::chrono::seconds(10)); // within one budget window
  CHECK(thrown == 0);
  CHECK(unavailable == N);
  auto seen = up.requests();
  INFO("upstream requests: " << seen);
  // 20 % of 100 requests plus 1 per second over the 10 s window; without a budget: 3N.
  CHECK(seen >= N);
  CHECK(seen <= N * 12 / 10 + 1 * 10 + 2);
  CHECK(seen > N); // retries did happen, within the budget
}

// ---- cancellation --------------------------------------------------------------------------------

TEST_CASE("a client disconnect cancels the upstream request", "[resilience][integration]") {
  fake_upstream up;
  node n({route_to("m", up.url(), quick())});
  auto body = chat_body("m", "SCRIPT:{\"tokens_per_second\":10} a b c d e f g h i j k l m n o p q r s t", true).dump();
  {
    http_client c(n.srv->port());
    send_chat_raw(c, n.key, body);
    read_until(c, "\"content\":\"echo:\"");
    REQUIRE(up.stats()["open_responses"] == 1);
  } // the client goes away after its first chunk
  auto t = steady::now();
  REQUIRE(wait_until(deadline_in(milliseconds(2000)), [&] { return up.stats()["client_disconnects"] == 1; }));
  CHECK(steady::now() - t < milliseconds(1000));
  CHECK(up.stats()["open_responses"] == 0);
  CHECK(up.stats()["streams_completed"] == 0);
  CHECK(up.requests() == 1);
}

// ---- secrets and headers -------------------------------------------------------------------------

TEST_CASE("upstream rate-limit headers are not passed through and the upstream key never reaches clients or logs",
          "[resilience][integration]") {
  fake_upstream up;
  const std::string secret = "sk-resilience-secret-9f8e7d6c5b4a";
  ::setenv("PARLEY_TEST_RESILIENCE_KEY", secret.c_str(), 1);
  auto rs = route_to("m", up.url(), quick());
  rs.api_key_env = "PARLEY_TEST_RESILIENCE_KEY";
  node n({rs}, {{"config", {{"limits", {{"requests_per_minute", 1000}}}}}});
  std::vector<http_reply> replies;
  replies.push_back(n.chat(chat_body("m", "SCRIPT:{\"ratelimit_headers\":true} hi")));
  replies.push_back(n.chat(chat_body("m", "SCRIPT:{\"ratelimit_headers\":true} hi", true)));
  replies.push_back(n.chat(chat_body("m", "SCRIPT:{\"ratelimit_headers\":true,\"status\":429,\"retry_after\":60} hi")));
  replies.push_back(n.chat(chat_body("m", "SCRIPT:{\"status\":401} hi")));
  CHECK(replies[0].status == 200);
  CHECK(replies[1].status == 200);
  CHECK(replies[2].status == 503);
  CHECK(replies[3].status == 502);
  CHECK(up.stats()["last_headers"]["authorization"] == "Bearer " + secret); // the key did go upstream
  for (auto& rep : replies) {
    INFO(rep.status << " " << rep.body);
    // parley's own limits (the tenant's 1000/min), never the upstream's 100 / 0 / 1s / 10000.
    if (rep.status == 200) {
      CHECK(rep.header("x-ratelimit-limit-requests") == "1000");
      CHECK(rep.header("x-ratelimit-remaining-requests") != "0");
    } else {
      CHECK(rep.header("x-ratelimit-limit-requests") != "100");
    }
    CHECK(rep.header("x-ratelimit-limit-tokens").empty());
    CHECK(rep.header("x-ratelimit-remaining-tokens").empty());
    CHECK(rep.header("x-ratelimit-reset-tokens").empty());
    CHECK(rep.header("retry-after") != "60");
    CHECK(rep.body.find(secret) == std::string::npos);
    for (auto& f : rep.raw)
      CHECK(std::string(f.value()).find(secret) == std::string::npos);
    CHECK(rep.body.find(std::to_string(up.port)) == std::string::npos);
  }
  CHECK(n.srv->logs().find(secret) == std::string::npos);
  CHECK(n.readyz().dump().find(secret) == std::string::npos);
}

// ---- load balancing ------------------------------------------------------------------------------

TEST_CASE("a route with two weighted deployments spreads requests by weight", "[resilience][integration]") {
  fake_upstream a, b;
  auto rs = route_to("m", "", quick());
  rs.resilience.lb = "weighted";
  parley::config::deployment_settings da, db;
  da.name = "a";
  da.base_url = a.url();
  da.weight = 3;
  db.name = "b";
  db.base_url = b.url();
  db.weight = 1;
  rs.deployments = {da, db};
  node n({rs});
  constexpr int N = 200;
  for (int i = 0; i < N; ++i)
    REQUIRE(n.chat(chat_body("m", "x")).status == 200);
  auto na = a.requests(), nb = b.requests();
  CHECK(na + nb == N);
  // Expected 150 / 50 (standard deviation about 6).
  CHECK(na > 120);
  CHECK(na < 180);
  // /readyz lists both deployments of the route.
  auto ups = n.readyz()["upstreams"];
  int listed = 0;
  for (auto& u : ups)
    if (u["route"] == "m")
      ++listed;
  CHECK(listed == 2);
}

// ---- a conversation deleted mid-turn ----------------------------------------------------------

TEST_CASE("deleting a conversation while its turn streams ends the stream with not_found and frees "
          "the tenant's slot",
          "[resilience][conversations][integration]") {
  fake_upstream up;
  node n({route_to("m", up.url(), quick())}, {{"config", {{"limits", {{"max_concurrent", 1}}}}}});
  auto port = n.srv->port();
  std::string cid = json::parse(fetch(port, http::verb::post, "/v1/conversations", "{}", bearer(n.key)).body)["id"];
  auto body = chat_body("m", "SCRIPT:{\"stall_after_tokens\":2,\"stall_ms\":10000} a b c d", true);
  body["conversation"] = cid;
  http_reply rep;
  std::thread client([&] { rep = n.chat(body); });
  // The turn runs: the upstream holds its response open, stalled after two tokens.
  bool open = wait_until(deadline_in(milliseconds(5000)), [&] { return up.stats()["open_responses"] == 1; });
  auto del = fetch(port, http::verb::delete_, "/v1/conversations/" + cid, {}, bearer(n.key));
  client.join();
  REQUIRE(open);
  CHECK(del.status == 200);
  // The client hears that the conversation is gone (an error event if its stream had begun),
  // not that the completion ended unexpectedly.
  INFO(rep.body);
  auto err = rep.status == 200 ? stream_error(rep.body) : json::parse(rep.body, nullptr, false);
  REQUIRE(err.is_object());
  CHECK(err["error"]["code"] == "not_found");
  // The upstream call was cancelled, and the turn's slot is free: the tenant (at most one
  // request at a time) admits the next one.
  CHECK(wait_until(deadline_in(milliseconds(5000)), [&] { return up.stats()["client_disconnects"] == 1; }));
  CHECK(n.chat(chat_body("m", "after")).status == 200);
}

TEST_CASE("a reused or another tenant's x-request-id never merges or drops ledger rows",
          "[resilience][integration]") {
  fake_upstream up;
  node n({route_to("m", up.url(), single_attempt())});
  auto other = create_tenant(n.srv->port(), "other");
  std::string other_key = create_key(n.srv->port(), other["id"])["key"];
  auto call = [&](const std::string& key) {
    auto h = bearer(key);
    h["x-request-id"] = "order-17"; // the client's correlation id, the same every time
    auto r = fetch(n.srv->port(), http::verb::post, "/v1/chat/completions",
                   chat_body("m", "hi").dump(), h);
    REQUIRE(r.status == 200);
    CHECK(r.header("x-request-id") == "order-17");
    return r.header("x-parley-request-id");
  };
  std::vector<std::string> ids{call(n.key), call(n.key), call(other_key), call(n.key)};
  for (auto& id : ids)
    CHECK(id.size() == 32);
  std::sort(ids.begin(), ids.end());
  CHECK(std::unique(ids.begin(), ids.end()) == ids.end());
  // Each of the tenant's three requests has its own ledger row under parley's id, and its
  // rollup counts all three; the other tenant's request is in neither.
  CHECK(wait_until(deadline_in(std::chrono::seconds(5)), [&] { return n.attempts().size() == 3; }));
  for (auto& row : n.attempts()) {
    CHECK(row["request_id"] != "order-17");
    CHECK(std::find(ids.begin(), ids.end(), row["request_id"].get<std::string>()) != ids.end());
  }
  CHECK(n.usage().first == 3);
}
