#pragma once

#include "parley/net/http.hpp"
#include "parley/persistence/result.hpp"

#include <string>

namespace parley::net {

/// Every error a client can see. The one table in api_error.cpp maps each to its HTTP
/// status, OpenAI error `type` and `code`, and a default client-safe message.
enum class api_errc {
  invalid_request,     ///< 400 invalid_request_error
  invalid_json,        ///< 400 invalid_request_error / invalid_json
  unknown_parameter,   ///< 400 invalid_request_error / unknown_parameter
  invalid_api_key,     ///< 401 invalid_request_error / invalid_api_key
  permission_denied,   ///< 403 invalid_request_error / permission_denied
  origin_not_allowed,  ///< 403 invalid_request_error / origin_not_allowed
  not_found,           ///< 404 invalid_request_error / not_found
  model_not_found,     ///< 404 invalid_request_error / model_not_found
  unknown_route,       ///< 404 invalid_request_error / unknown_url
  method_not_allowed,  ///< 405 invalid_request_error / method_not_allowed
  conflict,            ///< 409 invalid_request_error / conflict
  payload_too_large,   ///< 413 invalid_request_error / payload_too_large
  unsupported_media,   ///< 415 invalid_request_error / unsupported_media_type
  headers_too_large,   ///< 431 invalid_request_error / request_header_fields_too_large
  rate_limited,        ///< 429 requests / rate_limit_exceeded
  quota_exceeded,      ///< 429 insufficient_quota / insufficient_quota
  too_many_auth_failures, ///< 429 requests / too_many_failed_authentications
  internal,            ///< 500 server_error / internal_error
  bad_gateway,         ///< 502 server_error / upstream_error
  unavailable,         ///< 503 server_error / service_unavailable
  overloaded,          ///< 503 server_error / overloaded
  shutting_down,       ///< 503 server_error / server_shutdown
  gateway_timeout,     ///< 504 server_error / upstream_timeout
};

/// A client-visible error: code plus a client-safe message and the offending parameter.
/// Internal detail (SQL, upstream URLs, stack) never goes here: log it separately.
struct api_error {
  api_errc code = api_errc::internal;
  std::string message;  ///< "" = the table's default message
  std::string param;    ///< "" = null
};

/// The HTTP status of an error code.
http::status status_of(api_errc code) noexcept;
/// OpenAI's `type` of an error code.
const char* type_of(api_errc code) noexcept;
/// OpenAI's `code` of an error code ("" = null).
const char* code_of(api_errc code) noexcept;

/// `{"error":{"message":...,"type":...,"param":...,"code":...}}`.
std::string error_body(const api_error& e);

/// Maps a store error to what a client may see (not_found -> 404, conflict -> 409,
/// unavailable/timeout -> 503, otherwise 500). The store's detail is never included.
api_error from_store(const persistence::store_error& e, std::string not_found_message = {});

} // namespace parley::net
