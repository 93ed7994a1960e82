#pragma once

#include <string>

/// A PostgreSQL schema of its own for one test, created from PARLEY_TEST_PG_DSN and dropped
/// afterwards, so tests never see each other's rows. REQUIREs the DSN: [pg] tests never pass
/// without a real PostgreSQL.
namespace parley::test {

class pg_schema {
public:
  pg_schema();
  ~pg_schema();
  pg_schema(const pg_schema&) = delete;
  pg_schema& operator=(const pg_schema&) = delete;

  /// The base DSN (the database's default search_path).
  const std::string& dsn() const noexcept { return dsn_; }
  const std::string& name() const noexcept { return name_; }
  /// The DSN with search_path set to this schema.
  std::string scoped_dsn() const;

private:
  std::string dsn_, name_;
};

} // namespace parley::test
