// [resilience] defaults, per-route overrides, deployments and fallbacks in the config loader.
#include "parley/config/loader.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>

using namespace parley;
using parley::test::temp_dir;

namespace {
std::string error_of(const std::string& toml, std::map<std::string, std::string> env = {}) {
  temp_dir d;
  auto path = d.write("c.toml", toml);
  try {
    config::load(path, env);
  } catch (const config::config_error& e) {
    return e.what();
  }
  return {};
}
} // namespace

TEST_CASE("routes start from the effective [resilience] values and override only what they set",
          "[config][unit]") {
  temp_dir d;
  auto path = d.write("c.toml", R"(
[[routes]]
model = "a"
base_url = "http://127.0.0.1:1/v1"
max_attempts = 1
retry_statuses = [503]
fallbacks = ["b", "parley-echo"]

[resilience]
first_byte_timeout_ms = 1234
breaker_failures = 9

[[routes]]
model = "b"
lb = "weighted"
  [[routes.deployments]]
  name = "one"
  base_url = "http://127.0.0.1:2/v1"
  weight = 3
  [[routes.deployments]]
  base_url = "http://127.0.0.1:3/v1"
  upstream_model = "b-large"
)");
  // The environment wins over the file's [resilience], and routes see it.
  auto s = config::load(path, {{"PARLEY_RESILIENCE_BREAKER_FAILURES", "4"}});
  CHECK(s.resilience.first_byte_timeout_ms == 1234);
  CHECK(s.resilience.breaker_failures == 4);
  REQUIRE(s.routes.size() == 2);
  auto& a = s.routes[0];
  CHECK(a.resilience.max_attempts == 1);
  CHECK(a.resilience.retry_statuses == std::vector<int>{503});
  CHECK(a.resilience.first_byte_timeout_ms == 1234);
  CHECK(a.resilience.breaker_failures == 4);
  CHECK(a.fallbacks == std::vector<std::string>{"b", "parley-echo"});
  auto& b = s.routes[1];
  CHECK(b.resilience.lb == "weighted");
  CHECK(b.resilience.max_attempts == 3);
  REQUIRE(b.deployments.size() == 2);
  CHECK(b.deployments[0].name == "one");
  CHECK(b.deployments[0].weight == 3);
  CHECK(b.deployments[1].upstream_model == "b-large");
  CHECK(b.deployments[1].weight == 1);
}

TEST_CASE("invalid resilience settings are refused naming the key", "[config][unit]") {
  CHECK(error_of("[resilience]\nmax_attempts = 0\n").find("resilience.max_attempts") != std::string::npos);
  CHECK(error_of("[resilience]\nlb = \"fastest\"\n").find("resilience.lb") != std::string::npos);
  CHECK(error_of("[resilience]\nretry_statuses = [200]\n").find("resilience.retry_statuses") !=
        std::string::npos);
  CHECK(error_of("[resilience]\nfallback_on = [\"everything\"]\n").find("resilience.fallback_on") !=
        std::string::npos);
  CHECK(error_of("", {{"PARLEY_RESILIENCE_RETRY_STATUSES", "429,abc"}}).find("PARLEY_RESILIENCE_RETRY_STATUSES") !=
        std::string::npos);
  auto route = "[[routes]]\nmodel = \"a\"\nbase_url = \"http://127.0.0.1:1/v1\"\n";
  CHECK(error_of(std::string(route) + "idle_timeout_ms = \"soon\"\n").find("routes[0].idle_timeout_ms") !=
        std::string::npos);
  CHECK(error_of(std::string(route) + "breaker_failure_percent = 101\n").find("routes[0].breaker_failure_percent") !=
        std::string::npos);
  CHECK(error_of(std::string(route) + "fallbacks = [\"nowhere\"]\n").find("'nowhere' is not a routed model") !=
        std::string::npos);
  CHECK(error_of(std::string(route) + "fallbacks = [\"a\"]\n").find("itself") != std::string::npos);
  CHECK(error_of("[[routes]]\nmodel = \"a\"\n[[routes.deployments]]\nbase_url = \"ftp://x\"\n")
          .find("routes[0].deployments[0].base_url") != std::string::npos);
  CHECK(error_of("[[routes]]\nmodel = \"a\"\n[[routes.deployments]]\nbase_url = \"http://x/v1\"\nweight = 0\n")
          .find("routes[0].deployments[0].weight") != std::string::npos);
  CHECK(error_of("[[routes]]\nmodel = \"a\"\n[[routes.deployments]]\nbase_url = \"http://x/v1\"\n"
                 "[[routes.deployments]]\nbase_url = \"http://x/v1\"\n")
          .find("distinct names") != std::string::npos);
  CHECK(error_of("[metrics]\nlisten = \"nowhere\"\n").find("metrics.listen") != std::string::npos);
}
