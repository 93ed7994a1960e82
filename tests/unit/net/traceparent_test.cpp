#include "parley/net/middlewares.hpp"

#include <catch2/catch.hpp>

using parley::net::parse_traceparent;

TEST_CASE("a valid W3C traceparent yields its trace id and flags", "[net][unit]") {
  std::string trace, flags;
  REQUIRE(parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", trace, flags));
  CHECK(trace == "4bf92f3577b34da6a3ce929d0e0e4736");
  CHECK(flags == "01");
  // A later version may append fields.
  CHECK(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra", trace, flags));
  CHECK(flags == "00");
}

TEST_CASE("malformed or all-zero traceparents are refused", "[net][unit]") {
  std::string trace, flags;
  for (const char* bad : {"", "garbage",
                          "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",     // no flags
                          "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  // upper case
                          "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  // zero trace
                          "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  // zero parent
                          "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // version ff
                          "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // 00 + extra
                          "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}) {
    INFO(bad);
    CHECK_FALSE(parse_traceparent(bad, trace, flags));
  }
}
