// The SQLite store: the embedded single-node default. One file, WAL mode (readers never block
// the writer), synchronous=FULL (an acknowledged commit survives a crash), a bounded pool of
// connections, prepared statements cached per connection, every write in BEGIN IMMEDIATE.
#include "migrations.hpp"
#include "parley/persistence/ids.hpp"
#include "parley/persistence/open.hpp"
#include "pool.hpp"

#include <nlohmann/json.hpp>
#include <sqlite3.h>

#include <algorithm>
#include <filesystem>
#include <stdexcept>
#include <unordered_map>

namespace parley::persistence {
namespace {

using detail::connection_pool;

/// Thrown inside this file only; every store method converts it into a store_error.
struct sqlite_failure {
  int code;
  std::string message;
};

class connection {
public:
  connection(const std::string& path, int busy_timeout_ms, bool full_sync) {
    int rc = sqlite3_open_v2(path.c_str(), &db_,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             nullptr);
    if (rc != SQLITE_OK) {
      std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      db_ = nullptr;
      throw std::runtime_error("cannot open SQLite database " + path + ": " + msg);
    }
    sqlite3_extended_result_codes(db_, 1);
    sqlite3_busy_timeout(db_, busy_timeout_ms);
    exec("PRAGMA journal_mode=WAL");
    // WAL + NORMAL: a commit is in the WAL file (the page cache) before it returns, so it
    // survives parley crashing; fsync happens at checkpoints. FULL fsyncs every commit.
    exec(full_sync ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
    exec("PRAGMA foreign_keys=ON");
  }
  ~connection() {
    for (auto& [sql, st] : cache_)
      sqlite3_finalize(st);
    sqlite3_close(db_);
  }
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  void exec(const std::string& sql) {
    char* err = nullptr;
    int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err);
    if (rc != SQLITE_OK) {
      std::string msg = err ? err : sqlite3_errstr(rc);
      sqlite3_free(err);
      throw sqlite_failure{rc, msg};
    }
  }

  /// A cached prepared statement, reset and unbound. `sql` has static storage (stmt only takes
  /// string literals), so its address is the cache key: no hashing of the text per call.
  sqlite3_stmt* prepare(const char* sql) {
    auto it = cache_.find(sql);
    if (it != cache_.end()) {
      sqlite3_reset(it->second);
      sqlite3_clear_bindings(it->second);
      return it->second;
    }
    sqlite3_stmt* st = nullptr;
    int rc = sqlite3_prepare_v2(db_, sql, -1, &st, nullptr);
    if (rc != SQLITE_OK)
      throw sqlite_failure{rc, sqlite3_errmsg(db_)};
    cache_.emplace(sql, st);
    return st;
  }

  sqlite3* db() { return db_; }
  int changes() { return sqlite3_changes(db_); }

private:
  sqlite3* db_ = nullptr;
  std::unordered_map<const char*, sqlite3_stmt*> cache_;
};

/// Binds and steps one statement.
class stmt {
public:
  /// Only literals (arrays with static storage): the statement cache keys on their address.
  template <std::size_t N>
  stmt(connection& c, const char (&sql)[N]) : c_(c), st_(c.prepare(sql)) {}
  ~stmt() { sqlite3_reset(st_); }

  stmt& bind(const std::string& v) {
    check(sqlite3_bind_text(st_, ++idx_, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
    return *this;
  }
  stmt& bind(const char* v) { return bind(std::string(v)); }
  stmt& bind(int64_t v) {
    check(sqlite3_bind_int64(st_, ++idx_, v));
    return *this;
  }
  stmt& bind(int v) { return bind(static_cast<int64_t>(v)); }
  stmt& bind(const std::optional<int64_t>& v) {
    if (v)
      return bind(*v);
    check(sqlite3_bind_null(st_, ++idx_));
    return *this;
  }
  stmt& bind(const std::optional<std::string>& v) {
    if (v)
      return bind(*v);
    check(sqlite3_bind_null(st_, ++idx_));
    return *this;
  }

  /// True when a row is available.
  bool step() {
    int rc = sqlite3_step(st_);
    if (rc == SQLITE_ROW)
      return true;
    if (rc == SQLITE_DONE)
      return false;
    throw sqlite_failure{rc, sqlite3_errmsg(c_.db())};
  }
  void run() {
    while (step()) {
    }
  }

  std::string text(int i) {
    auto p = sqlite3_column_text(st_, i);
    return p ? std::string(reinterpret_cast<const char*>(p),
                           static_cast<std::size_t>(sqlite3_column_bytes(st_, i)))
             : std::string();
  }
  int64_t i64(int i) { return sqlite3_column_int64(st_, i); }
  std::optional<int64_t> opt_i64(int i) {
    if (sqlite3_column_type(st_, i) == SQLITE_NULL)
      return std::nullopt;
    return i64(i);
  }
  std::optional<std::string> opt_text(int i) {
    if (sqlite3_column_type(st_, i) == SQLITE_NULL)
      return std::nullopt;
    return text(i);
  }

private:
  void check(int rc) {
    if (rc != SQLITE_OK)
      throw sqlite_failure{rc, sqlite3_errmsg(c_.db())};
  }
  connection& c_;
  sqlite3_stmt* st_;
  int idx_ = 0;
};

/// BEGIN IMMEDIATE ... COMMIT, rolled back unless committed.
class transaction {
public:
  // Prepared once per connection, like every other statement (sqlite3_exec parses each time).
  explicit transaction(connection& c) : c_(c) { stmt(c_, "BEGIN IMMEDIATE").run(); }
  ~transaction() {
    if (!done_) {
      try {
        stmt(c_, "ROLLBACK").run();
      } catch (...) {
      }
    }
  }
  void commit() {
    stmt(c_, "COMMIT").run();
    done_ = true;
  }

private:
  connection& c_;
  bool done_ = false;
};

store_error to_error(const sqlite_failure& f) {
  int primary = f.code & 0xff;
  if (f.code == SQLITE_CONSTRAINT_UNIQUE || f.code == SQLITE_CONSTRAINT_PRIMARYKEY)
    return {persistence_errc::conflict, f.message};
  if (f.code == SQLITE_CONSTRAINT_FOREIGNKEY)
    return {persistence_errc::not_found, f.message};
  if (primary == SQLITE_CONSTRAINT)
    return {persistence_errc::invalid, f.message};
  if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED)
    return {persistence_errc::timeout, f.message};
  if (primary == SQLITE_CANTOPEN || primary == SQLITE_IOERR || primary == SQLITE_FULL ||
      primary == SQLITE_READONLY)
    return {persistence_errc::unavailable, f.message};
  return {persistence_errc::internal, f.message};
}

std::string scopes_to_json(const std::vector<std::string>& s) { return nlohmann::json(s).dump(); }
std::vector<std::string> scopes_from_json(const std::string& s) {
  auto j = nlohmann::json::parse(s, nullptr, false);
  if (!j.is_array())
    return {};
  return j.get<std::vector<std::string>>();
}

constexpr const char* tenant_cols = "id, slug, name, status, config, created_at, updated_at";
constexpr const char* key_cols =
  "id, tenant_id, name, secret_hash, scopes, expires_at, revoked_at, previous_secret_hash, "
  "previous_valid_until, last_used_at, created_at, updated_at";

tenant_record read_tenant(stmt& s) {
  return {s.text(0), s.text(1), s.text(2), s.text(3), s.text(4), s.i64(5), s.i64(6)};
}

api_key_record read_key(stmt& s) {
  api_key_record k;
  k.id = s.text(0);
  k.tenant_id = s.text(1);
  k.name = s.text(2);
  k.secret_hash = s.text(3);
  k.scopes = scopes_from_json(s.text(4));
  k.expires_at = s.opt_i64(5);
  k.revoked_at = s.opt_i64(6);
  k.previous_secret_hash = s.opt_text(7);
  k.previous_valid_until = s.opt_i64(8);
  k.last_used_at = s.opt_i64(9);
  k.created_at = s.i64(10);
  k.updated_at = s.i64(11);
  return k;
}

int clamp_limit(int limit) { return limit < 1 ? 1 : limit > 1000 ? 1000 : limit; }

template <class T>
page<T> paginate(std::vector<T> rows, int limit) {
  page<T> p;
  p.has_more = static_cast<int>(rows.size()) > limit;
  if (p.has_more)
    rows.resize(static_cast<std::size_t>(limit));
  p.items = std::move(rows);
  return p;
}

class sqlite_store final : public store {
public:
  sqlite_store(std::string path, const config::store_settings& s)
    : path_(std::move(path)),
      pool_(s.pool_size, std::chrono::milliseconds(s.acquire_timeout_ms),
            [p = path_, busy = s.busy_timeout_ms, full = s.sqlite_synchronous == "full"] {
              return std::make_unique<connection>(p, busy, full);
            }) {}

  // -- store ----------------------------------------------------------------------
  const char* backend() const noexcept override { return "sqlite"; }
  int pool_in_use() const noexcept override { return pool_.in_use(); }
  int pool_size() const noexcept override { return pool_.size(); }

  status ping() override {
    return with<unit>([](connection& c) {
      stmt s(c, "SELECT 1");
      s.run();
      return unit{};
    });
  }

  result<std::vector<int>> migrate() override {
    return with<std::vector<int>>([](connection& c) {
      transaction tx(c);
      c.exec("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
             "name TEXT NOT NULL, applied_at INTEGER NOT NULL)");
      auto applied = applied_versions(c);
      std::vector<int> done;
      for (auto& m : detail::sqlite_migrations()) {
        if (applied.count(m.version))
          continue;
        c.exec(m.sql);
        stmt(c, "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)")
          .bind(m.version)
          .bind(m.name)
          .bind(now_millis())
          .run();
        done.push_back(m.version);
      }
      tx.commit();
      return done;
    });
  }

  result<std::vector<int>> pending_migrations() override {
    return with<std::vector<int>>([](connection& c) {
      std::vector<int> pending;
      stmt exists(c, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'");
      bool has_table = exists.step();
      auto applied = has_table ? applied_versions(c) : std::unordered_map<int, bool>{};
      for (auto& m : detail::sqlite_migrations())
        if (!applied.count(m.version))
          pending.push_back(m.version);
      return pending;
    });
  }

  // -- tenant_store ---------------------------------------------------------------
  result<tenant_record> create_tenant(const tenant_record& t) override {
    return with<tenant_record>([&](connection& c) {
      stmt(c, "INSERT INTO tenants (id, slug, name, status, config, created_at, updated_at) "
              "VALUES (?, ?, ?, ?, ?, ?, ?)")
        .bind(t.id).bind(t.slug).bind(t.name).bind(t.status).bind(t.config_json)
        .bind(t.created_at).bind(t.updated_at)
        .run();
      return t;
    });
  }

  result<tenant_record> get_tenant(const std::string& id) override {
    return with<tenant_record>([&](connection& c) -> result<tenant_record> {
      stmt s(c, "SELECT id, slug, name, status, config, created_at, updated_at FROM tenants WHERE id = ?");
      s.bind(id);
      if (!s.step())
        return store_error{persistence_errc::not_found, "tenant " + id};
      return read_tenant(s);
    });
  }

  result<page<tenant_record>> list_tenants(const page_request& p, bool include_deleted) override {
    return with<page<tenant_record>>([&](connection& c) {
      int limit = clamp_limit(p.limit);
      stmt s(c, "SELECT id, slug, name, status, config, created_at, updated_at FROM tenants "
                "WHERE id > ? AND (? OR status <> 'deleted') ORDER BY id LIMIT ?");
      s.bind(p.after).bind(include_deleted ? 1 : 0).bind(limit + 1);
      std::vector<tenant_record> rows;
      while (s.step())
        rows.push_back(read_tenant(s));
      return paginate(std::move(rows), limit);
    });
  }

  result<tenant_record> update_tenant(const std::string& id, const tenant_update& u,
                                      millis now_ms) override {
    return with<tenant_record>([&](connection& c) -> result<tenant_record> {
      transaction tx(c);
      stmt(c, "UPDATE tenants SET slug = COALESCE(?, slug), name = COALESCE(?, name), "
              "status = COALESCE(?, status), config = COALESCE(?, config), "
              "updated_at = MAX(?, updated_at + 1) WHERE id = ?")
        .bind(u.slug).bind(u.name).bind(u.status).bind(u.config_json).bind(now_ms).bind(id)
        .run();
      if (c.changes() == 0)
        return store_error{persistence_errc::not_found, "tenant " + id};
      stmt s(c, "SELECT id, slug, name, status, config, created_at, updated_at FROM tenants WHERE id = ?");
      s.bind(id);
      s.step();
      auto t = read_tenant(s);
      tx.commit();
      return t;
    });
  }

  // -- key_store ------------------------------------------------------------------
  result<api_key_record> create_key(const api_key_record& k) override {
    return with<api_key_record>([&](connection& c) {
      stmt(c, "INSERT INTO api_keys (id, tenant_id, name, secret_hash, scopes, expires_at, "
              "revoked_at, previous_secret_hash, previous_valid_until, last_used_at, created_at, "
              "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        .bind(k.id).bind(k.tenant_id).bind(k.name).bind(k.secret_hash)
        .bind(scopes_to_json(k.scopes)).bind(k.expires_at).bind(k.revoked_at)
        .bind(k.previous_secret_hash).bind(k.previous_valid_until).bind(k.last_used_at)
        .bind(k.created_at).bind(k.updated_at)
        .run();
      return k;
    });
  }

  result<api_key_record> get_key(const std::string& key_id) override {
    return with<api_key_record>([&](connection& c) { return load_key(c, key_id, nullptr); });
  }

  result<page<api_key_record>> list_keys(const std::string& tenant_id,
                                         const page_request& p) override {
    return with<page<api_key_record>>([&](connection& c) {
      int limit = clamp_limit(p.limit);
      stmt s(c, "SELECT id, tenant_id, name, secret_hash, scopes, expires_at, revoked_at, "
                "previous_secret_hash, previous_valid_until, last_used_at, created_at, updated_at "
                "FROM api_keys WHERE tenant_id = ? AND id > ? ORDER BY id LIMIT ?");
      s.bind(tenant_id).bind(p.after).bind(limit + 1);
      std::vector<api_key_record> rows;
      while (s.step())
        rows.push_back(read_key(s));
      return paginate(std::move(rows), limit);
    });
  }

  result<api_key_record> revoke_key(const std::string& tenant_id, const std::string& key_id,
                                    millis now_ms) override {
    return with<api_key_record>([&](connection& c) -> result<api_key_record> {
      transaction tx(c);
      stmt(c, "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?), "
              "updated_at = MAX(?, updated_at + 1) "
              "WHERE id = ? AND tenant_id = ?")
        .bind(now_ms).bind(now_ms).bind(key_id).bind(tenant_id)
        .run();
      if (c.changes() == 0)
        return store_error{persistence_errc::not_found, "key " + key_id};
      auto k = load_key(c, key_id, &tenant_id);
      tx.commit();
      return k;
    });
  }

  result<api_key_record> rotate_key(const std::string& tenant_id, const std::string& key_id,
                                    const std::string& new_secret_hash,
                                    std::optional<millis> previous_valid_until,
                                    millis now_ms) override {
    return with<api_key_record>([&](connection& c) -> result<api_key_record> {
      transaction tx(c);
      std::optional<std::string> prev_hash;
      if (previous_valid_until && *previous_valid_until > now_ms) {
        auto cur = load_key(c, key_id, &tenant_id);
        if (!cur.ok())
          return cur;
        prev_hash = cur->secret_hash;
      } else {
        previous_valid_until.reset();
      }
      stmt(c, "UPDATE api_keys SET previous_secret_hash = ?, previous_valid_until = ?, "
              "secret_hash = ?, updated_at = MAX(?, updated_at + 1) WHERE id = ? AND tenant_id = ?")
        .bind(prev_hash).bind(previous_valid_until).bind(new_secret_hash).bind(now_ms)
        .bind(key_id).bind(tenant_id)
        .run();
      if (c.changes() == 0)
        return store_error{persistence_errc::not_found, "key " + key_id};
      auto k = load_key(c, key_id, &tenant_id);
      tx.commit();
      return k;
    });
  }

  status touch_keys(const std::vector<std::pair<std::string, millis>>& used) override {
    return with<unit>([&](connection& c) {
      transaction tx(c);
      for (auto& [id, at] : used)
        stmt(c, "UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?")
          .bind(at).bind(id)
          .run();
      tx.commit();
      return unit{};
    });
  }

  // -- conversation_store ---------------------------------------------------------
  result<conversation_record> create_conversation(const conversation_record& cv) override {
    return with<conversation_record>([&](connection& c) {
      stmt(c, "INSERT INTO conversations (id, tenant_id, metadata, created_at, updated_at) "
              "VALUES (?, ?, ?, ?, ?)")
        .bind(cv.id).bind(cv.tenant_id).bind(cv.metadata_json.empty() ? "{}" : cv.metadata_json)
        .bind(cv.created_at).bind(cv.updated_at)
        .run();
      return cv;
    });
  }

  result<conversation_record> get_conversation(const std::string& tenant_id,
                                               const std::string& id) override {
    return with<conversation_record>([&](connection& c) -> result<conversation_record> {
      stmt s(c, "SELECT id, tenant_id, metadata, created_at, updated_at FROM conversations "
                "WHERE id = ? AND tenant_id = ?");
      s.bind(id).bind(tenant_id);
      if (!s.step())
        return store_error{persistence_errc::not_found, "conversation " + id};
      return conversation_record{s.text(0), s.text(1), s.text(2), s.i64(3), s.i64(4)};
    });
  }

  result<page<conversation_record>> list_conversations(const std::string& tenant_id,
                                                       const page_request& p) override {
    return with<page<conversation_record>>([&](connection& c) {
      int limit = clamp_limit(p.limit);
      stmt s(c, "SELECT id, tenant_id, metadata, created_at, updated_at FROM conversations "
                "WHERE tenant_id = ? AND id > ? ORDER BY id LIMIT ?");
      s.bind(tenant_id).bind(p.after).bind(limit + 1);
      std::vector<conversation_record> rows;
      while (s.step())
        rows.push_back({s.text(0), s.text(1), s.text(2), s.i64(3), s.i64(4)});
      return paginate(std::move(rows), limit);
    });
  }

  status delete_conversation(const std::string& tenant_id, const std::string& id) override {
    return with<unit>([&](connection& c) -> status {
      transaction tx(c);
      stmt(c, "DELETE FROM messages WHERE conversation_id = ? AND tenant_id = ?")
        .bind(id).bind(tenant_id)
        .run();
      stmt(c, "DELETE FROM conversations WHERE id = ? AND tenant_id = ?").bind(id).bind(tenant_id).run();
      if (c.changes() == 0)
        return store_error{persistence_errc::not_found, "conversation " + id};
      tx.commit();
      return unit{};
    });
  }

  status append_messages(const std::vector<message_record>& batch) override {
    return with<unit>([&](connection& c) -> status {
      transaction tx(c);
      auto r = write_messages(c, batch);
      if (!r.ok())
        return r;
      tx.commit();
      return unit{};
    });
  }

  result<std::vector<message_record>> list_messages(const std::string& tenant_id,
                                                    const std::string& conversation_id,
                                                    int64_t after_seq, int limit) override {
    return with<std::vector<message_record>>(
      [&](connection& c) -> result<std::vector<message_record>> {
        stmt owner(c, "SELECT 1 FROM conversations WHERE id = ? AND tenant_id = ?");
        owner.bind(conversation_id).bind(tenant_id);
        if (!owner.step())
          return store_error{persistence_errc::not_found, "conversation " + conversation_id};
        stmt s(c, "SELECT conversation_id, tenant_id, seq, role, content, prompt_tokens, "
                  "completion_tokens, created_at FROM messages WHERE conversation_id = ? AND "
                  "tenant_id = ? AND seq > ? ORDER BY seq LIMIT ?");
        s.bind(conversation_id).bind(tenant_id).bind(after_seq).bind(limit < 1 ? 1 : limit);
        std::vector<message_record> rows;
        while (s.step())
          rows.push_back({s.text(0), s.text(1), s.i64(2), s.text(3), s.text(4), s.i64(5),
                          s.i64(6), s.i64(7)});
        return rows;
      });
  }

  /// Inserts `batch` (inside the caller's transaction): each seq must be the next free one.
  static status write_messages(connection& c, const std::vector<message_record>& batch) {
    // Next free seq per conversation, checked against the batch (dense, in order).
    std::unordered_map<std::string, int64_t> next;
    for (auto& m : batch) {
      auto it = next.find(m.conversation_id);
      if (it == next.end()) {
        stmt s(c, "SELECT (SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conversation_id = ?) "
                  "FROM conversations WHERE id = ? AND tenant_id = ?");
        s.bind(m.conversation_id).bind(m.conversation_id).bind(m.tenant_id);
        if (!s.step())
          return store_error{persistence_errc::not_found, "conversation " + m.conversation_id};
        it = next.emplace(m.conversation_id, s.i64(0) + 1).first;
      }
      if (m.seq != it->second)
        return store_error{persistence_errc::conflict,
                           "seq " + std::to_string(m.seq) + " is not the next (" +
                             std::to_string(it->second) + ") of " + m.conversation_id};
      ++it->second;
      stmt(c, "INSERT INTO messages (conversation_id, tenant_id, seq, role, content, "
              "prompt_tokens, completion_tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        .bind(m.conversation_id).bind(m.tenant_id).bind(m.seq).bind(m.role).bind(m.content_json)
        .bind(m.prompt_tokens).bind(m.completion_tokens).bind(m.created_at)
        .run();
      stmt(c, "UPDATE conversations SET updated_at = MAX(updated_at, ?) WHERE id = ?")
        .bind(m.created_at).bind(m.conversation_id)
        .run();
    }
    return unit{};
  }

  /// The rollup rows a batch of ledger rows adds to, summed before they are written: a group
  /// commit of N requests of one tenant, key and model costs one upsert, not N.
  struct rollup_key {
    const std::string *tenant_id, *key_id, *model;
    int64_t period_start;
    bool operator==(const rollup_key& o) const {
      return period_start == o.period_start && *tenant_id == *o.tenant_id &&
             *key_id == *o.key_id && *model == *o.model;
    }
  };
  struct rollup_sum {
    int64_t requests = 0, prompt_tokens = 0, completion_tokens = 0, errors = 0;
  };
  using rollups = std::vector<std::pair<rollup_key, rollup_sum>>;

  /// Inserts the ledger rows not there yet and adds each new one to `sums` (inside the
  /// caller's transaction; `entries` must outlive `sums`).
  static void insert_ledger_rows(connection& c, const std::vector<usage_entry>& entries,
                                 rollups& sums) {
    for (auto& e : entries) {
      stmt(c, "INSERT INTO usage_ledger (request_id, attempt, tenant_id, key_id, model, "
              "served_model, deployment, prompt_tokens, completion_tokens, outcome, "
              "upstream_status, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
              "ON CONFLICT (request_id, attempt) DO NOTHING")
        .bind(e.request_id).bind(int64_t{e.attempt}).bind(e.tenant_id).bind(e.key_id)
        .bind(e.model).bind(e.served_model).bind(e.deployment).bind(e.prompt_tokens)
        .bind(e.completion_tokens).bind(e.outcome).bind(int64_t{e.upstream_status}).bind(e.at)
        .run();
      if (c.changes() == 0)
        continue; // recorded before: a retried write
      rollup_key k{&e.tenant_id, &e.key_id, &e.model, e.at / 60000 * 60000};
      auto it = std::find_if(sums.begin(), sums.end(), [&](auto& p) { return p.first == k; });
      if (it == sums.end())
        it = sums.insert(sums.end(), {k, rollup_sum{}});
      it->second.requests += 1;
      it->second.prompt_tokens += e.prompt_tokens;
      it->second.completion_tokens += e.completion_tokens;
      it->second.errors += e.outcome == "ok" ? 0 : 1;
    }
  }

  static void write_rollups(connection& c, const rollups& sums) {
    for (auto& [k, v] : sums)
      stmt(c, "INSERT INTO usage (tenant_id, key_id, model, period_start, requests, "
              "prompt_tokens, completion_tokens, errors) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
              "ON CONFLICT (tenant_id, key_id, model, period_start) DO UPDATE SET "
              "requests = requests + excluded.requests, "
              "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
              "completion_tokens = completion_tokens + excluded.completion_tokens, "
              "errors = errors + excluded.errors")
        .bind(*k.tenant_id).bind(*k.key_id).bind(*k.model).bind(k.period_start)
        .bind(v.requests).bind(v.prompt_tokens).bind(v.completion_tokens).bind(v.errors)
        .run();
  }

  // -- usage_store ----------------------------------------------------------------
  status record_usage(const std::vector<usage_entry>& entries) override {
    return with<unit>([&](connection& c) -> status {
      transaction tx(c);
      rollups sums;
      insert_ledger_rows(c, entries, sums);
      write_rollups(c, sums);
      tx.commit();
      return unit{};
    });
  }

  status write_turns(const std::vector<turn_write>& batch) override {
    return with<unit>([&](connection& c) -> status {
      transaction tx(c);
      std::vector<message_record> msgs;
      for (auto& w : batch)
        msgs.insert(msgs.end(), w.messages.begin(), w.messages.end());
      auto r = write_messages(c, msgs);
      if (!r.ok())
        return r;
      rollups sums;
      for (auto& w : batch)
        insert_ledger_rows(c, w.usage, sums);
      write_rollups(c, sums);
      tx.commit();
      return unit{};
    });
  }

  result<std::vector<usage_entry>> list_usage_entries(const std::string& tenant_id, millis from,
                                                      millis to, int limit) override {
    return with<std::vector<usage_entry>>([&](connection& c) {
      stmt s(c, "SELECT request_id, attempt, tenant_id, key_id, model, served_model, deployment, "
                "prompt_tokens, completion_tokens, outcome, upstream_status, at FROM usage_ledger "
                "WHERE tenant_id = ? AND at >= ? AND at < ? ORDER BY at, request_id, attempt "
                "LIMIT ?");
      s.bind(tenant_id).bind(from).bind(to).bind(limit < 1 ? 1 : limit);
      std::vector<usage_entry> rows;
      while (s.step())
        rows.push_back({s.text(0), static_cast<int32_t>(s.i64(1)), s.text(2), s.text(3),
                        s.text(4), s.text(5), s.text(6), s.i64(7), s.i64(8), s.text(9),
                        static_cast<int32_t>(s.i64(10)), s.i64(11)});
      return rows;
    });
  }

  result<std::vector<usage_row>> query_usage(const std::string& tenant_id, millis from,
                                             millis to) override {
    return with<std::vector<usage_row>>([&](connection& c) {
      stmt s(c, "SELECT tenant_id, key_id, model, period_start, requests, prompt_tokens, "
                "completion_tokens, errors FROM usage WHERE tenant_id = ? AND period_start >= ? "
                "AND period_start < ? ORDER BY period_start, key_id, model");
      s.bind(tenant_id).bind(from).bind(to);
      std::vector<usage_row> rows;
      while (s.step())
        rows.push_back({s.text(0), s.text(1), s.text(2), s.i64(3), s.i64(4), s.i64(5), s.i64(6),
                        s.i64(7)});
      return rows;
    });
  }

  // -- audit_store ----------------------------------------------------------------
  status append_audit(const audit_record& a) override {
    return with<unit>([&](connection& c) {
      stmt(c, "INSERT INTO audit_log (id, at, actor, action, target, tenant_id, request_id, "
              "details) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        .bind(a.id).bind(a.at).bind(a.actor).bind(a.action).bind(a.target).bind(a.tenant_id)
        .bind(a.request_id).bind(a.details_json.empty() ? "{}" : a.details_json)
        .run();
      return unit{};
    });
  }

  result<page<audit_record>> list_audit(const audit_filter& f, const page_request& p) override {
    return with<page<audit_record>>([&](connection& c) {
      int limit = clamp_limit(p.limit);
      stmt s(c, "SELECT id, at, actor, action, target, tenant_id, request_id, details FROM "
                "audit_log WHERE id > ? AND (? = '' OR tenant_id = ?) AND (? = '' OR action = ?) "
                "AND at >= ? AND at < ? ORDER BY id LIMIT ?");
      s.bind(p.after).bind(f.tenant_id).bind(f.tenant_id).bind(f.action).bind(f.action)
        .bind(f.since.value_or(0)).bind(f.until.value_or(INT64_MAX)).bind(limit + 1);
      std::vector<audit_record> rows;
      while (s.step())
        rows.push_back({s.text(0), s.i64(1), s.text(2), s.text(3), s.text(4), s.text(5), s.text(6),
                        s.text(7)});
      return paginate(std::move(rows), limit);
    });
  }

private:
  static std::unordered_map<int, bool> applied_versions(connection& c) {
    std::unordered_map<int, bool> out;
    stmt s(c, "SELECT version FROM schema_migrations");
    while (s.step())
      out[static_cast<int>(s.i64(0))] = true;
    return out;
  }

  static result<api_key_record> load_key(connection& c, const std::string& key_id,
                                         const std::string* tenant_id) {
    stmt s(c, "SELECT id, tenant_id, name, secret_hash, scopes, expires_at, revoked_at, "
              "previous_secret_hash, previous_valid_until, last_used_at, created_at, updated_at "
              "FROM api_keys WHERE id = ?");
    s.bind(key_id);
    if (!s.step())
      return store_error{persistence_errc::not_found, "key " + key_id};
    auto k = read_key(s);
    if (tenant_id && k.tenant_id != *tenant_id)
      return store_error{persistence_errc::not_found, "key " + key_id};
    return k;
  }

  /// Borrows a connection and runs `fn`, turning every failure into a store_error value.
  template <class T, class Fn>
  result<T> with(Fn&& fn) {
    auto lease = pool_.acquire();
    if (!lease.ok())
      return lease.error();
    try {
      return result<T>(fn(***lease));
    } catch (const sqlite_failure& f) {
      return to_error(f);
    } catch (const std::exception& e) {
      return store_error{persistence_errc::internal, e.what()};
    }
  }

  std::string path_;
  connection_pool<connection> pool_;
};

} // namespace

std::unique_ptr<store> open_sqlite_store(const std::string& path, const config::store_settings& s) {
  auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty())
    std::filesystem::create_directories(parent);
  return std::make_unique<sqlite_store>(path, s);
}

} // namespace parley::persistence
