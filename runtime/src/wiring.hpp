#pragma once

#include "parley/config/settings.hpp"
#include "parley/persistence/store.hpp"
#include "parley/tenants/tenant_config.hpp"

#include <memory>
#include <string>

/// Wiring shared by `parley serve` and the offline CLI commands, so both read the same store
/// and the same secrets.
namespace parley::runtime::detail {

/// Opens the store the settings name (SQLite under data.dir by default, or PostgreSQL).
std::unique_ptr<persistence::store> open_configured_store(const config::settings& s);
/// Where the SQLite file is.
std::string sqlite_path(const config::settings& s);
/// The admin key: from config/env, else the generated <data.dir>/admin.key.
std::string resolve_admin_key(const config::settings& s, std::string* generated_path);
/// The pepper: from config/env, else the generated <data.dir>/pepper.
std::string resolve_pepper(const config::settings& s);
/// The limits a new tenant gets unless its creator sets others ([tenant_defaults]).
tenants::tenant_limits default_limits(const config::settings& s);

} // namespace parley::runtime::detail
