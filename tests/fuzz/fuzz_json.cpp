// fuzz_json: parley::net::parse_untrusted_json (parley/net/json_body.hpp), the reader of
// request bodies and upstream responses.
//
// The whole input is the JSON text. It is read twice: with the default limits, and with tight
// limits derived from the input's length (so the depth, string and key bounds are reached by
// small inputs). Findings (each aborts with a message):
//  - an exception (the function is documented never to throw: libFuzzer reports it uncaught);
//  - a refusal with a code other than invalid_json / invalid_request, or whose error body is
//    not valid JSON (the message must be client-safe);
//  - an accepted value that breaks the limits it was read with (depth, string, key bytes);
//  - an accepted value that out.dump() cannot serialise (it throws on invalid UTF-8), or whose
//    dump does not parse back to an equal value;
//  - an accepted text that nlohmann's own parser refuses or reads differently;
//  - accepted under the tight limits but refused (or read differently) under the defaults.
#include "parley/net/json_body.hpp"

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace {

using nlohmann::json;
using parley::net::json_limits;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_json: %s\n", what);
  std::abort();
}

/// True when `v` keeps within `limits`; `depth` is the nesting of `v`'s container.
bool within(const json& v, const json_limits& limits, int depth) {
  if (v.is_string())
    return v.get_ref<const json::string_t&>().size() <= limits.max_string_bytes;
  if (!v.is_structured())
    return true;
  if (depth + 1 > limits.max_depth)
    return false;
  if (v.is_object()) {
    for (auto& [k, child] : v.items())
      if (k.size() > limits.max_key_bytes || !within(child, limits, depth + 1))
        return false;
  } else {
    for (auto& child : v)
      if (!within(child, limits, depth + 1))
        return false;
  }
  return true;
}

/// Reads `text` with `limits`; checks every invariant of one call. Returns true if accepted.
bool check(std::string_view text, const json_limits& limits, json& out) {
  auto err = parley::net::parse_untrusted_json(text, out, limits);
  if (err) {
    if (err->code != parley::net::api_errc::invalid_json &&
        err->code != parley::net::api_errc::invalid_request)
      fail("refused with a code other than invalid_json / invalid_request");
    if (!json::accept(parley::net::error_body(*err)))
      fail("the error body of a refusal is not valid JSON");
    return false;
  }
  if (!within(out, limits, 0))
    fail("an accepted value breaks the limits it was read with");
  std::string dumped;
  try {
    dumped = out.dump();
  } catch (const json::exception& e) {
    std::fprintf(stderr, "fuzz_json: dump() threw: %s\n", e.what());
    fail("an accepted value cannot be serialised");
  }
  auto again = json::parse(dumped, nullptr, false);
  if (again.is_discarded() || again != out)
    fail("an accepted value does not survive dump() and parse()");
  auto reference = json::parse(text, nullptr, false);
  if (reference.is_discarded())
    fail("accepted a text that nlohmann::json::parse refuses");
  if (reference != out)
    fail("read a value other than nlohmann::json::parse reads");
  return true;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);

  json defaults_out;
  bool defaults_ok = check(text, json_limits{}, defaults_out);

  json_limits tight;
  tight.max_depth = 1 + static_cast<int>(size % 6);
  tight.max_string_bytes = size % 24;
  tight.max_key_bytes = size % 12;
  json tight_out;
  bool tight_ok = check(text, tight, tight_out);

  if (tight_ok && !defaults_ok)
    fail("accepted under tight limits but refused under the (looser) defaults");
  if (tight_ok && tight_out != defaults_out)
    fail("the value read depends on the limits");
  return 0;
}
