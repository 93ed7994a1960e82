#include "wiring.hpp"

#include "parley/persistence/open.hpp"
#include "parley/runtime/secrets.hpp"

#include <filesystem>

namespace parley::runtime::detail {

std::string sqlite_path(const config::settings& s) {
  return s.store.sqlite_path.empty()
           ? (std::filesystem::path(s.data.dir) / "parley.db").string()
           : s.store.sqlite_path;
}

std::unique_ptr<persistence::store> open_configured_store(const config::settings& s) {
  if (s.store.backend == "postgres")
    return persistence::open_postgres_store(s.store);
  return persistence::open_sqlite_store(sqlite_path(s), s.store);
}

std::string resolve_admin_key(const config::settings& s, std::string* generated_path) {
  if (!s.admin.key.empty())
    return s.admin.key;
  auto path = (std::filesystem::path(s.data.dir) / "admin.key").string();
  if (generated_path)
    *generated_path = path;
  return load_or_create_secret(path);
}

std::string resolve_pepper(const config::settings& s) {
  if (!s.auth.pepper.empty())
    return s.auth.pepper;
  return load_or_create_secret((std::filesystem::path(s.data.dir) / "pepper").string());
}

tenants::tenant_limits default_limits(const config::settings& s) {
  auto& d = s.tenant_defaults;
  tenants::tenant_limits l;
  l.requests_per_minute = d.requests_per_minute;
  l.tokens_per_minute = d.tokens_per_minute;
  l.tokens_per_day = d.tokens_per_day;
  l.max_concurrent = d.max_concurrent;
  l.max_request_tokens = d.max_request_tokens;
  return l;
}

} // namespace parley::runtime::detail
