#pragma once

#include "parley/config/settings.hpp"
#include "parley/persistence/change_feed.hpp"
#include "parley/persistence/store.hpp"

#include <memory>
#include <string>

namespace parley::persistence {

/// Opens the SQLite store at `path` (parent directories are created): WAL mode, busy
/// timeout and a bounded pool of `s.pool_size` connections. Connections open lazily, so
/// this does not touch the file beyond creating it. Throws std::runtime_error only when
/// the path cannot be created (a start-up error).
std::unique_ptr<store> open_sqlite_store(const std::string& path,
                                         const config::store_settings& s);

/// Opens the PostgreSQL store for `s.postgres_dsn` (libpq keyword/value string or URI,
/// multi-host lists with target_session_attrs accepted): a bounded pool of `s.pool_size`
/// connections, opened lazily, broken ones replaced, statement_timeout applied per
/// connection. Never throws for an unreachable server: calls then fail with unavailable.
std::unique_ptr<store> open_postgres_store(const config::store_settings& s);

/// A change feed on `s.postgres_dsn` (change_feed.hpp), closed: its owner open()s it. Its
/// connection is its own, outside the store's pool, with the store's statement_timeout.
std::unique_ptr<change_feed> open_postgres_change_feed(const config::store_settings& s);

/// Removes a password from a DSN or URI so it can be logged ("password=***").
std::string redact_dsn(const std::string& dsn);

} // namespace parley::persistence
