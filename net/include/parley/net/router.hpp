#pragma once

#include "parley/net/access.hpp"
#include "parley/net/exchange.hpp"

#include <functional>
#include <string>
#include <vector>

namespace parley::net {

/// A route handler: parses, validates and hands off; answers through the exchange (now or
/// later, from any thread). Runs on the session strand and must not block.
using handler = std::function<void(const exchange_ptr&)>;

/// The explicit route table: (method, pattern, access) -> handler. Patterns are literal
/// segments and `{name}` captures, e.g. "/admin/v1/tenants/{id}/keys". Built once by runtime,
/// then read-only (safe to share across io threads).
class router {
public:
  /// Adds a route. Every route says who may call it; there is no default.
  void add(http::verb method, std::string pattern, access who, handler h);

  /// One entry of the table.
  struct route {
    http::verb method;
    std::string pattern;
    std::vector<std::string> segments;
    access who;
    handler fn;
  };

  /// What matching a request found: the route (null when none), its captured parameters,
  /// and, when the path exists only with other methods, their names for an `Allow` header.
  struct match_result {
    const route* found = nullptr;
    std::vector<std::pair<std::string, std::string>> params;
    std::string allow;
  };

  /// Matches a method and a canonical path (see canonical_path_error) against the table.
  match_result match(http::verb method, std::string_view path) const;

  /// Calls the handler of the route that match() found for the exchange (ctx().matched), or
  /// answers 405 with an `Allow` header (known path, other method) or 404 unknown_route.
  void dispatch(const exchange_ptr& ex) const;

  /// True when `path` matches any route (used by CORS to answer preflights only for real routes).
  bool has_path(std::string_view path) const;

  /// Every route, in the order added (for tests and docs).
  const std::vector<route>& routes() const noexcept { return routes_; }

private:
  std::vector<route> routes_;
};

/// Why a request target is not in the one canonical form the router accepts, or nullptr when
/// it is. Canonical: origin-form ("/..."), no empty segment ("//", a trailing "/"), no "." or
/// ".." segment (also percent-encoded), no encoded '/', '\' or NUL, no malformed percent
/// escape, no control, space, '\', '#' or non-ASCII byte. Non-canonical targets answer 400
/// before routing, so no spelling of a path can reach a handler past the check that the
/// canonical spelling gets.
const char* canonical_path_error(std::string_view target) noexcept;

/// The path part of a request target (before '?').
std::string_view path_of(std::string_view target);
/// The value of query parameter `name` (percent-decoded), or "" if absent.
std::string query_param(std::string_view target, std::string_view name);

} // namespace parley::net
