#pragma once

// Small, allocation-light JSON text helpers for the hot path of a chat completion: writing
// strings into hand-assembled JSON, and reading the few fields parley needs from an upstream's
// chat.completion.chunk without building a DOM. Anything unusual makes the reader give up
// (returns false) so that callers fall back to a full parser: speed never costs correctness.

#include <cstdint>
#include <string>
#include <string_view>

namespace parley::net::jsontext {

/// Appends `s` as a JSON string literal, quotes included.
void append_string(std::string& out, std::string_view s);

/// What parley reads from one streamed chunk.
struct chunk_fields {
  bool error = false;           ///< an "error" member that is not null
  std::string error_message;    ///< its "message", if a string
  bool has_content = false;     ///< choices[0].delta.content is a string
  std::string content;          ///< ...unescaped
  bool has_finish = false;      ///< choices[0].finish_reason is a string
  std::string finish_reason;
  bool has_usage = false;       ///< "usage" is an object
  int64_t prompt_tokens = -1;   ///< -1 = absent
  int64_t completion_tokens = -1;
};

/// Reads a chat.completion.chunk (or an error object). False when the text is not a JSON
/// object this reader fully understands; `out` is then unspecified.
bool scan_chunk(std::string_view text, chunk_fields& out);

} // namespace parley::net::jsontext
