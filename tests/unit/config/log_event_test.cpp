// log::event writes one JSON object per line: fields escaped, numbers exact, reals to 3 places.
#include "parley/config/logging.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/ostream_sink.h>

#include <cmath>
#include <limits>
#include <sstream>

using namespace parley;

namespace {
struct captured {
  std::ostringstream out;
  log::logger_ptr logger;
  captured() {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_st>(out);
    logger = std::make_shared<spdlog::logger>("test", sink);
    logger->set_formatter(std::make_unique<spdlog::pattern_formatter>(
      log::json_pattern, spdlog::pattern_time_type::utc, "\n"));
    logger->set_level(spdlog::level::info);
  }
  nlohmann::json line() const { return nlohmann::json::parse(out.str()); }
};
} // namespace

TEST_CASE("a log event is one JSON line with escaped strings, exact integers and 3-place reals",
          "[config][unit]") {
  captured c;
  {
    log::event(c.logger, spdlog::level::info, "request \"quoted\"")
      .str("path", "a\\b\n\x01")
      .num("big", std::numeric_limits<int64_t>::min())
      .num("zero", 0)
      .real("ms", 1.23456)
      .real("round", 2.0005)
      .real("neg", -0.25)
      .real("nan", std::nan(""))
      .real("inf", std::numeric_limits<double>::infinity())
      .flag("ok", true);
  }
  INFO(c.out.str());
  auto j = c.line();
  CHECK(j["msg"] == "request \"quoted\"");
  CHECK(j["path"] == "a\\b\n\x01");
  CHECK(j["big"] == std::numeric_limits<int64_t>::min());
  CHECK(j["zero"] == 0);
  CHECK(c.out.str().find("\"ms\":1.235,") != std::string::npos);
  CHECK(c.out.str().find("\"neg\":-0.250,") != std::string::npos);
  CHECK(j["round"].get<double>() == Approx(2.0).margin(0.0011));
  CHECK(j["nan"].is_null());
  CHECK(j["inf"].is_null());
  CHECK(j["ok"] == true);
}

TEST_CASE("a disabled log event builds and writes nothing", "[config][unit]") {
  captured c;
  { log::event(c.logger, spdlog::level::debug, "quiet").str("k", "v").real("x", 1.0); }
  CHECK(c.out.str().empty());
}
