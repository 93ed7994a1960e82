#pragma once

#include <cstdint>
#include <string>
#include <utility>

namespace parley::net {

/// Who may call a route. Declared when the route is added and enforced by the auth
/// middleware on the matched route, never on the spelling of the path.
struct access {
  enum class kind : uint8_t {
    anyone,         ///< no credential (health probes, the metrics listener)
    anyone_or_admin,///< no credential needed; the admin credential adds details (ctx().admin)
    tenant,         ///< a tenant API key, with `scope` when it is not empty
    admin,          ///< the admin credential
    metrics,        ///< the metrics credential or the admin credential
  };
  kind who = kind::admin;
  std::string scope; ///< for tenant routes: the key scope needed ("" = any valid key)

  static access anyone() { return {kind::anyone, {}}; }
  static access anyone_or_admin() { return {kind::anyone_or_admin, {}}; }
  static access tenant(std::string scope = {}) { return {kind::tenant, std::move(scope)}; }
  static access admin() { return {kind::admin, {}}; }
  static access metrics() { return {kind::metrics, {}}; }
};

/// A short name of an access kind ("anyone", "tenant", "admin", ...), for logs and tests.
const char* to_string(access::kind k) noexcept;

} // namespace parley::net
