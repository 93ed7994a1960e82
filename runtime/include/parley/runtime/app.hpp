#pragma once

#include "parley/config/logging.hpp"
#include "parley/config/settings.hpp"
#include "parley/actors/protocol.hpp"

#include <caf/fwd.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace parley::runtime {

/// Creates the process logger: JSON lines on stdout (and a rotating file if configured),
/// written by a background thread so io and actor threads never wait on the terminal.
/// `async` = false gives a synchronous logger (tests, CLI).
log::logger_ptr make_logger(const config::log_settings& s, bool async = true);

/// One route of the API listener as declared (for tests and docs).
struct route_info {
  std::string method;   ///< "GET", "POST", ...
  std::string pattern;  ///< "/admin/v1/tenants/{id}"
  std::string access;   ///< "anyone", "anyone_or_admin", "tenant", "admin", "metrics"
  std::string scope;    ///< the key scope a tenant route needs ("" = any)
};

/// The composition root of one node. Builds and starts every part in order -- secrets,
/// store, persistence workers, actor system (tenant manager and directory), io threads,
/// HTTP listener -- and stops them in reverse, so the listener is the first to stop.
///
/// Thread safety: start(), begin_shutdown(), end_in_flight(), stop() are called by one controlling thread
/// (main, or a test). drained() and port() may be called from any thread.
class app {
public:
  app(config::settings s, log::logger_ptr logger);
  ~app();
  app(const app&) = delete;
  app& operator=(const app&) = delete;

  /// Starts everything; returns the bound HTTP port. Throws std::exception on a start-up
  /// failure (address in use, store cannot be opened, migrations fail).
  uint16_t start();
  /// Graceful shutdown, first step: readiness turns 503, the listener stops accepting, idle
  /// connections close, busy ones close after their current response.
  void begin_shutdown();
  /// Graceful shutdown, second step, when the grace period is over: every answer still in
  /// progress is told to end now -- a chat stream with an error event (`server_shutdown`)
  /// and [DONE], a chat request not yet answered with 503 -- and its turn is cancelled;
  /// every other connection closes. Returns at once; wait for drained(), bounded.
  void end_in_flight();
  /// True when no request is in flight and no connection is open.
  bool drained() const;
  /// Requests still in flight.
  int64_t in_flight() const;
  /// The port of the separate metrics listener (metrics.listen), 0 when there is none.
  uint16_t metrics_port() const;
  /// Stops every part in reverse start order. Idempotent; the destructor calls it.
  void stop();

  uint16_t port() const noexcept;
  /// Every route of the API listener, in table order (after start()).
  std::vector<route_info> routes() const;
  const config::settings& settings() const noexcept;
  /// The node's actor system and tenant directory (after start(); for tests and tools that
  /// talk to tenant actors, e.g. to inject a crash).
  caf::actor_system& actor_system();
  actors::tenant_directory_actor tenant_directory() const;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace parley::runtime
