// Regressions found by the fuzz targets (tests/fuzz). Each case names its target and the
// corpus file that replays the same input there (tests/fuzz/corpus/<target>/regression-*).
#include "parley/net/api_error.hpp"
#include "parley/net/chat_request.hpp"
#include "parley/net/json_body.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <string>

using namespace parley::net;

// fuzz_json (corpus/fuzz_json/regression-duplicate-key-cut-utf8): the refusal of a repeated key
// quotes its first 64 bytes; a cut inside a multi-byte character left invalid UTF-8 in the
// message, so error_body() threw nlohmann::json::type_error (316) -- a 500 and an "unhandled
// exception in request" line from the server instead of the 400.
TEST_CASE("a refusal quoting a long repeated key still has a valid JSON error body",
          "[net][unit]") {
  std::string key(63, 'a');
  key += "\xc3\xa9"; // U+00E9: its first byte is the key's 64th
  std::string text = "{\"" + key + "\":1,\"" + key + "\":2}";
  nlohmann::json out;
  auto e = parse_untrusted_json(text, out);
  REQUIRE(e);
  CHECK(e->code == api_errc::invalid_request);
  std::string body;
  REQUIRE_NOTHROW(body = error_body(*e));
  CHECK(nlohmann::json::accept(body));
}

// The same cut in the unknown-parameter refusal of chat bodies (message and param), found by
// reading the code after the case above (corpus/fuzz_http/regression-unknown-parameter-cut-utf8).
TEST_CASE("an unknown chat parameter with a long multi-byte name still has a valid JSON error body",
          "[net][unit]") {
  std::string key(63, 'a');
  key += "\xc3\xa9";
  parley::actors::chat_request req;
  auto e = parse_chat_request("{\"" + key + "\":1}", "", req);
  REQUIRE(e);
  CHECK(e->code == api_errc::unknown_parameter);
  std::string body;
  REQUIRE_NOTHROW(body = error_body(*e));
  CHECK(nlohmann::json::accept(body));
}

// The general form of the two cases above: a message or param built from client bytes (a
// percent-decoded path segment such as GET /admin/v1/tenants/%C3%28 gives "No tenant with id
// '\xC3('.") must not make the error body throw (corpus/fuzz_http/regression-id-invalid-utf8).
TEST_CASE("error_body is valid JSON whatever bytes the message and param hold", "[net][unit]") {
  api_error e{api_errc::not_found, "No tenant with id '\xc3('.", "\xff\xfe"};
  std::string body;
  REQUIRE_NOTHROW(body = error_body(e));
  CHECK(nlohmann::json::accept(body));
}
