#pragma once

#include "parley/persistence/cluster_store.hpp"
#include "parley/persistence/records.hpp"
#include "parley/persistence/result.hpp"

#include <memory>
#include <string>
#include <vector>

/// The store contracts. Every call here is **synchronous and may block** (it talks to a
/// database): call it only from a persistence worker (see store_executor), from CLI code, or
/// from tests -- never from an Asio io thread or a CAF scheduler thread.
///
/// Thread safety: implementations are safe to call from many threads at once; each call
/// borrows a connection from the implementation's bounded pool for its duration.
///
/// Tenant isolation: every call that reads or writes tenant data takes the tenant id and
/// filters by it; an id that exists but belongs to another tenant answers not_found.
namespace parley::persistence {

/// Tenants (the unit of isolation).
class tenant_store {
public:
  virtual ~tenant_store() = default;
  /// Inserts a tenant. conflict when the slug is taken by a tenant that is not deleted.
  virtual result<tenant_record> create_tenant(const tenant_record& t) = 0;
  /// Any status, deleted included. not_found when absent.
  virtual result<tenant_record> get_tenant(const std::string& id) = 0;
  /// Tenants ordered by id; deleted ones only when include_deleted.
  virtual result<page<tenant_record>> list_tenants(const page_request& p,
                                                   bool include_deleted) = 0;
  /// Applies the set fields and moves updated_at forward: to now_ms, or one past its value
  /// when that is not earlier (every change moves it, whatever the writer's clock says; the
  /// tenant's config version and the cluster's fallback invalidation rely on it). PostgreSQL
  /// announces the committed change on the invalidation channel (change_feed.hpp). conflict
  /// on a taken slug.
  virtual result<tenant_record> update_tenant(const std::string& id, const tenant_update& u,
                                              millis now_ms) = 0;
};

/// API keys. Only HMACs of secrets are ever stored.
class key_store {
public:
  virtual ~key_store() = default;
  virtual result<api_key_record> create_key(const api_key_record& k) = 0;
  /// Looks a key up by its id alone (the hot authentication path). not_found when absent.
  virtual result<api_key_record> get_key(const std::string& key_id) = 0;
  /// Keys of one tenant, ordered by id, revoked ones included.
  virtual result<page<api_key_record>> list_keys(const std::string& tenant_id,
                                                 const page_request& p) = 0;
  /// Sets revoked_at = now_ms (idempotent: a revoked key keeps its first revoked_at). This
  /// and rotate_key move updated_at forward as update_tenant does, and PostgreSQL announces
  /// the committed change on the invalidation channel.
  virtual result<api_key_record> revoke_key(const std::string& tenant_id,
                                            const std::string& key_id, millis now_ms) = 0;
  /// Replaces secret_hash; the old hash stays valid until previous_valid_until
  /// (std::nullopt or <= now_ms: the old secret stops working at once).
  virtual result<api_key_record> rotate_key(const std::string& tenant_id,
                                            const std::string& key_id,
                                            const std::string& new_secret_hash,
                                            std::optional<millis> previous_valid_until,
                                            millis now_ms) = 0;
  /// Batched write-behind of last_used_at: for each (key id, time) keeps the later time.
  virtual status touch_keys(const std::vector<std::pair<std::string, millis>>& used) = 0;
};

/// Server-side conversations and their messages.
class conversation_store {
public:
  virtual ~conversation_store() = default;
  virtual result<conversation_record> create_conversation(const conversation_record& c) = 0;
  virtual result<conversation_record> get_conversation(const std::string& tenant_id,
                                                       const std::string& id) = 0;
  virtual result<page<conversation_record>> list_conversations(const std::string& tenant_id,
                                                               const page_request& p) = 0;
  /// Deletes the conversation and its messages. not_found when absent or another tenant's.
  virtual status delete_conversation(const std::string& tenant_id, const std::string& id) = 0;
  /// Appends messages in one transaction (group commit: a batch may span conversations).
  /// Each record's seq must be the next free seq of its conversation, else conflict and
  /// nothing of the batch is written. not_found when a conversation is missing.
  virtual status append_messages(const std::vector<message_record>& batch) = 0;
  /// Messages with seq > after_seq in seq order, at most limit.
  virtual result<std::vector<message_record>> list_messages(const std::string& tenant_id,
                                                            const std::string& conversation_id,
                                                            int64_t after_seq, int limit) = 0;
};

/// Usage accounting: the ledger (one row per upstream attempt) and its per-minute rollup.
class usage_store {
public:
  virtual ~usage_store() = default;
  /// Inserts ledger rows, idempotently: a row whose (request_id, attempt) exists is left as
  /// it is. Each newly inserted row is added to its rollup row in the same transaction, so a
  /// retried write never counts twice.
  virtual status record_usage(const std::vector<usage_entry>& entries) = 0;
  /// Rollup rows of one tenant with period_start in [from, to), ordered by period_start,
  /// key, model.
  virtual result<std::vector<usage_row>> query_usage(const std::string& tenant_id, millis from,
                                                     millis to) = 0;
  /// Ledger rows of one tenant with `at` in [from, to), ordered by at, request_id, attempt;
  /// at most `limit`.
  virtual result<std::vector<usage_entry>> list_usage_entries(const std::string& tenant_id,
                                                              millis from, millis to,
                                                              int limit) = 0;
};

/// Append-only audit log of admin mutations.
class audit_store {
public:
  virtual ~audit_store() = default;
  virtual status append_audit(const audit_record& a) = 0;
  /// Newest first is NOT used: ordered by id ascending, like every other list.
  virtual result<page<audit_record>> list_audit(const audit_filter& f,
                                                const page_request& p) = 0;
};

/// One backend (PostgreSQL or SQLite) implements every contract plus lifecycle.
class store : public tenant_store,
              public key_store,
              public conversation_store,
              public usage_store,
              public audit_store {
public:
  ~store() override = default;
  /// "postgres" or "sqlite".
  virtual const char* backend() const noexcept = 0;
  /// Applies pending numbered migrations (idempotent; on PostgreSQL under an advisory lock
  /// so that two nodes starting at once are safe). Returns the versions it applied.
  virtual result<std::vector<int>> migrate() = 0;
  /// Versions that exist in the binary but are not applied yet (empty = up to date).
  virtual result<std::vector<int>> pending_migrations() = 0;
  /// Commits the messages and usage entries of every write in one transaction (group
  /// commit). The messages follow append_messages' rules; when they fail nothing of the batch
  /// is written. Usage entries follow record_usage's.
  virtual status write_turns(const std::vector<turn_write>& batch) = 0;
  /// Cheap round trip (SELECT 1) to check reachability.
  virtual status ping() = 0;
  /// Connections currently borrowed from the pool, and the pool's size.
  virtual int pool_in_use() const noexcept = 0;
  virtual int pool_size() const noexcept = 0;
  /// Membership and ownership for a cluster, or null: a backend that cannot be shared by
  /// several nodes (SQLite) has none.
  virtual cluster_store* cluster() noexcept { return nullptr; }
};

} // namespace parley::persistence
