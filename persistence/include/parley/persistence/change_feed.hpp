#pragma once

#include "parley/persistence/records.hpp"
#include "parley/persistence/result.hpp"

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

/// Changes to the rows that authentication caches (API keys, tenants), as the nodes of a
/// cluster learn of them. PostgreSQL only: its store announces every committed revoke_key,
/// rotate_key and update_tenant (status changes and deletion included) with
/// `NOTIFY parley_invalidate, '<kind>:<id>'` in the writing transaction, and moves the row's
/// updated_at forward, so that a node that missed a notification finds the change by version.
namespace parley::persistence {

/// The PostgreSQL notification channel of cached-row changes.
inline constexpr const char* invalidation_channel = "parley_invalidate";

/// One changed row: a key (by key id) or a tenant (by tenant id; every key of it is affected).
struct cached_change {
  enum class kind { key, tenant };
  kind what = kind::key;
  std::string id;
  millis updated_at = 0; ///< its version; 0 when it came from a notification (which has none)
};

/// Parses a notification payload, "key:<id>" or "tenant:<id>"; nullopt for anything else.
std::optional<cached_change> parse_invalidation(std::string_view payload);

/// One dedicated connection that listens on the invalidation channel and reads changed rows
/// by version. Not thread-safe: one thread owns it (runtime's invalidation listener). Every
/// call blocks on the database; none throws.
class change_feed {
public:
  virtual ~change_feed() = default;

  /// Opens a connection of its own (never one of the store's pool) and LISTENs. A feed that
  /// was open is closed first. unavailable when the database cannot be reached.
  virtual status open() = 0;
  /// Whether the connection is open (it closes itself when it breaks).
  virtual bool is_open() const = 0;
  /// The server process id of the open connection (0 when closed): for logs, and to find
  /// the connection in pg_stat_activity.
  virtual int backend_pid() const = 0;
  /// Closes the connection (LISTEN ends with it).
  virtual void close() = 0;

  /// Waits up to `timeout` for notifications and appends the changes they announce to `out`
  /// (payloads that do not parse are skipped). unavailable when the connection broke: it is
  /// closed then, and notifications sent until the next open() are lost.
  virtual status wait(std::chrono::milliseconds timeout, std::vector<cached_change>& out) = 0;

  /// Keys and tenants whose updated_at is above `since`, newest first, at most `limit`
  /// (exactly `limit` rows: there may be more).
  virtual result<std::vector<cached_change>> changed_since(millis since, int limit) = 0;
  /// The highest updated_at of keys and tenants (0 when there are none).
  virtual result<millis> newest_version() = 0;
};

} // namespace parley::persistence
