// GET /metrics: known requests move the right series by the right amounts; the live output
// passes promtool; access-log lines are JSON carrying the client's request id; trace context
// reaches the upstream with the request id.
#include "support/admin_client.hpp"
#include "support/process.hpp"
#include "support/server_fixture.hpp"
#include "parley/runtime/version.hpp"

#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

using namespace parley::test;
namespace http = boost::beast::http;

namespace {

/// Parses the exposition text into "name{labels}" -> value (HELP/TYPE lines skipped).
std::map<std::string, double> parse_metrics(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#')
      continue;
    auto sp = line.rfind(' ');
    REQUIRE(sp != std::string::npos);
    out[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
  }
  return out;
}

std::string scrape(uint16_t port) {
  auto r = fetch(port, http::verb::get, "/metrics", "", admin_headers());
  REQUIRE(r.status == 200);
  CHECK(r.header("content-type") == "text/plain; version=0.0.4; charset=utf-8");
  return r.body;
}

double at(const std::map<std::string, double>& m, const std::string& key) {
  auto it = m.find(key);
  return it == m.end() ? 0.0 : it->second;
}

json msg(const std::string& text) { return json::array({{{"role", "user"}, {"content", text}}}); }

} // namespace

TEST_CASE("known chat requests move the request, token, latency and upstream series by exactly their amounts",
          "[metrics][integration]") {
  server_fixture srv([](parley::config::settings& s) { s.chat.echo_tokens_per_second = 0; });
  auto t = create_tenant(srv.port(), "metered");
  std::string tenant = t["id"];
  std::string key = create_key(srv.port(), tenant)["key"];
  auto before = parse_metrics(scrape(srv.port()));

  int64_t prompt = 0, completion = 0;
  for (int i = 0; i < 3; ++i) {
    auto r = fetch(srv.port(), http::verb::post, "/v1/chat/completions",
                   json{{"model", "parley-echo"}, {"messages", msg("one two three")}}.dump(), bearer(key));
    REQUIRE(r.status == 200);
    auto j = json::parse(r.body);
    prompt += j["usage"]["prompt_tokens"].get<int64_t>();
    completion += j["usage"]["completion_tokens"].get<int64_t>();
  }
  auto missing = fetch(srv.port(), http::verb::post, "/v1/chat/completions",
                       json{{"model", "no-such-model"}, {"messages", msg("x")}}.dump(), bearer(key));
  REQUIRE(missing.status == 404);

  auto after = parse_metrics(scrape(srv.port()));
  auto d = [&](const std::string& k) { return at(after, k) - at(before, k); };
  std::string route = "route=\"/v1/chat/completions\"";
  CHECK(d("parley_http_requests_total{" + route + ",method=\"POST\",status_class=\"2xx\",tenant=\"" + tenant + "\"}") == 3);
  CHECK(d("parley_http_requests_total{" + route + ",method=\"POST\",status_class=\"4xx\",tenant=\"" + tenant + "\"}") == 1);
  CHECK(d("parley_http_request_duration_seconds_count{" + route + "}") == 4);
  CHECK(d("parley_http_request_duration_seconds_bucket{" + route + ",le=\"+Inf\"}") == 4);
  CHECK(d("parley_http_request_duration_seconds_sum{" + route + "}") > 0);
  // Echo without pacing answers in well under 100 ms: every observation is in that bucket.
  CHECK(d("parley_http_request_duration_seconds_bucket{" + route + ",le=\"0.1\"}") == 4);
  CHECK(d("parley_tokens_total{tenant=\"" + tenant + "\",model=\"parley-echo\",kind=\"prompt\"}") == prompt);
  CHECK(d("parley_tokens_total{tenant=\"" + tenant + "\",model=\"parley-echo\",kind=\"completion\"}") == completion);
  CHECK(d("parley_time_to_first_token_seconds_count{model=\"parley-echo\"}") == 3);
  CHECK(d("parley_upstream_duration_seconds_count{model=\"parley-echo\"}") == 3);
  CHECK(d("parley_overhead_duration_seconds_count") == 3);
  CHECK(d("parley_upstream_attempts_total{route=\"parley-echo\",deployment=\"builtin\",outcome=\"ok\"}") == 3);
  CHECK(d("parley_admitted_total") == 3);
  CHECK(at(after, "parley_actors{kind=\"tenant\"}") >= 1);
  CHECK(at(after, "parley_store_up") == 1);
  CHECK(at(after, "process_resident_memory_bytes") > 0);
  CHECK(at(after, "process_open_fds") >= 3);
  CHECK(after.count("parley_build_info{version=\"" + std::string(parley::runtime::version_string()) +
                    "\",commit=\"" + parley::runtime::git_commit() + "\"}") == 1);
}

TEST_CASE("rate-limited requests are counted by reason", "[metrics][integration]") {
  server_fixture srv;
  auto t = create_tenant(srv.port(), "limited", {{"config", {{"limits", {{"requests_per_minute", 2}}}}}});
  std::string key = create_key(srv.port(), t["id"])["key"];
  auto before = parse_metrics(scrape(srv.port()));
  int refused = 0;
  for (int i = 0; i < 4; ++i) {
    auto r = fetch(srv.port(), http::verb::post, "/v1/chat/completions",
                   json{{"model", "parley-echo"}, {"messages", msg("hi")}}.dump(), bearer(key));
    refused += r.status == 429;
  }
  CHECK(refused == 2);
  auto after = parse_metrics(scrape(srv.port()));
  CHECK(at(after, "parley_admission_rejections_total{reason=\"rate_limited\"}") -
          at(before, "parley_admission_rejections_total{reason=\"rate_limited\"}") == 2);
}

TEST_CASE("the live /metrics output passes promtool check metrics", "[metrics][integration]") {
  server_fixture srv;
  auto t = create_tenant(srv.port(), "promtool");
  std::string key = create_key(srv.port(), t["id"])["key"];
  fetch(srv.port(), http::verb::post, "/v1/chat/completions",
        json{{"model", "parley-echo"}, {"messages", msg("hello")}}.dump(), bearer(key));
  auto body = scrape(srv.port());
  auto file = srv.dir().path() + "/metrics.txt";
  std::ofstream(file) << body;
  // scripts/setup installs Debian's prometheus package for promtool.
  std::string cmd = "promtool check metrics < '" + file + "' 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  char buf[4096];
  while (auto n = fread(buf, 1, sizeof buf, p))
    out.append(buf, n);
  int rc = pclose(p);
  INFO(out);
  CHECK(rc == 0);
  CHECK(out.empty()); // no lint complaints either
}

TEST_CASE("/metrics needs the admin key on the API listener, or is served alone on metrics.listen",
          "[metrics][integration]") {
  {
    server_fixture srv;
    CHECK(fetch(srv.port(), http::verb::get, "/metrics").status == 401);
    auto t = create_tenant(srv.port(), "notadmin");
    std::string key = create_key(srv.port(), t["id"])["key"];
    CHECK(fetch(srv.port(), http::verb::get, "/metrics", "", bearer(key)).status == 401);
  }
  {
    server_fixture srv([](parley::config::settings& s) { s.metrics.listen = "127.0.0.1:0"; });
    auto mport = srv.app().metrics_port();
    REQUIRE(mport != 0);
    auto r = fetch(mport, http::verb::get, "/metrics");
    CHECK(r.status == 200);
    CHECK(r.body.find("parley_build_info") != std::string::npos);
    CHECK(fetch(mport, http::verb::get, "/v1/models").status == 404); // nothing else there
    CHECK(fetch(srv.port(), http::verb::get, "/metrics", "", admin_headers()).status == 404);
  }
}

TEST_CASE("access-log lines are JSON and carry the request id the client saw, with chat facts",
          "[metrics][integration]") {
  server_fixture srv;
  auto t = create_tenant(srv.port(), "logged");
  std::string key = create_key(srv.port(), t["id"])["key"];
  auto headers = bearer(key);
  headers["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  auto r = fetch(srv.port(), http::verb::post, "/v1/chat/completions",
                 json{{"model", "parley-echo"}, {"messages", msg("log me")}}.dump(), headers);
  REQUIRE(r.status == 200);
  auto rid = r.header("x-request-id");
  REQUIRE(!rid.empty());
  // The line is written after the response: access_log_line() waits for it.
  auto line = srv.access_log_line(rid);
  REQUIRE(!line.is_null());
  {
    std::istringstream in(srv.logs());
    std::string l;
    while (std::getline(in, l)) {
      INFO(l);
      CHECK(json::accept(l)); // every line is JSON
    }
  }
  CHECK(line["tenant_id"] == t["id"]);
  CHECK(line["route"] == "/v1/chat/completions");
  CHECK(line["status"] == 200);
  CHECK(line["model"] == "parley-echo");
  CHECK(line["attempts"] == 1);
  CHECK(line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736");
  CHECK(line["latency_ms"].get<double>() > 0);
  CHECK(line["upstream_ms"].get<double>() > 0);
  CHECK(line["prompt_tokens"].get<int>() > 0);
  CHECK(line.contains("key_id"));
  CHECK(line.contains("cache"));
}

TEST_CASE("the trace context and request id are propagated to the upstream", "[metrics][integration]") {
  temp_dir dir;
  uint16_t fake_port = 0;
  auto fake = start_fake_upstream(dir, fake_port);
  static std::string url;
  url = "http://127.0.0.1:" + std::to_string(fake_port) + "/v1";
  server_fixture srv([](parley::config::settings& s) { s.upstream.url = url; });
  auto t = create_tenant(srv.port(), "traced");
  std::string key = create_key(srv.port(), t["id"])["key"];
  auto stats = [&] { return json::parse(fetch(fake_port, http::verb::get, "/_stats").body); };

  SECTION("an incoming trace keeps its trace id; parley's span is the parent") {
    auto h = bearer(key);
    h["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    h["x-request-id"] = "client-chosen-id-42";
    auto r = fetch(srv.port(), http::verb::post, "/v1/chat/completions",
                   json{{"model", "up-model"}, {"messages", msg("trace me")}}.dump(), h);
    REQUIRE(r.status == 200);
    CHECK(r.header("x-request-id") == "client-chosen-id-42");
    // The upstream gets parley's own id (the key of the request's ledger rows), not the client's.
    auto own = r.header("x-parley-request-id");
    CHECK(own.size() == 32);
    auto hd = stats()["last_headers"];
    CHECK(hd["x-request-id"] == own);
    std::string tp = hd["traceparent"];
    REQUIRE(tp.size() == 55);
    CHECK(tp.substr(0, 36) == "00-4bf92f3577b34da6a3ce929d0e0e4736-");
    CHECK(tp.substr(36, 16) != "00f067aa0ba902b7"); // a new span for this hop
    CHECK(tp.substr(52) == "-01");
  }
  SECTION("without a valid traceparent a new trace starts") {
    auto h = bearer(key);
    h["traceparent"] = "00-00000000000000000000000000000000-00f067aa0ba902b7-01"; // invalid
    auto r = fetch(srv.port(), http::verb::post, "/v1/chat/completions",
                   json{{"model", "up-model"}, {"messages", msg("new trace")}}.dump(), h);
    REQUIRE(r.status == 200);
    std::string tp = stats()["last_headers"]["traceparent"];
    REQUIRE(tp.size() == 55);
    CHECK(tp.rfind("00-", 0) == 0);
    CHECK(tp.substr(3, 32) != "00000000000000000000000000000000");
    CHECK(stats()["last_headers"]["x-request-id"] == r.header("x-request-id"));
  }
}
