#include "support/http_client.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <csignal>
#include <thread>

using namespace parley::test;
namespace http = boost::beast::http;

namespace {
std::string base_config(const temp_dir& d, int grace = 5) {
  return "[http]\nlisten = \"127.0.0.1:0\"\nio_threads = 2\n[data]\ndir = \"" + d.path() +
         "\"\n[shutdown]\ngrace_seconds = " + std::to_string(grace) + "\n";
}
} // namespace

TEST_CASE("parley serve with an invalid value exits 2 with one line naming the key",
          "[runtime][integration]") {
  temp_dir d;
  auto cfg = d.write("bad.toml", "[http]\nio_threads = -1\n");
  child_process p({PARLEY_BINARY, "serve", "--config", cfg}, {}, d.path() + "/out");
  auto rc = p.wait_exit(std::chrono::seconds(10));
  REQUIRE(rc);
  CHECK(*rc == 2);
  auto out = p.output();
  CHECK(out.find("http.io_threads") != std::string::npos);
  CHECK(std::count(out.begin(), out.end(), '\n') == 1);
}

TEST_CASE("parley exits 2 on a usage error and 0 for version and help", "[runtime][integration]") {
  temp_dir d;
  {
    child_process p({PARLEY_BINARY, "serve", "--bogus"}, {}, d.path() + "/o1");
    CHECK(p.wait_exit(std::chrono::seconds(10)) == std::optional<int>(2));
  }
  {
    child_process p({PARLEY_BINARY}, {}, d.path() + "/o2");
    CHECK(p.wait_exit(std::chrono::seconds(10)) == std::optional<int>(2));
  }
  {
    child_process p({PARLEY_BINARY, "version"}, {}, d.path() + "/o3");
    CHECK(p.wait_exit(std::chrono::seconds(10)) == std::optional<int>(0));
    CHECK(p.output().rfind("parley ", 0) == 0);
  }
  {
    child_process p({PARLEY_BINARY, "serve", "--help"}, {}, d.path() + "/o4");
    CHECK(p.wait_exit(std::chrono::seconds(10)) == std::optional<int>(0));
    CHECK(p.output().find("--listen") != std::string::npos);
  }
}

TEST_CASE("an environment override with a bad value exits 2 naming the variable",
          "[runtime][integration]") {
  temp_dir d;
  child_process p({PARLEY_BINARY, "serve"}, {{"PARLEY_LOG_LEVEL", "chatty"}, {"PARLEY_DATA_DIR", d.path()}},
                  d.path() + "/out");
  CHECK(p.wait_exit(std::chrono::seconds(10)) == std::optional<int>(2));
  CHECK(p.output().find("log.level") != std::string::npos);
}

TEST_CASE("SIGTERM lets an in-flight request complete, refuses new connections and exits 0",
          "[runtime][integration]") {
  temp_dir d;
  uint16_t port = 0;
  auto proc = start_parley(d, base_config(d, 5), port);
  REQUIRE(fetch(port, http::verb::get, "/healthz").status == 200);

  // A request in flight: its header and half its body (an empty object, all a GET may carry)
  // have arrived.
  http_client c(port);
  c.send_raw("GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{    ");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto t0 = std::chrono::steady_clock::now();
  proc->signal(SIGTERM);
  REQUIRE(proc->wait_for_output("\"msg\":\"draining\"", std::chrono::seconds(5)));
  CHECK(connection_refused(port));

  c.send_raw("    }");
  auto r = c.read_reply();
  CHECK(r.status == 200);
  CHECK(r.header("connection") == "close");

  auto rc = proc->wait_exit(std::chrono::seconds(6));
  REQUIRE(rc);
  CHECK(*rc == 0);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
  CHECK(proc->output().find("\"msg\":\"stopped\"") != std::string::npos);
}

TEST_CASE("the grace period bounds shutdown when a request never completes",
          "[runtime][integration]") {
  temp_dir d;
  uint16_t port = 0;
  auto proc = start_parley(d, base_config(d, 1), port);
  http_client c(port);
  c.send_raw("GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n1");
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto t0 = std::chrono::steady_clock::now();
  proc->signal(SIGTERM);
  auto rc = proc->wait_exit(std::chrono::seconds(5));
  REQUIRE(rc);
  CHECK(*rc == 0);
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(took >= std::chrono::milliseconds(900));
  CHECK(took < std::chrono::milliseconds(3000));
  CHECK(proc->output().find("grace period over") != std::string::npos);
}

TEST_CASE("a second signal exits at once", "[runtime][integration]") {
  temp_dir d;
  uint16_t port = 0;
  auto proc = start_parley(d, base_config(d, 30), port);
  http_client c(port);
  c.send_raw("GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n1");
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  proc->signal(SIGTERM);
  REQUIRE(proc->wait_for_output("\"msg\":\"draining\"", std::chrono::seconds(5)));
  proc->signal(SIGINT);
  auto rc = proc->wait_exit(std::chrono::seconds(3));
  REQUIRE(rc);
  CHECK(*rc == 128 + SIGINT);
}

TEST_CASE("logs are JSON lines with ts, level and msg", "[runtime][integration]") {
  temp_dir d;
  uint16_t port = 0;
  auto proc = start_parley(d, base_config(d), port);
  fetch(port, http::verb::get, "/healthz", {}, {{"X-Request-ID", "trace-me-1"}});
  proc->signal(SIGTERM);
  REQUIRE(proc->wait_exit(std::chrono::seconds(10)) == std::optional<int>(0));
  std::istringstream lines(proc->output());
  std::string line;
  int n = 0;
  bool saw_request = false;
  while (std::getline(lines, line)) {
    INFO(line);
    auto j = nlohmann::json::parse(line);
    CHECK(j.contains("ts"));
    CHECK(j.contains("level"));
    CHECK(j.contains("msg"));
    // The client's id is kept for correlation; request_id is parley's own.
    if (j["msg"] == "request" && j.value("client_request_id", "") == "trace-me-1")
      saw_request = j["status"] == 200 && j["route"] == "/healthz" &&
                    j.value("request_id", "").size() == 32;
    ++n;
  }
  CHECK(n >= 4);
  CHECK(saw_request);
}
