#pragma once

#include "parley/net/middleware.hpp"

#include <memory>
#include <string>
#include <string_view>
#include <vector>

/// The built-in middleware of the request pipeline. Runtime puts them in order.
namespace parley::net {

/// Gives every request parley's own id (ctx().request_id, generated). A sane incoming
/// X-Request-ID (1-128 chars of [A-Za-z0-9._:-]) is kept in ctx().client_request_id and echoed
/// as `x-request-id`, with parley's id in `x-parley-request-id`; otherwise `x-request-id` is
/// parley's id.
std::unique_ptr<middleware> make_request_id();

/// Sets ctx().client_address from X-Forwarded-For or Forwarded (RFC 7239), but only when the
/// peer is one of `trusted_proxies` (addresses or CIDR blocks): walking the hops from the
/// nearest back, the first address that is not a trusted proxy is the client. With no trusted
/// proxies (the default) the headers are ignored and the peer is the client. Throws
/// std::invalid_argument for an entry that is not an address or block (start-up only).
std::unique_ptr<middleware> make_client_address(const std::vector<std::string>& trusted_proxies);

/// Adds defensive headers to every response (nosniff, no-store, frame denial, no referrer,
/// a CSP that allows nothing: the API serves JSON, never pages).
std::unique_ptr<middleware> make_security_headers();

/// CORS for the listed origins (exact match, or "*"). Preflights (OPTIONS with Origin and
/// Access-Control-Request-Method) from an allowed origin answer 204 with the allowed methods
/// and headers; from another origin 403. Actual responses to an allowed origin carry
/// Access-Control-Allow-Origin and the exposed headers. Empty list: CORS off (no headers,
/// preflights fall through to routing).
std::unique_ptr<middleware> make_cors(std::vector<std::string> allowed_origins);

/// A new request id: 32 lowercase hex characters, the first 12 the milliseconds since the
/// epoch (so ids sort by time), the rest random. Thread-safe.
std::string generate_request_id();
/// A new random W3C trace id (32 lowercase hex) and span id (16). Thread-safe.
std::string generate_trace_id();
std::string generate_span_id();

/// Parses a W3C `traceparent` header; on success sets its trace id and flags.
bool parse_traceparent(std::string_view value, std::string& trace_id, std::string& flags);

} // namespace parley::net
