#include "parley/config/metrics.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <ctime>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>
#include <thread>

using namespace parley;
using parley::test::temp_dir;

namespace {

std::string num(double v) {
  std::string s;
  metrics::append_number(s, v);
  return s;
}

/// The value of the first sample line that starts with `series` followed by a space.
double sample_value(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.compare(0, series.size() + 1, series + " ") == 0)
      return std::stod(line.substr(series.size() + 1));
  FAIL("no sample " << series << " in:\n" << text);
  return 0;
}

std::size_t occurrences(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (auto p = text.find(needle); p != std::string::npos; p = text.find(needle, p + 1)) ++n;
  return n;
}

} // namespace

TEST_CASE("metrics renders counters and gauges with labels in the text format exactly",
          "[unit][metrics]") {
  metrics::registry reg;
  auto req = reg.counter_family("test_requests_total", "Requests served.", {"route", "code"});
  req.with({"/a", "200"}).inc();
  req.with({"/a", "200"}).inc(2);
  req.with({"/b", "500"}).inc();
  reg.gauge_family("test_temperature_celsius", "Current temperature.").with().set(21.5);
  auto q = reg.gauge_family("test_queue_length", "Queue length.", {"queue"});
  q.with({"x"}).set(3);
  q.with({"x"}).inc();
  q.with({"y"}).dec(2);
  auto& big = reg.counter_family("test_bytes_total", "Bytes.").with();
  big.inc(12345678901234ull);

  CHECK(reg.render() == R"(# HELP test_bytes_total Bytes.
# TYPE test_bytes_total counter
test_bytes_total 12345678901234
# HELP test_queue_length Queue length.
# TYPE test_queue_length gauge
test_queue_length{queue="x"} 4
test_queue_length{queue="y"} -2
# HELP test_requests_total Requests served.
# TYPE test_requests_total counter
test_requests_total{route="/a",code="200"} 3
test_requests_total{route="/b",code="500"} 1
# HELP test_temperature_celsius Current temperature.
# TYPE test_temperature_celsius gauge
test_temperature_celsius 21.5
)");
  CHECK(req.size() == 2);
  CHECK(req.with({"/a", "200"}).value() == 3);
  CHECK(&req.with({"/a", "200"}) == &req.with({"/a", "200"}));
}

TEST_CASE("metrics renders cumulative histogram buckets, sum and count for known observations",
          "[unit][metrics]") {
  metrics::registry reg;
  auto lat = reg.histogram_family("test_duration_seconds", "Duration.", {"route"});
  auto& h = lat.with({"/v1/chat/completions"});
  h.observe(0.003);
  h.observe(0.2);
  CHECK(h.count() == 2);
  CHECK(h.sum() == 0.003 + 0.2);

  CHECK(reg.render() == R"(# HELP test_duration_seconds Duration.
# TYPE test_duration_seconds histogram
test_duration_seconds_bucket{route="/v1/chat/completions",le="0.0005"} 0
test_duration_seconds_bucket{route="/v1/chat/completions",le="0.001"} 0
test_duration_seconds_bucket{route="/v1/chat/completions",le="0.0025"} 0
test_duration_seconds_bucket{route="/v1/chat/completions",le="0.005"} 1
test_duration_seconds_bucket{route="/v1/chat/completions",le="0.01"} 1
test_duration_seconds_bucket{route="/v1/chat/completions",le="0.025"} 1
test_duration_seconds_bucket{route="/v1/chat/completions",le="0.05"} 1
test_duration_seconds_bucket{route="/v1/chat/completions",le="0.1"} 1
test_duration_seconds_bucket{route="/v1/chat/completions",le="0.25"} 2
test_duration_seconds_bucket{route="/v1/chat/completions",le="0.5"} 2
test_duration_seconds_bucket{route="/v1/chat/completions",le="1"} 2
test_duration_seconds_bucket{route="/v1/chat/completions",le="2.5"} 2
test_duration_seconds_bucket{route="/v1/chat/completions",le="5"} 2
test_duration_seconds_bucket{route="/v1/chat/completions",le="10"} 2
test_duration_seconds_bucket{route="/v1/chat/completions",le="30"} 2
test_duration_seconds_bucket{route="/v1/chat/completions",le="60"} 2
test_duration_seconds_bucket{route="/v1/chat/completions",le="120"} 2
test_duration_seconds_bucket{route="/v1/chat/completions",le="+Inf"} 2
test_duration_seconds_sum{route="/v1/chat/completions"} 0.203
test_duration_seconds_count{route="/v1/chat/completions"} 2
)");
}

TEST_CASE("metrics histogram upper bounds are inclusive and values above the last bound count "
          "only in +Inf",
          "[unit][metrics]") {
  metrics::registry reg;
  auto& h = reg.histogram_family("test_size_bytes", "Size.", {}, {1, 10, 100}).with();
  h.observe(1);   // le="1"
  h.observe(10);  // le="10"
  h.observe(11);  // le="100"
  h.observe(1e6); // +Inf only
  h.observe(-5);  // le="1"
  CHECK(h.cumulative_counts() == std::vector<uint64_t>{2, 3, 4, 5});
  CHECK(reg.render() == R"(# HELP test_size_bytes Size.
# TYPE test_size_bytes histogram
test_size_bytes_bucket{le="1"} 2
test_size_bytes_bucket{le="10"} 3
test_size_bytes_bucket{le="100"} 4
test_size_bytes_bucket{le="+Inf"} 5
test_size_bytes_sum 1000017
test_size_bytes_count 5
)");
}

TEST_CASE("metrics prints numbers as Prometheus does: integers without exponent, doubles "
          "shortest, special values spelled out",
          "[unit][metrics]") {
  CHECK(num(0) == "0");
  CHECK(num(-0.0) == "0");
  CHECK(num(1) == "1");
  CHECK(num(-42) == "-42");
  CHECK(num(2.5) == "2.5");
  CHECK(num(0.0005) == "0.0005");
  CHECK(num(0.1) == "0.1");
  CHECK(num(0.00025) == "0.00025");
  CHECK(num(1e-05) == "1e-05");
  CHECK(num(1.0 / 3) == "0.3333333333333333");
  CHECK(num(123456789012.0) == "123456789012");
  CHECK(num(1e20) == "1e+20");
  CHECK(num(1.5e15) == "1.5e+15");
  CHECK(num(std::numeric_limits<double>::quiet_NaN()) == "NaN");
  CHECK(num(std::numeric_limits<double>::infinity()) == "+Inf");
  CHECK(num(-std::numeric_limits<double>::infinity()) == "-Inf");
  for (double v : {0.1 + 0.2, 1e-300, 6.02214076e23, 123.456, 1.0 / 7}) {
    INFO(v);
    CHECK(std::stod(num(v)) == v);
  }
}

TEST_CASE("metrics escapes HELP text and label values", "[unit][metrics]") {
  metrics::registry reg;
  auto f = reg.counter_family("test_escapes_total", "Back\\slash and\nnewline \"quoted\".",
                              {"v"});
  f.with({"a\\b\"c\nd"}).inc();
  CHECK(reg.render() == "# HELP test_escapes_total Back\\\\slash and\\nnewline \"quoted\".\n"
                        "# TYPE test_escapes_total counter\n"
                        "test_escapes_total{v=\"a\\\\b\\\"c\\nd\"} 1\n");
}

TEST_CASE("metrics label sets beyond a family's cardinality cap share one overflow child",
          "[unit][metrics]") {
  metrics::registry reg;
  auto f = reg.counter_family("test_tenant_requests_total", "Requests.", {"tenant", "kind"}, 3);
  for (int i = 0; i < 3; ++i) f.with({"t" + std::to_string(i), "x"}).inc();
  auto& over = f.with({"t3", "x"});
  CHECK(&f.with({"t4", "y"}) == &over);
  over.inc();
  f.with({"t5", "x"}).inc(2);
  f.with({"t0", "x"}).inc(); // known label sets keep their own child
  CHECK(f.size() == 4);
  CHECK(reg.render() == R"(# HELP test_tenant_requests_total Requests.
# TYPE test_tenant_requests_total counter
test_tenant_requests_total{tenant="t0",kind="x"} 2
test_tenant_requests_total{tenant="t1",kind="x"} 1
test_tenant_requests_total{tenant="t2",kind="x"} 1
test_tenant_requests_total{tenant="__overflow__",kind="__overflow__"} 3
)");
}

TEST_CASE("metrics counters and histograms updated from 4 threads add up exactly",
          "[unit][metrics]") {
  metrics::registry reg;
  auto f = reg.counter_family("test_hits_total", "Hits.", {"tenant"});
  auto& cached = reg.counter_family("test_cached_total", "Cached hits.").with();
  auto& h = reg.histogram_family("test_latency_seconds", "Latency.").with();
  auto& g = reg.gauge_family("test_in_flight", "In flight.").with();
  constexpr int threads = 4, per_thread = 200000;
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        cached.inc();
        h.observe(1.0);
        g.inc();
        g.dec();
        if (i % 100 == 0) f.with({t % 2 ? "odd" : "even"}).inc();
      }
    });
  for (auto& t : ts) t.join();
  CHECK(cached.value() == uint64_t(threads) * per_thread);
  CHECK(h.count() == uint64_t(threads) * per_thread);
  CHECK(h.sum() == double(threads) * per_thread);
  CHECK(g.value() == 0);
  CHECK(f.with({"odd"}).value() == 2 * per_thread / 100);
  CHECK(f.with({"even"}).value() == 2 * per_thread / 100);
}

TEST_CASE("metrics collectors write each family's HELP and TYPE once and merge with registered "
          "families",
          "[unit][metrics]") {
  metrics::registry reg;
  reg.gauge_family("test_pool_connections", "Pool connections.", {"state"})
    .with({"in_use"})
    .set(2);
  reg.add_collector([](metrics::exposition_writer& w) {
    w.family("test_pool_connections", "Pool connections.", metrics::metric_type::gauge);
    w.sample({{"state", "idle"}}, 5);
    w.family("test_actors", "Live actors.", metrics::metric_type::gauge);
    w.sample({{"kind", "tenant"}}, 3);
  });
  reg.add_collector([](metrics::exposition_writer& w) {
    w.family("test_actors", "Live actors.", metrics::metric_type::gauge);
    w.sample({{"kind", "turn"}}, 7);
    w.family("test_actors", "Live actors.", metrics::metric_type::counter); // conflict: dropped
    w.sample({{"kind", "bogus"}}, 1);
  });
  reg.add_collector([](metrics::exposition_writer& w) {
    w.family("test_broken", "Broken collector.", metrics::metric_type::gauge);
    w.sample(1);
    throw std::runtime_error("collector failed");
  });
  CHECK(reg.render() == R"(# HELP test_actors Live actors.
# TYPE test_actors gauge
test_actors{kind="tenant"} 3
test_actors{kind="turn"} 7
# HELP test_broken Broken collector.
# TYPE test_broken gauge
test_broken 1
# HELP test_pool_connections Pool connections.
# TYPE test_pool_connections gauge
test_pool_connections{state="in_use"} 2
test_pool_connections{state="idle"} 5
)");
  // Rendering again produces the same text (collectors run per scrape, nothing accumulates).
  std::string out = "stale";
  reg.render_into(out);
  CHECK(out == reg.render());
}

TEST_CASE("metrics emits a registered family without children as HELP and TYPE only",
          "[unit][metrics]") {
  metrics::registry reg;
  reg.counter_family("test_errors_total", "Errors.", {"kind"});
  CHECK(reg.render() == "# HELP test_errors_total Errors.\n# TYPE test_errors_total counter\n");
}

TEST_CASE("metrics rejects invalid names, duplicate families, bad buckets and wrong label counts",
          "[unit][metrics]") {
  metrics::registry reg;
  CHECK_THROWS_AS(reg.counter_family("1bad", "x"), std::invalid_argument);
  CHECK_THROWS_AS(reg.counter_family("bad-name", "x"), std::invalid_argument);
  CHECK_THROWS_AS(reg.counter_family("test_x_total", "x", {"__reserved"}), std::invalid_argument);
  CHECK_THROWS_AS(reg.counter_family("test_y_total", "x", {"a", "a"}), std::invalid_argument);
  CHECK_THROWS_AS(reg.histogram_family("test_h_seconds", "x", {"le"}), std::invalid_argument);
  CHECK_THROWS_AS(reg.histogram_family("test_h_seconds", "x", {}, {1, 1}), std::invalid_argument);
  CHECK_THROWS_AS(reg.histogram_family("test_h_seconds", "x", {}, {2, 1}), std::invalid_argument);
  auto ok = reg.histogram_family("test_h_seconds", "x", {},
                                 {1, 2, std::numeric_limits<double>::infinity()});
  CHECK(ok.with().bounds() == std::vector<double>{1, 2});
  CHECK_THROWS_AS(reg.gauge_family("test_h_seconds", "x"), std::invalid_argument);
  auto f = reg.counter_family("test_z_total", "x", {"a", "b"});
  CHECK_THROWS_AS(f.with({"only-one"}), std::invalid_argument);
  CHECK_THROWS_AS(f.with(), std::invalid_argument);
}

TEST_CASE("metrics process collector reports plausible process statistics", "[unit][metrics]") {
  metrics::registry reg;
  metrics::add_process_collector(reg);
  auto text = reg.render();
  INFO(text);
  CHECK(sample_value(text, "process_resident_memory_bytes") > 0);
  CHECK(sample_value(text, "process_virtual_memory_bytes") >=
        sample_value(text, "process_resident_memory_bytes"));
  CHECK(sample_value(text, "process_open_fds") >= 3);
  CHECK(sample_value(text, "process_max_fds") >= sample_value(text, "process_open_fds"));
  CHECK(sample_value(text, "process_cpu_seconds_total") >= 0);
  double start = sample_value(text, "process_start_time_seconds");
  double now = static_cast<double>(std::time(nullptr));
  CHECK(start > 1.5e9);
  CHECK(start <= now + 2);
  CHECK(occurrences(text, "# TYPE process_cpu_seconds_total counter\n") == 1);
}

TEST_CASE("metrics output with every feature passes promtool check metrics without lint "
          "complaints",
          "[unit][metrics]") {
  const char* promtool = "/usr/bin/promtool";
  if (access(promtool, X_OK) != 0) {
    WARN("skipped: " << promtool << " not found");
    return;
  }
  metrics::registry reg;
  auto req = reg.counter_family("parley_http_requests_total", "HTTP requests by route.",
                                {"route", "method", "status_class", "tenant"});
  req.with({"/v1/chat/completions", "POST", "2xx", "t1"}).inc(5);
  req.with({"/v1/models", "GET", "4xx", ""}).inc();
  auto capped = reg.counter_family("parley_tokens_total", "Tokens.", {"tenant"}, 1);
  capped.with({"a"}).inc(10);
  capped.with({"b"}).inc(3); // overflow child
  reg.counter_family("parley_store_errors_total", "Store errors.");
  reg.gauge_family("parley_build_info", "Build information.", {"version", "commit"})
    .with({"1.0.0", "abc\"def\\\n"})
    .set(1);
  reg.gauge_family("parley_http_in_flight", "Requests in flight.").with().set(-3);
  auto lat = reg.histogram_family("parley_http_request_duration_seconds",
                                  "Total server time.\nSecond line with \\ backslash.",
                                  {"route"});
  lat.with({"/v1/chat/completions"}).observe(0.003);
  lat.with({"/v1/chat/completions"}).observe(0.2);
  lat.with({"/v1/models"}).observe(1e9);
  reg.histogram_family("parley_overhead_duration_seconds", "Overhead.").with().observe(0.0001);
  reg.histogram_family("parley_empty_duration_seconds", "Never observed.", {"op"});
  reg.gauge_family("parley_weird_values", "Special values.", {"kind"})
    .with({"nan"})
    .set(std::numeric_limits<double>::quiet_NaN());
  metrics::add_process_collector(reg);
  reg.add_collector([](metrics::exposition_writer& w) {
    w.family("parley_actors", "Live actors by kind.", metrics::metric_type::gauge);
    for (const char* k : {"tenant", "conversation", "turn"}) w.sample({{"kind", k}}, 2);
    w.family("parley_actor_restarts_total", "Actor restarts.", metrics::metric_type::counter);
    w.sample({{"kind", "tenant"}}, 0);
  });

  temp_dir dir;
  auto text = reg.render();
  auto file = dir.write("metrics.txt", text);
  auto out = dir.path() + "/promtool.out";
  std::string cmd = std::string(promtool) + " check metrics < " + file + " > " + out + " 2>&1";
  int status = std::system(cmd.c_str());
  std::ifstream in(out);
  std::stringstream ss;
  ss << in.rdbuf();
  INFO("exposition:\n" << text << "\npromtool said:\n" << ss.str());
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(ss.str().empty());
  CHECK(text.find("parley_tokens_total{tenant=\"__overflow__\"} 3") != std::string::npos);
}
