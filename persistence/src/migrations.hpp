#pragma once

#include <vector>

namespace parley::persistence::detail {

/// One numbered schema migration, embedded from persistence/sql/<backend>/NNN_name.sql.
struct migration {
  int version;
  const char* name;
  const char* sql;
};

/// All migrations of a backend, in version order.
const std::vector<migration>& sqlite_migrations();
const std::vector<migration>& postgres_migrations();

} // namespace parley::persistence::detail
