// The PostgreSQL change feed: one connection of its own (never the store's pool, whose
// connections are lent to anyone and would lose the LISTEN), a notification_receiver on the
// invalidation channel, and the version queries of the fallback. Owned by one thread.
#include "parley/persistence/change_feed.hpp"
#include "parley/persistence/open.hpp"

#include <pqxx/pqxx>

#include <memory>

namespace parley::persistence {
namespace {

/// libpq's message may echo the connection string: keep only its first line.
std::string first_line(const std::string& msg) { return msg.substr(0, msg.find('\n')); }

/// Collects the payloads of the channel's notifications; libpqxx calls it from
/// get_notifs(), on the feed's thread.
class payload_receiver final : public pqxx::notification_receiver {
public:
  payload_receiver(pqxx::connection_base& c, std::vector<std::string>& sink)
    : pqxx::notification_receiver(c, invalidation_channel), sink_(sink) {}
  void operator()(const std::string& payload, int /*backend_pid*/) override {
    sink_.push_back(payload);
  }

private:
  std::vector<std::string>& sink_;
};

class pg_change_feed final : public change_feed {
public:
  explicit pg_change_feed(const config::store_settings& s)
    : dsn_(s.postgres_dsn), statement_timeout_ms_(s.statement_timeout_ms) {}
  ~pg_change_feed() override { close(); }

  status open() override {
    close();
    try {
      conn_ = std::make_unique<pqxx::connection>(dsn_);
      {
        pqxx::nontransaction n(*conn_);
        n.exec("SET statement_timeout = " + std::to_string(statement_timeout_ms_));
      }
      // The receiver LISTENs as it registers -- but libpqxx swallows a broken connection
      // there, so ask the server whether we listen.
      receiver_ = std::make_unique<payload_receiver>(*conn_, pending_);
      int64_t listening = 0;
      {
        pqxx::nontransaction n(*conn_);
        auto r = n.exec_params("SELECT count(*) FROM pg_listening_channels() c WHERE c = $1",
                               std::string(invalidation_channel));
        listening = r[0][0].as<int64_t>();
      }
      if (listening != 1) {
        close();
        return store_error{persistence_errc::unavailable, "LISTEN did not take effect"};
      }
      return ok_status();
    } catch (const std::exception& e) {
      close();
      return store_error{persistence_errc::unavailable,
                         "cannot listen on PostgreSQL: " + first_line(e.what())};
    }
  }

  bool is_open() const override { return conn_ && conn_->is_open(); }

  int backend_pid() const override { return is_open() ? conn_->backendpid() : 0; }

  void close() override {
    // Disconnected first, the receiver does not UNLISTEN on its way out: a round trip for a
    // session that ends anyway, and on a dead connection a wait and an error notice. It
    // unregisters from its connection, so it goes before the connection.
    if (conn_)
      conn_->disconnect();
    receiver_.reset();
    conn_.reset();
    pending_.clear();
  }

  status wait(std::chrono::milliseconds timeout, std::vector<cached_change>& out) override {
    if (!is_open())
      return fail("the connection is closed");
    try {
      // Notifications that arrived during a query are queued already: take them without
      // waiting. Otherwise wait for one, or for the timeout.
      if (pending_.empty()) {
        auto us = std::max<int64_t>(
          0, std::chrono::duration_cast<std::chrono::microseconds>(timeout).count());
        conn_->await_notification(static_cast<long>(us / 1000000),
                                  static_cast<long>(us % 1000000));
      } else {
        conn_->get_notifs();
      }
      // libpqxx answers 0 notifications, not an error, once it has closed a broken connection.
      if (!conn_->is_open())
        return fail("the connection closed");
    } catch (const std::exception& e) {
      return fail(e.what());
    }
    for (auto& p : pending_)
      if (auto c = parse_invalidation(p))
        out.push_back(std::move(*c));
    pending_.clear();
    return ok_status();
  }

  result<std::vector<cached_change>> changed_since(millis since, int limit) override {
    return query<std::vector<cached_change>>([&](pqxx::nontransaction& n) {
      auto rows = n.exec_params(
        "SELECT kind, id, updated_at FROM ("
        "SELECT 'key' AS kind, id, updated_at FROM api_keys WHERE updated_at > $1 "
        "UNION ALL SELECT 'tenant', id, updated_at FROM tenants WHERE updated_at > $1"
        ") c ORDER BY updated_at DESC LIMIT $2",
        since, limit);
      std::vector<cached_change> out;
      out.reserve(rows.size());
      for (const auto& r : rows) {
        cached_change c;
        c.what = r[0].as<std::string>() == "key" ? cached_change::kind::key
                                                 : cached_change::kind::tenant;
        c.id = r[1].as<std::string>();
        c.updated_at = r[2].as<int64_t>();
        out.push_back(std::move(c));
      }
      return out;
    });
  }

  result<millis> newest_version() override {
    return query<millis>([](pqxx::nontransaction& n) -> millis {
      auto r = n.exec("SELECT GREATEST((SELECT max(updated_at) FROM api_keys), "
                      "(SELECT max(updated_at) FROM tenants))");
      return r[0][0].is_null() ? 0 : r[0][0].as<int64_t>();
    });
  }

private:
  /// Closes the connection after a failure: the owner opens a fresh one (and catches up).
  store_error fail(const std::string& why) {
    close();
    return {persistence_errc::unavailable, first_line(why)};
  }

  template <class T, class Fn>
  result<T> query(Fn&& fn) {
    if (!is_open())
      return fail("the connection is closed");
    try {
      pqxx::nontransaction n(*conn_);
      return result<T>(fn(n));
    } catch (const std::exception& e) {
      return fail(e.what());
    }
  }

  std::string dsn_;
  int statement_timeout_ms_;
  std::unique_ptr<pqxx::connection> conn_;
  std::vector<std::string> pending_; ///< payloads received, not yet handed out
  std::unique_ptr<payload_receiver> receiver_;
};

} // namespace

std::unique_ptr<change_feed> open_postgres_change_feed(const config::store_settings& s) {
  return std::make_unique<pg_change_feed>(s);
}

} // namespace parley::persistence
