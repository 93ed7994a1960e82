#pragma once

#include "parley/config/logging.hpp"
#include "parley/config/settings.hpp"
#include "parley/net/http.hpp"
#include "parley/net/io_pool.hpp"
#include "parley/net/middleware.hpp"
#include "parley/net/router.hpp"

#include <atomic>
#include <memory>
#include <mutex>
#include <set>
#include <unordered_map>
#include <vector>

namespace parley::net {

class http_session;
class request_metrics;

/// The middleware chain plus the router: everything a session needs to serve a request.
/// Immutable after construction; shared by all sessions.
class pipeline : public std::enable_shared_from_this<pipeline> {
public:
  pipeline(std::vector<std::unique_ptr<middleware>> chain, router r, log::logger_ptr logger,
           std::shared_ptr<request_metrics> metrics = nullptr);

  /// Runs the chain from ex->next_filter, then the router. On the first run the target is
  /// checked for canonical form (else 400) and matched to its route before any middleware,
  /// so middleware (authentication above all) sees the route that will run. Catches every
  /// exception (the error guard): a throwing step answers 500 in OpenAI's shape and is logged.
  void run(const exchange_ptr& ex) const;
  /// Applies all on_response hooks in reverse order.
  void decorate(exchange& ex, response& res) const;
  const log::logger_ptr& logger() const noexcept { return logger_; }
  const router& routes() const noexcept { return router_; }
  /// A response is out (or failed): one access-log line and the request metrics.
  void finished(const exchange& ex, unsigned status, bool write_ok) const;

private:
  /// Checks the target's form and matches the route (ctx().needs/handler/params); answers
  /// 400 and returns false for a non-canonical target.
  bool route(const exchange_ptr& ex) const;
  std::vector<std::unique_ptr<middleware>> chain_;
  router router_;
  log::logger_ptr logger_;
  std::shared_ptr<request_metrics> metrics_;
};

/// Shared bookkeeping of all sessions of one server: counts and the drain switch.
/// Thread-safe.
class session_registry {
public:
  void add(const std::shared_ptr<http_session>& s);
  void remove(http_session* s);
  /// Counts a new connection from `peer` against the listener's caps (total, and per client
  /// address when `per_client` > 0); false (and nothing counted) when it is over either.
  bool admit(const std::string& peer, int max_total, int per_client);
  /// The connection admitted for `peer` has closed.
  void release(const std::string& peer);
  /// Posts a drain to every live session: idle ones close, busy ones close after their
  /// current response.
  void drain_all();
  /// Posts shut_down to every live session: responses in progress are told to end now (their
  /// producers' on_shutdown), every other connection closes.
  void shut_down_all();
  std::size_t size() const;

  std::atomic<bool> draining{false};
  std::atomic<int64_t> in_flight{0};   ///< requests read but not yet fully answered
  std::atomic<uint64_t> total{0};      ///< requests seen since start
  std::atomic<int64_t> streams{0};     ///< SSE streams being written now
  std::atomic<uint64_t> refused{0};    ///< connections closed at accept: over a cap
  std::atomic<uint64_t> accept_errors{0}; ///< failed accepts (e.g. out of file descriptors)

private:
  /// The sessions still alive, taken under the lock (acted on outside it).
  std::vector<std::shared_ptr<http_session>> live() const;
  mutable std::mutex mu_;
  std::set<std::weak_ptr<http_session>, std::owner_less<std::weak_ptr<http_session>>> sessions_;
  int64_t connections_ = 0;                          ///< admitted and not yet released
  std::unordered_map<std::string, int> per_client_;  ///< open connections by peer address
};

class listener;

/// The HTTP server: a listener that accepts connections (each on one of the pool's io
/// contexts in turn) and starts sessions.
///
/// Thread safety: start() and the stop/drain calls may be called from any thread; the
/// io_context is run by threads the caller owns (runtime). Pending accepts hold the
/// listener, not the server, so destroying the server while the io_context runs is safe.
class server {
public:
  server(io_pool& io, const config::http_settings& settings,
         std::shared_ptr<const pipeline> p, log::logger_ptr logger);
  ~server();

  /// Binds and listens on settings.listen; returns the bound port. Throws
  /// std::system_error when the address cannot be bound.
  uint16_t start();
  /// Closes the listening socket: new connections are refused once it returns. Waits up to
  /// 2 s for the io threads to close it, so call it from a controlling thread, never from an
  /// io thread. Idempotent.
  void stop_accepting();
  /// stop_accepting(), then asks every session to finish its current request and close.
  void drain();
  /// The grace period is over: drain(), then every response still in progress is told to
  /// end now (a chat stream ends with an error event and [DONE], a waiting chat request is
  /// answered 503) and every other connection is closed. Any thread; the sessions act on
  /// their strands, so this returns before they are done (watch in_flight()).
  void end_in_flight();

  int64_t in_flight() const noexcept { return registry_->in_flight.load(); }
  int64_t streams() const noexcept { return registry_->streams.load(); }
  std::size_t open_sessions() const { return registry_->size(); }
  uint64_t requests_total() const noexcept { return registry_->total.load(); }
  /// Connections closed at accept because they were over a cap.
  uint64_t connections_refused() const noexcept { return registry_->refused.load(); }
  /// Accepts that failed (out of descriptors or memory, or reset before accepted).
  uint64_t accept_errors() const noexcept { return registry_->accept_errors.load(); }

private:
  std::shared_ptr<session_registry> registry_;
  std::shared_ptr<listener> listener_;
};

} // namespace parley::net
