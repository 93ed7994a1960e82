#pragma once

#include "parley/net/exchange.hpp"

#include <functional>
#include <string>
#include <vector>

namespace parley::net {

/// A route handler: parses, validates and hands off; answers through the exchange (now or
/// later, from any thread). Runs on the session strand and must not block.
using handler = std::function<void(const exchange_ptr&)>;

/// The explicit route table: (method, pattern) -> handler. Patterns are literal segments and
/// `{name}` captures, e.g. "/admin/v1/tenants/{id}/keys". Built once by runtime, then
/// read-only (safe to share across io threads).
class router {
public:
  void add(http::verb method, std::string pattern, handler h);

  /// Finds the route for the exchange's method and target, fills ctx().route and params,
  /// and calls the handler. Unknown path -> 404 unknown_route; known path with another
  /// method -> 405 with an `Allow` header.
  void dispatch(const exchange_ptr& ex) const;

  /// True when `path` matches any route (used by CORS to answer preflights only for real routes).
  bool has_path(std::string_view path) const;

  /// One entry of the table (public for the matcher; not part of the interface).
  struct route {
    http::verb method;
    std::string pattern;
    std::vector<std::string> segments;
    handler fn;
  };

private:
  static bool match(const route& r, std::string_view path,
                    std::vector<std::pair<std::string, std::string>>* params);
  std::vector<route> routes_;
};

/// The path part of a request target (before '?').
std::string_view path_of(std::string_view target);
/// The value of query parameter `name` (percent-decoded), or "" if absent.
std::string query_param(std::string_view target, std::string_view name);

} // namespace parley::net
