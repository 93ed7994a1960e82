#pragma once

#include "parley/net/api_error.hpp"

#include <nlohmann/json.hpp>

#include <cstddef>
#include <optional>
#include <string_view>

namespace parley::net {

/// Limits on JSON that comes from outside (request bodies, upstream responses).
struct json_limits {
  int max_depth = 64;                         ///< nested arrays/objects, the outermost is 1
  std::size_t max_string_bytes = 4u << 20;    ///< one string value
  std::size_t max_key_bytes = 1024;           ///< one object key
};

/// Parses untrusted JSON text into `out`, enforcing the limits *while* parsing (a deeply
/// nested document is refused at the first level too deep, before anything recursive
/// touches it). Refused with invalid_json / invalid_request and a client-safe message: text
/// that is not JSON (including invalid UTF-8), nesting deeper than max_depth, a key repeated
/// in one object, a number that is not finite as a double (1e400), a string or key over its
/// limit. Never throws. Thread-safe (no shared state).
std::optional<api_error> parse_untrusted_json(std::string_view text, nlohmann::json& out,
                                              const json_limits& limits = {});

} // namespace parley::net
