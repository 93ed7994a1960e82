#pragma once

#include <boost/beast/http/message.hpp>

#include <string>

namespace parley::net::wire {

/// Appends a response's status line and header fields, then the empty line, to `out`: the
/// bytes Beast's serializer writes before the body, made in one pass into one reused buffer
/// instead of Beast's buffer sequence of the fields (which cost more than the rest of the
/// write). The body follows as it is: callers send a message whose framing prepare_payload()
/// set (Content-Length, or Transfer-Encoding: chunked with the chunks framed by the caller).
/// (The upstream request is written as text by the OpenAI client, without a field container.)
void append_head(std::string& out, const boost::beast::http::response_header<>& h);

/// Appends one chunk of chunked transfer coding ("<hex size>\r\n<data>\r\n"); an empty `data`
/// appends nothing (the last chunk is last_chunk).
void append_chunk(std::string& out, std::string_view data);
inline constexpr std::string_view last_chunk = "0\r\n\r\n";

} // namespace parley::net::wire
