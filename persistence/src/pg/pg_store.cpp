// The PostgreSQL store: production and cluster backend. A bounded pool of libpqxx connections
// (opened lazily, broken ones dropped and replaced), statement_timeout per connection,
// parameterized statements only, libpq connection strings passed through untouched so that
// multi-host strings with target_session_attrs=read-write survive a primary failover.
#include "migrations.hpp"
#include "parley/persistence/change_feed.hpp"
#include "parley/persistence/ids.hpp"
#include "parley/persistence/open.hpp"
#include "pool.hpp"

#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include <limits>
#include <unordered_set>

namespace parley::persistence {
namespace {

using detail::connection_pool;

/// A fixed key for the migration advisory lock ("parley" in ASCII, as a number).
constexpr int64_t migration_lock_key = 0x7061726c6579;

store_error classify(const pqxx::sql_error& e) {
  const auto& state = e.sqlstate();
  std::string msg = e.what();
  if (state == "23505")
    return {persistence_errc::conflict, msg};
  if (state == "23503")
    return {persistence_errc::not_found, msg};
  if (state == "57014" || state == "55P03")
    return {persistence_errc::timeout, msg};
  if (state.rfind("23", 0) == 0 || state.rfind("22", 0) == 0)
    return {persistence_errc::invalid, msg};
  if (state.rfind("08", 0) == 0 || state == "57P01" || state == "57P02" || state == "57P03" ||
      state == "25006") // 25006: read-only transaction (we reached a standby)
    return {persistence_errc::unavailable, msg};
  return {persistence_errc::internal, msg};
}

std::string scopes_to_json(const std::vector<std::string>& s) { return nlohmann::json(s).dump(); }
std::vector<std::string> scopes_from_json(const std::string& s) {
  auto j = nlohmann::json::parse(s, nullptr, false);
  if (!j.is_array())
    return {};
  return j.get<std::vector<std::string>>();
}

template <class T>
std::optional<T> opt(const pqxx::field& f) {
  if (f.is_null())
    return std::nullopt;
  return f.as<T>();
}

constexpr const char* tenant_select =
  "SELECT id, slug, name, status, config::text, created_at, updated_at FROM tenants ";
constexpr const char* key_select =
  "SELECT id, tenant_id, name, secret_hash, scopes::text, expires_at, revoked_at, "
  "previous_secret_hash, previous_valid_until, last_used_at, created_at, updated_at "
  "FROM api_keys ";

tenant_record read_tenant(const pqxx::row& r) {
  return {r[0].as<std::string>(), r[1].as<std::string>(), r[2].as<std::string>(),
          r[3].as<std::string>(), r[4].as<std::string>(), r[5].as<int64_t>(),
          r[6].as<int64_t>()};
}

api_key_record read_key(const pqxx::row& r) {
  api_key_record k;
  k.id = r[0].as<std::string>();
  k.tenant_id = r[1].as<std::string>();
  k.name = r[2].as<std::string>();
  k.secret_hash = r[3].as<std::string>();
  k.scopes = scopes_from_json(r[4].as<std::string>());
  k.expires_at = opt<int64_t>(r[5]);
  k.revoked_at = opt<int64_t>(r[6]);
  k.previous_secret_hash = opt<std::string>(r[7]);
  k.previous_valid_until = opt<int64_t>(r[8]);
  k.last_used_at = opt<int64_t>(r[9]);
  k.created_at = r[10].as<int64_t>();
  k.updated_at = r[11].as<int64_t>();
  return k;
}

conversation_record read_conversation(const pqxx::row& r) {
  return {r[0].as<std::string>(), r[1].as<std::string>(), r[2].as<std::string>(),
          r[3].as<int64_t>(), r[4].as<int64_t>()};
}

int clamp_limit(int limit) { return limit < 1 ? 1 : limit > 1000 ? 1000 : limit; }

template <class T, class Read>
page<T> paginate(const pqxx::result& rows, int limit, Read read) {
  page<T> p;
  for (const auto& r : rows) {
    if (static_cast<int>(p.items.size()) == limit) {
      p.has_more = true;
      break;
    }
    p.items.push_back(read(r));
  }
  return p;
}

/// The database clock in epoch milliseconds (cluster leases are judged by it alone).
#define PARLEY_PG_NOW "(extract(epoch from clock_timestamp()) * 1000)::bigint"
/// A node incarnation `n` that still holds a live lease.
#define PARLEY_PG_LIVE(n) "(" n ".status <> 'left' AND " n ".lease_expires_at > " PARLEY_PG_NOW ")"

class pg_store final : public store, public cluster_store {
public:
  explicit pg_store(const config::store_settings& s)
    : pool_(s.pool_size, std::chrono::milliseconds(s.acquire_timeout_ms),
            [dsn = s.postgres_dsn, timeout = s.statement_timeout_ms] {
              try {
                auto c = std::make_unique<pqxx::connection>(dsn);
                pqxx::nontransaction n(*c);
                n.exec("SET statement_timeout = " + std::to_string(timeout));
                return c;
              } catch (const std::exception& e) {
                // libpq's message may echo the connection string: keep only its first line
                // and never the DSN itself.
                std::string msg = e.what();
                auto nl = msg.find('\n');
                throw std::runtime_error("cannot connect to PostgreSQL: " + msg.substr(0, nl));
              }
            }) {}

  // -- store ----------------------------------------------------------------------
  const char* backend() const noexcept override { return "postgres"; }
  int pool_in_use() const noexcept override { return pool_.in_use(); }
  int pool_size() const noexcept override { return pool_.size(); }

  cluster_store* cluster() noexcept override { return this; }

  status ping() override {
    return with<unit>([](pqxx::connection& c) {
      pqxx::nontransaction n(c);
      n.exec("SELECT 1");
      return unit{};
    });
  }

  result<std::vector<int>> migrate() override {
    return with<std::vector<int>>([](pqxx::connection& c) {
      pqxx::work w(c);
      // Serializes concurrent migrators (two nodes starting at once); released at commit.
      w.exec_params("SELECT pg_advisory_xact_lock($1)", migration_lock_key);
      w.exec("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
             "name TEXT NOT NULL, applied_at BIGINT NOT NULL)");
      auto applied = applied_versions(w);
      std::vector<int> done;
      for (auto& m : detail::postgres_migrations()) {
        if (applied.count(m.version))
          continue;
        w.exec(m.sql);
        w.exec_params("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                      m.version, std::string(m.name), now_millis());
        done.push_back(m.version);
      }
      w.commit();
      return done;
    });
  }

  result<std::vector<int>> pending_migrations() override {
    return with<std::vector<int>>([](pqxx::connection& c) {
      pqxx::nontransaction n(c);
      auto exists = n.exec("SELECT to_regclass('schema_migrations') IS NOT NULL");
      std::unordered_set<int> applied;
      if (exists[0][0].as<bool>())
        applied = applied_versions(n);
      std::vector<int> pending;
      for (auto& m : detail::postgres_migrations())
        if (!applied.count(m.version))
          pending.push_back(m.version);
      return pending;
    });
  }

  // -- tenant_store ---------------------------------------------------------------
  result<tenant_record> create_tenant(const tenant_record& t) override {
    return with<tenant_record>([&](pqxx::connection& c) {
      pqxx::work w(c);
      w.exec_params("INSERT INTO tenants (id, slug, name, status, config, created_at, updated_at) "
                    "VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)",
                    t.id, t.slug, t.name, t.status, t.config_json, t.created_at, t.updated_at);
      w.commit();
      return t;
    });
  }

  result<tenant_record> get_tenant(const std::string& id) override {
    return with<tenant_record>([&](pqxx::connection& c) -> result<tenant_record> {
      pqxx::nontransaction n(c);
      auto r = n.exec_params(std::string(tenant_select) + "WHERE id = $1", id);
      if (r.empty())
        return store_error{persistence_errc::not_found, "tenant " + id};
      return read_tenant(r[0]);
    });
  }

  result<page<tenant_record>> list_tenants(const page_request& p, bool include_deleted) override {
    return with<page<tenant_record>>([&](pqxx::connection& c) {
      int limit = clamp_limit(p.limit);
      pqxx::nontransaction n(c);
      auto r = n.exec_params(std::string(tenant_select) +
                               "WHERE id > $1 AND ($2 OR status <> 'deleted') ORDER BY id LIMIT $3",
                             p.after, include_deleted, limit + 1);
      return paginate<tenant_record>(r, limit, read_tenant);
    });
  }

  result<tenant_record> update_tenant(const std::string& id, const tenant_update& u,
                                      millis now_ms) override {
    return with<tenant_record>([&](pqxx::connection& c) -> result<tenant_record> {
      pqxx::work w(c);
      auto r = w.exec_params(
        "UPDATE tenants SET slug = COALESCE($1, slug), name = COALESCE($2, name), "
        "status = COALESCE($3, status), config = COALESCE($4::jsonb, config), "
        "updated_at = GREATEST($5, updated_at + 1) "
        "WHERE id = $6 RETURNING id, slug, name, status, config::text, created_at, updated_at",
        u.slug, u.name, u.status, u.config_json, now_ms, id);
      if (r.empty())
        return store_error{persistence_errc::not_found, "tenant " + id};
      notify_invalidate(w, "tenant", id);
      w.commit();
      return read_tenant(r[0]);
    });
  }

  // -- key_store ------------------------------------------------------------------
  result<api_key_record> create_key(const api_key_record& k) override {
    return with<api_key_record>([&](pqxx::connection& c) {
      pqxx::work w(c);
      w.exec_params("INSERT INTO api_keys (id, tenant_id, name, secret_hash, scopes, expires_at, "
                    "revoked_at, previous_secret_hash, previous_valid_until, last_used_at, "
                    "created_at, updated_at) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, "
                    "$10, $11, $12)",
                    k.id, k.tenant_id, k.name, k.secret_hash, scopes_to_json(k.scopes),
                    k.expires_at, k.revoked_at, k.previous_secret_hash, k.previous_valid_until,
                    k.last_used_at, k.created_at, k.updated_at);
      w.commit();
      return k;
    });
  }

  result<api_key_record> get_key(const std::string& key_id) override {
    return with<api_key_record>([&](pqxx::connection& c) -> result<api_key_record> {
      pqxx::nontransaction n(c);
      auto r = n.exec_params(std::string(key_select) + "WHERE id = $1", key_id);
      if (r.empty())
        return store_error{persistence_errc::not_found, "key " + key_id};
      return read_key(r[0]);
    });
  }

  result<page<api_key_record>> list_keys(const std::string& tenant_id,
                                         const page_request& p) override {
    return with<page<api_key_record>>([&](pqxx::connection& c) {
      int limit = clamp_limit(p.limit);
      pqxx::nontransaction n(c);
      auto r = n.exec_params(std::string(key_select) +
                               "WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                             tenant_id, p.after, limit + 1);
      return paginate<api_key_record>(r, limit, read_key);
    });
  }

  result<api_key_record> revoke_key(const std::string& tenant_id, const std::string& key_id,
                                    millis now_ms) override {
    return with<api_key_record>([&](pqxx::connection& c) -> result<api_key_record> {
      pqxx::work w(c);
      auto r = w.exec_params(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1), "
        "updated_at = GREATEST($1, updated_at + 1) "
        "WHERE id = $2 AND tenant_id = $3 RETURNING id, tenant_id, name, secret_hash, "
        "scopes::text, expires_at, revoked_at, previous_secret_hash, previous_valid_until, "
        "last_used_at, created_at, updated_at",
        now_ms, key_id, tenant_id);
      if (r.empty())
        return store_error{persistence_errc::not_found, "key " + key_id};
      notify_invalidate(w, "key", key_id);
      w.commit();
      return read_key(r[0]);
    });
  }

  result<api_key_record> rotate_key(const std::string& tenant_id, const std::string& key_id,
                                    const std::string& new_secret_hash,
                                    std::optional<millis> previous_valid_until,
                                    millis now_ms) override {
    return with<api_key_record>([&](pqxx::connection& c) -> result<api_key_record> {
      pqxx::work w(c);
      bool keep_old = previous_valid_until && *previous_valid_until > now_ms;
      // The old hash moves to previous_secret_hash in the same statement (no read first).
      auto r = w.exec_params(
        "UPDATE api_keys SET previous_secret_hash = CASE WHEN $1 THEN secret_hash ELSE NULL END, "
        "previous_valid_until = $2, secret_hash = $3, updated_at = GREATEST($4, updated_at + 1) "
        "WHERE id = $5 AND tenant_id = $6 RETURNING id, tenant_id, name, secret_hash, "
        "scopes::text, expires_at, revoked_at, previous_secret_hash, previous_valid_until, "
        "last_used_at, created_at, updated_at",
        keep_old, keep_old ? previous_valid_until : std::optional<millis>{}, new_secret_hash,
        now_ms, key_id, tenant_id);
      if (r.empty())
        return store_error{persistence_errc::not_found, "key " + key_id};
      notify_invalidate(w, "key", key_id);
      w.commit();
      return read_key(r[0]);
    });
  }

  status touch_keys(const std::vector<std::pair<std::string, millis>>& used) override {
    return with<unit>([&](pqxx::connection& c) {
      pqxx::work w(c);
      for (auto& [id, at] : used)
        w.exec_params("UPDATE api_keys SET last_used_at = GREATEST(COALESCE(last_used_at, 0), $1) "
                      "WHERE id = $2",
                      at, id);
      w.commit();
      return unit{};
    });
  }

  // -- conversation_store ---------------------------------------------------------
  result<conversation_record> create_conversation(const conversation_record& cv) override {
    return with<conversation_record>([&](pqxx::connection& c) {
      pqxx::work w(c);
      w.exec_params("INSERT INTO conversations (id, tenant_id, metadata, created_at, updated_at) "
                    "VALUES ($1, $2, $3::jsonb, $4, $5)",
                    cv.id, cv.tenant_id, cv.metadata_json.empty() ? "{}" : cv.metadata_json,
                    cv.created_at, cv.updated_at);
      w.commit();
      return cv;
    });
  }

  result<conversation_record> get_conversation(const std::string& tenant_id,
                                               const std::string& id) override {
    return with<conversation_record>([&](pqxx::connection& c) -> result<conversation_record> {
      pqxx::nontransaction n(c);
      auto r = n.exec_params("SELECT id, tenant_id, metadata::text, created_at, updated_at FROM "
                             "conversations WHERE id = $1 AND tenant_id = $2",
                             id, tenant_id);
      if (r.empty())
        return store_error{persistence_errc::not_found, "conversation " + id};
      return read_conversation(r[0]);
    });
  }

  result<page<conversation_record>> list_conversations(const std::string& tenant_id,
                                                       const page_request& p) override {
    return with<page<conversation_record>>([&](pqxx::connection& c) {
      int limit = clamp_limit(p.limit);
      pqxx::nontransaction n(c);
      auto r = n.exec_params("SELECT id, tenant_id, metadata::text, created_at, updated_at FROM "
                             "conversations WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                             tenant_id, p.after, limit + 1);
      return paginate<conversation_record>(r, limit, read_conversation);
    });
  }

  status delete_conversation(const std::string& tenant_id, const std::string& id) override {
    return with<unit>([&](pqxx::connection& c) -> status {
      pqxx::work w(c);
      w.exec_params("DELETE FROM messages WHERE conversation_id = $1 AND tenant_id = $2", id,
                    tenant_id);
      auto r = w.exec_params("DELETE FROM conversations WHERE id = $1 AND tenant_id = $2", id,
                             tenant_id);
      if (r.affected_rows() == 0)
        return store_error{persistence_errc::not_found, "conversation " + id};
      w.commit();
      return unit{};
    });
  }

  status append_messages(const std::vector<message_record>& batch) override {
    return with<unit>([&](pqxx::connection& c) -> status {
      pqxx::work w(c);
      auto r = write_messages(w, batch);
      if (!r.ok())
        return r;
      w.commit();
      return unit{};
    });
  }

  result<std::vector<message_record>> list_messages(const std::string& tenant_id,
                                                    const std::string& conversation_id,
                                                    int64_t after_seq, int limit) override {
    return with<std::vector<message_record>>(
      [&](pqxx::connection& c) -> result<std::vector<message_record>> {
        pqxx::nontransaction n(c);
        auto owner = n.exec_params("SELECT 1 FROM conversations WHERE id = $1 AND tenant_id = $2",
                                   conversation_id, tenant_id);
        if (owner.empty())
          return store_error{persistence_errc::not_found, "conversation " + conversation_id};
        auto r = n.exec_params(
          "SELECT conversation_id, tenant_id, seq, role, content::text, prompt_tokens, "
          "completion_tokens, created_at FROM messages WHERE conversation_id = $1 AND "
          "tenant_id = $2 AND seq > $3 ORDER BY seq LIMIT $4",
          conversation_id, tenant_id, after_seq, limit < 1 ? 1 : limit);
        std::vector<message_record> rows;
        for (const auto& row : r)
          rows.push_back({row[0].as<std::string>(), row[1].as<std::string>(),
                          row[2].as<int64_t>(), row[3].as<std::string>(),
                          row[4].as<std::string>(), row[5].as<int64_t>(), row[6].as<int64_t>(),
                          row[7].as<int64_t>()});
        return rows;
      });
  }

  /// Inserts `batch` (inside the caller's transaction): each seq must be the next free one.
  static status write_messages(pqxx::work& w, const std::vector<message_record>& batch) {
    std::unordered_map<std::string, int64_t> next;
    for (auto& m : batch) {
      auto it = next.find(m.conversation_id);
      if (it == next.end()) {
        // FOR UPDATE serializes appenders of one conversation across nodes.
        auto r = w.exec_params(
          "SELECT (SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conversation_id = $1) "
          "FROM conversations WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
          m.conversation_id, m.tenant_id);
        if (r.empty())
          return store_error{persistence_errc::not_found, "conversation " + m.conversation_id};
        it = next.emplace(m.conversation_id, r[0][0].as<int64_t>() + 1).first;
      }
      if (m.seq != it->second)
        return store_error{persistence_errc::conflict,
                           "seq " + std::to_string(m.seq) + " is not the next (" +
                             std::to_string(it->second) + ") of " + m.conversation_id};
      ++it->second;
      w.exec_params("INSERT INTO messages (conversation_id, tenant_id, seq, role, content, "
                    "prompt_tokens, completion_tokens, created_at) VALUES ($1, $2, $3, $4, "
                    "$5::jsonb, $6, $7, $8)",
                    m.conversation_id, m.tenant_id, m.seq, m.role, m.content_json,
                    m.prompt_tokens, m.completion_tokens, m.created_at);
      w.exec_params("UPDATE conversations SET updated_at = GREATEST(updated_at, $1) WHERE id = $2",
                    m.created_at, m.conversation_id);
    }
    return unit{};
  }

  /// Inserts ledger rows not there yet and adds each new one to its rollup row, in one
  /// statement per row (inside the caller's transaction).
  static void write_usage(pqxx::work& w, const std::vector<usage_entry>& entries) {
    for (auto& e : entries)
      w.exec_params(
        "WITH fresh AS (INSERT INTO usage_ledger (request_id, attempt, tenant_id, key_id, model, "
        "served_model, deployment, prompt_tokens, completion_tokens, outcome, upstream_status, at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
        "ON CONFLICT (request_id, attempt) DO NOTHING RETURNING 1) "
        "INSERT INTO usage (tenant_id, key_id, model, period_start, requests, prompt_tokens, "
        "completion_tokens, errors) SELECT $3, $4, $5, $13::bigint, 1, $8, $9, $14::bigint FROM fresh "
        "ON CONFLICT (tenant_id, key_id, model, period_start) DO UPDATE SET "
        "requests = usage.requests + 1, "
        "prompt_tokens = usage.prompt_tokens + EXCLUDED.prompt_tokens, "
        "completion_tokens = usage.completion_tokens + EXCLUDED.completion_tokens, "
        "errors = usage.errors + EXCLUDED.errors",
        e.request_id, e.attempt, e.tenant_id, e.key_id, e.model, e.served_model, e.deployment,
        e.prompt_tokens, e.completion_tokens, e.outcome, e.upstream_status, e.at,
        e.at / 60000 * 60000, int64_t{e.outcome == "ok" ? 0 : 1});
  }

  // -- usage_store ----------------------------------------------------------------
  status record_usage(const std::vector<usage_entry>& entries) override {
    return with<unit>([&](pqxx::connection& c) -> status {
      pqxx::work w(c);
      write_usage(w, entries);
      w.commit();
      return unit{};
    });
  }

  status write_turns(const std::vector<turn_write>& batch) override {
    return with<unit>([&](pqxx::connection& c) -> status {
      pqxx::work w(c);
      std::vector<message_record> msgs;
      for (auto& t : batch)
        msgs.insert(msgs.end(), t.messages.begin(), t.messages.end());
      auto r = write_messages(w, msgs);
      if (!r.ok())
        return r;
      for (auto& t : batch)
        write_usage(w, t.usage);
      w.commit();
      return unit{};
    });
  }

  result<std::vector<usage_entry>> list_usage_entries(const std::string& tenant_id, millis from,
                                                      millis to, int limit) override {
    return with<std::vector<usage_entry>>([&](pqxx::connection& c) {
      pqxx::nontransaction n(c);
      auto r = n.exec_params(
        "SELECT request_id, attempt, tenant_id, key_id, model, served_model, deployment, "
        "prompt_tokens, completion_tokens, outcome, upstream_status, at FROM usage_ledger "
        "WHERE tenant_id = $1 AND at >= $2 AND at < $3 ORDER BY at, request_id, attempt LIMIT $4",
        tenant_id, from, to, limit < 1 ? 1 : limit);
      std::vector<usage_entry> rows;
      for (const auto& row : r)
        rows.push_back({row[0].as<std::string>(), row[1].as<int32_t>(), row[2].as<std::string>(),
                        row[3].as<std::string>(), row[4].as<std::string>(),
                        row[5].as<std::string>(), row[6].as<std::string>(), row[7].as<int64_t>(),
                        row[8].as<int64_t>(), row[9].as<std::string>(), row[10].as<int32_t>(),
                        row[11].as<int64_t>()});
      return rows;
    });
  }

  result<std::vector<usage_row>> query_usage(const std::string& tenant_id, millis from,
                                             millis to) override {
    return with<std::vector<usage_row>>([&](pqxx::connection& c) {
      pqxx::nontransaction n(c);
      auto r = n.exec_params(
        "SELECT tenant_id, key_id, model, period_start, requests, prompt_tokens, "
        "completion_tokens, errors FROM usage WHERE tenant_id = $1 AND period_start >= $2 AND "
        "period_start < $3 ORDER BY period_start, key_id, model",
        tenant_id, from, to);
      std::vector<usage_row> rows;
      for (const auto& row : r)
        rows.push_back({row[0].as<std::string>(), row[1].as<std::string>(),
                        row[2].as<std::string>(), row[3].as<int64_t>(), row[4].as<int64_t>(),
                        row[5].as<int64_t>(), row[6].as<int64_t>(), row[7].as<int64_t>()});
      return rows;
    });
  }

  // -- audit_store ----------------------------------------------------------------
  status append_audit(const audit_record& a) override {
    return with<unit>([&](pqxx::connection& c) {
      pqxx::work w(c);
      w.exec_params("INSERT INTO audit_log (id, at, actor, action, target, tenant_id, request_id, "
                    "details) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)",
                    a.id, a.at, a.actor, a.action, a.target, a.tenant_id, a.request_id,
                    a.details_json.empty() ? "{}" : a.details_json);
      w.commit();
      return unit{};
    });
  }

  result<page<audit_record>> list_audit(const audit_filter& f, const page_request& p) override {
    return with<page<audit_record>>([&](pqxx::connection& c) {
      int limit = clamp_limit(p.limit);
      pqxx::nontransaction n(c);
      auto r = n.exec_params(
        "SELECT id, at, actor, action, target, tenant_id, request_id, details::text FROM "
        "audit_log WHERE id > $1 AND ($2 = '' OR tenant_id = $2) AND ($3 = '' OR action = $3) "
        "AND at >= $4 AND at < $5 ORDER BY id LIMIT $6",
        p.after, f.tenant_id, f.action, f.since.value_or(0),
        f.until.value_or(std::numeric_limits<int64_t>::max()), limit + 1);
      return paginate<audit_record>(r, limit, [](const pqxx::row& row) {
        return audit_record{row[0].as<std::string>(), row[1].as<int64_t>(),
                            row[2].as<std::string>(), row[3].as<std::string>(),
                            row[4].as<std::string>(), row[5].as<std::string>(),
                            row[6].as<std::string>(), row[7].as<std::string>()};
      });
    });
  }

  // -- cluster_store --------------------------------------------------------------
  static node_lease read_lease(const pqxx::row& r) {
    return {r[0].as<int64_t>(), r[1].as<int64_t>(), r[2].as<int64_t>()};
  }

  result<node_lease> join_node(const std::string& node_id, const std::string& address,
                               const std::string& http_address, int64_t ttl_ms) override {
    return with<node_lease>([&](pqxx::connection& c) {
      pqxx::work w(c);
      auto r = w.exec_params(
        "INSERT INTO nodes (id, incarnation, address, http_address, status, lease_expires_at, "
        "joined_at, updated_at) VALUES ($1, 1, $2, $3, 'active', " PARLEY_PG_NOW " + $4, "
        PARLEY_PG_NOW ", " PARLEY_PG_NOW ") "
        "ON CONFLICT (id) DO UPDATE SET incarnation = nodes.incarnation + 1, "
        "address = excluded.address, http_address = excluded.http_address, status = 'active', "
        "lease_expires_at = excluded.lease_expires_at, joined_at = excluded.joined_at, "
        "updated_at = excluded.updated_at "
        // A live incarnation is never replaced: a second process started with the same node
        // id (or a restart before the crashed one's lease ran out) waits for it to go.
        "WHERE NOT " PARLEY_PG_LIVE("nodes") " "
        "RETURNING incarnation, lease_expires_at, updated_at",
        node_id, address, http_address, ttl_ms);
      if (r.empty()) {
        auto live = w.exec_params(
          "SELECT incarnation, address, lease_expires_at - " PARLEY_PG_NOW " FROM nodes WHERE id = $1",
          node_id);
        w.commit();
        std::string detail = "node id " + node_id + " is in use by a live incarnation";
        if (!live.empty())
          detail += " (" + live[0][0].as<std::string>() + " at " + live[0][1].as<std::string>() +
                    ", its lease ends in " + live[0][2].as<std::string>() + " ms)";
        return result<node_lease>(store_error{persistence_errc::conflict, detail});
      }
      w.commit();
      return result<node_lease>(read_lease(r[0]));
    });
  }

  result<node_lease> renew_lease(const std::string& node_id, int64_t incarnation,
                                 int64_t ttl_ms) override {
    return with<node_lease>([&](pqxx::connection& c) -> result<node_lease> {
      pqxx::work w(c);
      auto r = w.exec_params(
        "UPDATE nodes SET lease_expires_at = " PARLEY_PG_NOW " + $3, updated_at = " PARLEY_PG_NOW
        " WHERE id = $1 AND incarnation = $2 AND " PARLEY_PG_LIVE("nodes")
        " RETURNING incarnation, lease_expires_at, updated_at",
        node_id, incarnation, ttl_ms);
      w.commit();
      if (r.empty())
        return store_error{persistence_errc::conflict,
                           "node " + node_id + " incarnation " + std::to_string(incarnation) +
                             " holds no live lease"};
      return read_lease(r[0]);
    });
  }

  status set_node_status(const std::string& node_id, int64_t incarnation,
                         const std::string& to) override {
    if (to != "active" && to != "draining" && to != "left")
      return store_error{persistence_errc::invalid, "node status " + to};
    return with<unit>([&](pqxx::connection& c) -> status {
      pqxx::work w(c);
      auto r = w.exec_params(
        "UPDATE nodes SET status = $3, updated_at = " PARLEY_PG_NOW ", lease_expires_at = "
        "CASE WHEN $3 = 'left' THEN LEAST(lease_expires_at, " PARLEY_PG_NOW ") "
        "ELSE lease_expires_at END WHERE id = $1 AND incarnation = $2 AND status <> 'left'",
        node_id, incarnation, to);
      w.commit();
      if (r.affected_rows() == 0)
        return store_error{persistence_errc::conflict,
                           "node " + node_id + " incarnation " + std::to_string(incarnation) +
                             " is not current"};
      return unit{};
    });
  }

  result<std::vector<node_record>> list_nodes() override {
    return with<std::vector<node_record>>([](pqxx::connection& c) {
      pqxx::nontransaction n(c);
      auto rows = n.exec("SELECT id, incarnation, address, http_address, status, "
                         "lease_expires_at, joined_at, updated_at, " PARLEY_PG_LIVE("nodes")
                         ", " PARLEY_PG_NOW " FROM nodes ORDER BY id");
      std::vector<node_record> out;
      for (const auto& r : rows)
        out.push_back({r[0].as<std::string>(), r[1].as<int64_t>(), r[2].as<std::string>(),
                       r[3].as<std::string>(), r[4].as<std::string>(), r[5].as<int64_t>(),
                       r[6].as<int64_t>(), r[7].as<int64_t>(), r[8].as<bool>(),
                       r[9].as<int64_t>()});
      return out;
    });
  }

  static tenant_owner read_owner(const pqxx::row& r) {
    return {r[0].as<std::string>(), r[1].as<std::string>(), r[2].as<int64_t>(),
            r[3].as<int64_t>(), r[4].as<int64_t>(), r[5].as<bool>(), r[6].as<std::string>()};
  }

  static constexpr const char* owner_select =
    "SELECT o.tenant_id, o.node_id, o.incarnation, o.epoch, o.claimed_at, EXISTS (SELECT 1 "
    "FROM nodes n WHERE n.id = o.node_id AND n.incarnation = o.incarnation AND "
    PARLEY_PG_LIVE("n") "), COALESCE((SELECT n.address FROM nodes n WHERE n.id = o.node_id), '') "
    "FROM tenant_owners o WHERE o.tenant_id = $1";

  result<claim_result> claim_tenant(const std::string& tenant_id, const std::string& node_id,
                                    int64_t incarnation) override {
    return with<claim_result>([&](pqxx::connection& c) -> result<claim_result> {
      pqxx::work w(c);
      // The claim, and what a refused one answers, may each see an owner's lease end between
      // the two statements: then we try again (twice more at most; it settles at once).
      for (int attempt = 0; attempt < 3; ++attempt) {
        // One statement: concurrent claims of one tenant serialize on its row, and each
        // re-checks the owner it finds there (READ COMMITTED re-evaluates ON CONFLICT's WHERE).
        auto r = w.exec_params(
          "INSERT INTO tenant_owners (tenant_id, node_id, incarnation, epoch, claimed_at) "
          "SELECT $1, $2, $3, 1, " PARLEY_PG_NOW " WHERE EXISTS (SELECT 1 FROM nodes n WHERE "
          "n.id = $2 AND n.incarnation = $3 AND n.status = 'active' AND n.lease_expires_at > "
          PARLEY_PG_NOW ") "
          "ON CONFLICT (tenant_id) DO UPDATE SET node_id = excluded.node_id, "
          "incarnation = excluded.incarnation, "
          "epoch = CASE WHEN tenant_owners.node_id = excluded.node_id AND "
          "tenant_owners.incarnation = excluded.incarnation THEN tenant_owners.epoch "
          "ELSE tenant_owners.epoch + 1 END, "
          "claimed_at = CASE WHEN tenant_owners.node_id = excluded.node_id AND "
          "tenant_owners.incarnation = excluded.incarnation THEN tenant_owners.claimed_at "
          "ELSE excluded.claimed_at END "
          "WHERE (tenant_owners.node_id = excluded.node_id AND "
          "tenant_owners.incarnation = excluded.incarnation) OR NOT EXISTS (SELECT 1 FROM nodes n "
          "WHERE n.id = tenant_owners.node_id AND n.incarnation = tenant_owners.incarnation AND "
          PARLEY_PG_LIVE("n") ") "
          "RETURNING tenant_id, node_id, incarnation, epoch, claimed_at, true, ''",
          tenant_id, node_id, incarnation);
        if (!r.empty()) {
          w.commit();
          return claim_result{true, read_owner(r[0])};
        }
        // Refused. Another incarnation that holds a live lease owns it: that is the answer
        // (also to a claimer without a live, active lease of its own: it learns where the
        // tenant is served).
        auto cur = w.exec_params(owner_select, tenant_id);
        if (!cur.empty()) {
          auto owner = read_owner(cur[0]);
          if (owner.live && !(owner.node_id == node_id && owner.incarnation == incarnation)) {
            w.commit();
            return claim_result{false, std::move(owner)};
          }
        }
        // Nobody else holds it live (never claimed, its owner left or expired, or it is ours):
        // the claim was refused because our own lease is not live and active. Never answer a
        // dead owner as if it served the tenant.
        auto held = w.exec_params(
          "SELECT EXISTS (SELECT 1 FROM nodes n WHERE n.id = $1 AND n.incarnation = $2 AND "
          "n.status = 'active' AND n.lease_expires_at > " PARLEY_PG_NOW ")",
          node_id, incarnation);
        if (!held[0][0].as<bool>()) {
          w.commit();
          return store_error{persistence_errc::conflict,
                             "node " + node_id + " incarnation " + std::to_string(incarnation) +
                               " holds no live, active lease"};
        }
      }
      return store_error{persistence_errc::internal,
                         "the claim of tenant " + tenant_id + " did not settle"};
    });
  }

  result<tenant_owner> get_owner(const std::string& tenant_id) override {
    return with<tenant_owner>([&](pqxx::connection& c) -> result<tenant_owner> {
      pqxx::nontransaction n(c);
      auto r = n.exec_params(owner_select, tenant_id);
      if (r.empty())
        return store_error{persistence_errc::not_found, "owner of tenant " + tenant_id};
      return read_owner(r[0]);
    });
  }

  result<std::vector<std::pair<std::string, int64_t>>> owned_counts() override {
    return with<std::vector<std::pair<std::string, int64_t>>>([](pqxx::connection& c) {
      pqxx::nontransaction n(c);
      auto rows = n.exec("SELECT o.node_id, count(*) FROM tenant_owners o JOIN nodes n ON "
                         "n.id = o.node_id AND n.incarnation = o.incarnation AND "
                         PARLEY_PG_LIVE("n") " GROUP BY o.node_id ORDER BY o.node_id");
      std::vector<std::pair<std::string, int64_t>> out;
      for (const auto& r : rows)
        out.emplace_back(r[0].as<std::string>(), r[1].as<int64_t>());
      return out;
    });
  }

private:
  /// Tells every node that cached rows of `kind` ("key" or "tenant") `id` changed: a NOTIFY
  /// on the invalidation channel inside the writing transaction, so it is delivered if and
  /// only if the change commits, and after it.
  static void notify_invalidate(pqxx::work& w, const char* kind, const std::string& id) {
    w.exec_params("SELECT pg_notify($1, $2)", std::string(invalidation_channel),
                  std::string(kind) + ":" + id);
  }

  template <class Tx>
  static std::unordered_set<int> applied_versions(Tx& tx) {
    std::unordered_set<int> out;
    for (const auto& row : tx.exec("SELECT version FROM schema_migrations"))
      out.insert(row[0].template as<int>());
    return out;
  }

  /// Borrows a connection and runs `fn`, turning every failure into a store_error value.
  /// A connection that broke is dropped from the pool, so the next call opens a fresh one
  /// (possibly to a new primary, with multi-host connection strings).
  template <class T, class Fn>
  result<T> with(Fn&& fn) {
    auto acquired = pool_.acquire();
    if (!acquired.ok())
      return acquired.error();
    auto& lease = **acquired;
    try {
      if (!lease->is_open()) {
        lease.mark_broken();
        return store_error{persistence_errc::unavailable, "connection closed"};
      }
      return result<T>(fn(*lease));
    } catch (const pqxx::broken_connection& e) {
      lease.mark_broken();
      return store_error{persistence_errc::unavailable, e.what()};
    } catch (const pqxx::sql_error& e) {
      auto err = classify(e);
      if (err.code == persistence_errc::unavailable)
        lease.mark_broken();
      return err;
    } catch (const pqxx::in_doubt_error& e) {
      lease.mark_broken();
      return store_error{persistence_errc::unavailable, e.what()};
    } catch (const std::exception& e) {
      return store_error{persistence_errc::internal, e.what()};
    }
  }

  connection_pool<pqxx::connection> pool_;
};

} // namespace

std::unique_ptr<store> open_postgres_store(const config::store_settings& s) {
  return std::make_unique<pg_store>(s);
}

} // namespace parley::persistence
