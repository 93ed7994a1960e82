// The flat head writer (net/src/server/wire.cpp) against Beast's own serializer: the same bytes.
#include "server/wire.hpp"

#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/http.hpp>
#include <catch2/catch.hpp>

namespace http = boost::beast::http;
using namespace parley::net;

namespace {
/// What Beast writes for `m`'s header.
std::string beast_head(http::response<http::string_body>& m) {
  http::response_serializer<http::string_body> sr(m);
  sr.split(true);
  std::string out;
  boost::beast::error_code ec;
  while (!sr.is_header_done()) {
    sr.next(ec, [&](boost::beast::error_code&, const auto& buffers) {
      out += boost::beast::buffers_to_string(buffers);
      sr.consume(boost::beast::buffer_bytes(buffers));
    });
    REQUIRE_FALSE(ec);
  }
  return out;
}
} // namespace

TEST_CASE("the flat response head is byte for byte what Beast serializes", "[net][unit]") {
  for (auto status : {http::status::ok, http::status::not_found, http::status::too_many_requests,
                      http::status::service_unavailable, static_cast<http::status>(299)}) {
    for (unsigned version : {10u, 11u}) {
      http::response<http::string_body> res{status, version};
      res.set(http::field::content_type, "application/json");
      res.set("x-request-id", "0194a1b2c3d4e5f60718293a4b5c6d7e");
      res.set("x-ratelimit-remaining-requests", "99");
      res.insert("set-cookie", "a=1");
      res.insert("set-cookie", "b=2");
      res.body() = "{\"ok\":true}";
      res.keep_alive(version == 11);
      res.prepare_payload();
      std::string flat;
      wire::append_head(flat, res.base());
      CHECK(flat == beast_head(res));
      CHECK(flat.rfind("\r\n\r\n") == flat.size() - 4);
    }
  }
  SECTION("a reason phrase set by hand is kept") {
    http::response<http::string_body> res{http::status::ok, 11};
    res.reason("Fine");
    res.prepare_payload();
    std::string flat;
    wire::append_head(flat, res.base());
    CHECK(flat == beast_head(res));
    CHECK(flat.rfind("HTTP/1.1 200 Fine\r\n", 0) == 0);
  }
}

TEST_CASE("chunks are framed as chunked transfer coding", "[net][unit]") {
  std::string out;
  wire::append_chunk(out, "data: {}\n\n");
  wire::append_chunk(out, ""); // nothing: only last_chunk ends a body
  wire::append_chunk(out, std::string(300, 'x'));
  out += wire::last_chunk;
  CHECK(out == "a\r\ndata: {}\n\n\r\n12c\r\n" + std::string(300, 'x') + "\r\n0\r\n\r\n");
}
