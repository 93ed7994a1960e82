#pragma once

#include "parley/tenants/key_cache.hpp"

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace parley::net {

/// Per-request facts that middleware and handlers fill in as the request moves along.
/// Owned by its exchange; touched only on the session strand (or by the one handler that
/// currently holds the exchange).
struct request_context {
  std::string request_id;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  std::string client_address;     ///< peer IP
  std::string route;              ///< matched route pattern, e.g. "/admin/v1/tenants/{id}"
  std::vector<std::pair<std::string, std::string>> params; ///< captured path parameters
  std::string tenant_id;          ///< set by authentication
  std::string key_id;             ///< set by authentication
  std::vector<std::string> scopes;
  /// The authenticated key and its tenant (config included); null for admin and ops routes.
  std::shared_ptr<const tenants::key_principal> principal;
  bool admin = false;             ///< authenticated with the admin credential

  /// The captured path parameter `name`, or "".
  const std::string& param(const std::string& name) const {
    static const std::string empty;
    for (auto& [k, v] : params)
      if (k == name)
        return v;
    return empty;
  }
};

} // namespace parley::net
