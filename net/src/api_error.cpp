#include "parley/net/api_error.hpp"

#include <nlohmann/json.hpp>

namespace parley::net {
namespace {

struct spec {
  http::status status;
  const char* type;
  const char* code; // "" = null
  const char* message;
};

// The one table from error code to what the client sees.
spec lookup(api_errc c) noexcept {
  using s = http::status;
  switch (c) {
    case api_errc::invalid_request:
      return {s::bad_request, "invalid_request_error", "", "The request is invalid."};
    case api_errc::invalid_json:
      return {s::bad_request, "invalid_request_error", "invalid_json",
              "The request body is not valid JSON."};
    case api_errc::unknown_parameter:
      return {s::bad_request, "invalid_request_error", "unknown_parameter",
              "Unrecognized request argument supplied."};
    case api_errc::invalid_api_key:
      return {s::unauthorized, "invalid_request_error", "invalid_api_key",
              "Incorrect API key provided."};
    case api_errc::permission_denied:
      return {s::forbidden, "invalid_request_error", "permission_denied",
              "You are not allowed to perform this request."};
    case api_errc::origin_not_allowed:
      return {s::forbidden, "invalid_request_error", "origin_not_allowed",
              "This origin is not allowed to call the API."};
    case api_errc::not_found:
      return {s::not_found, "invalid_request_error", "not_found", "Not found."};
    case api_errc::model_not_found:
      return {s::not_found, "invalid_request_error", "model_not_found",
              "The model does not exist or you do not have access to it."};
    case api_errc::unknown_route:
      return {s::not_found, "invalid_request_error", "unknown_url", "Unknown request URL."};
    case api_errc::method_not_allowed:
      return {s::method_not_allowed, "invalid_request_error", "method_not_allowed",
              "Method not allowed for this URL."};
    case api_errc::conflict:
      return {s::conflict, "invalid_request_error", "conflict",
              "The request conflicts with the current state."};
    case api_errc::payload_too_large:
      return {s::payload_too_large, "invalid_request_error", "payload_too_large",
              "The request body is too large."};
    case api_errc::unsupported_media:
      return {s::unsupported_media_type, "invalid_request_error", "unsupported_media_type",
              "The request body must be application/json."};
    case api_errc::headers_too_large:
      return {s::request_header_fields_too_large, "invalid_request_error",
              "request_header_fields_too_large", "The request headers are too large."};
    case api_errc::rate_limited:
      return {s::too_many_requests, "requests", "rate_limit_exceeded", "Rate limit reached."};
    case api_errc::quota_exceeded:
      return {s::too_many_requests, "insufficient_quota", "insufficient_quota",
              "You exceeded your current quota."};
    case api_errc::too_many_auth_failures:
      return {s::too_many_requests, "requests", "too_many_failed_authentications",
              "Too many failed authentication attempts; slow down."};
    case api_errc::internal:
      return {s::internal_server_error, "server_error", "internal_error",
              "The server had an error while processing your request."};
    case api_errc::bad_gateway:
      return {s::bad_gateway, "server_error", "upstream_error",
              "The upstream model provider returned an error."};
    case api_errc::unavailable:
      return {s::service_unavailable, "server_error", "service_unavailable",
              "The service is temporarily unavailable."};
    case api_errc::overloaded:
      return {s::service_unavailable, "server_error", "overloaded",
              "The server is overloaded; retry later."};
    case api_errc::shutting_down:
      return {s::service_unavailable, "server_error", "server_shutdown",
              "The server is shutting down; retry the request."};
    case api_errc::gateway_timeout:
      return {s::gateway_timeout, "server_error", "upstream_timeout",
              "The upstream model provider did not answer in time."};
  }
  return {s::internal_server_error, "server_error", "internal_error", "Internal error."};
}

} // namespace

http::status status_of(api_errc code) noexcept { return lookup(code).status; }
const char* type_of(api_errc code) noexcept { return lookup(code).type; }
const char* code_of(api_errc code) noexcept { return lookup(code).code; }

std::string error_body(const api_error& e) {
  auto sp = lookup(e.code);
  nlohmann::json err = {
    {"message", e.message.empty() ? std::string(sp.message) : e.message},
    {"type", sp.type},
    {"param", e.param.empty() ? nlohmann::json(nullptr) : nlohmann::json(e.param)},
    {"code", *sp.code ? nlohmann::json(sp.code) : nlohmann::json(nullptr)},
  };
  // A message may quote client input (a key, a parameter name) cut at any byte: invalid UTF-8
  // is replaced, never thrown (an error answer must not itself fail).
  return nlohmann::json{{"error", std::move(err)}}.dump(-1, ' ', false,
                                                         nlohmann::json::error_handler_t::replace);
}

api_error from_store(const persistence::store_error& e, std::string not_found_message) {
  using persistence::persistence_errc;
  switch (e.code) {
    case persistence_errc::not_found: return {api_errc::not_found, std::move(not_found_message), ""};
    case persistence_errc::conflict: return {api_errc::conflict, "", ""};
    case persistence_errc::unavailable:
    case persistence_errc::timeout: return {api_errc::unavailable, "", ""};
    default: return {api_errc::internal, "", ""};
  }
}

} // namespace parley::net
