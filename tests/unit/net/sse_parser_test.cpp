#include "parley/net/sse_parser.hpp"

#include <catch2/catch.hpp>

using parley::net::sse_parser;

namespace {
std::vector<std::string> parse_split(const std::string& text, std::size_t a, std::size_t b) {
  sse_parser p;
  std::vector<std::string> out;
  REQUIRE(p.feed(std::string_view(text).substr(0, a), out));
  REQUIRE(p.feed(std::string_view(text).substr(a, b - a), out));
  REQUIRE(p.feed(std::string_view(text).substr(b), out));
  return out;
}
} // namespace

TEST_CASE("the SSE parser yields the same events at every chunk boundary", "[net][unit]") {
  const std::string stream =
    ": keep-alive\n\n"
    "data: {\"a\":1}\n\n"
    "event: message\r\ndata: {\"b\":\r\ndata: 2}\r\n\r\n"
    "id: 7\rdata: three\r\r"
    "data: [DONE]\n\n";
  const std::vector<std::string> expected{"{\"a\":1}", "{\"b\":\n2}", "three", "[DONE]"};
  for (std::size_t a = 0; a <= stream.size(); ++a)
    for (std::size_t b = a; b <= stream.size(); b += 3) {
      INFO("split at " << a << " and " << b);
      REQUIRE(parse_split(stream, a, b) == expected);
    }
}

TEST_CASE("the SSE parser keeps an unfinished event until its blank line", "[net][unit]") {
  sse_parser p;
  std::vector<std::string> out;
  REQUIRE(p.feed("data: x\n", out));
  CHECK(out.empty());
  REQUIRE(p.feed("\n", out));
  CHECK(out == std::vector<std::string>{"x"});
  REQUIRE(p.feed("data:no-space\n\n", out));
  CHECK(out.back() == "no-space");
}

TEST_CASE("the SSE parser refuses an event over its bound", "[net][unit]") {
  sse_parser p(64);
  std::vector<std::string> out;
  CHECK_FALSE(p.feed("data: " + std::string(100, 'x'), out));
}
