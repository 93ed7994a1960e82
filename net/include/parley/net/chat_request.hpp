#pragma once

#include "parley/actors/chat.hpp"
#include "parley/net/api_error.hpp"

#include <optional>
#include <string_view>
#include <vector>

namespace parley::net {

/// The request fields of OpenAI's CreateChatCompletionRequest (schema in
/// net/spec/openai-schemas.json) plus parley's `conversation`: the allow-list of what a
/// client may send. Anything else is refused with 400 unknown_parameter, and only these
/// reach the upstream (a unit test keeps the list equal to the schema's).
const std::vector<std::string_view>& chat_parameters();

/// Validates a chat completion body into `out` (model, messages, stream flags, max_tokens,
/// conversation, the pass-through fields as extra_json and their token estimate, the cache
/// mode from `cache_header` (x-parley-cache) and the cache key). The body is parsed with
/// parse_untrusted_json (depth, duplicate keys, number range). Returns the client error, or
/// nullopt when valid. Never throws; thread-safe.
std::optional<api_error> parse_chat_request(std::string_view body, std::string_view cache_header,
                                            actors::chat_request& out);

} // namespace parley::net
