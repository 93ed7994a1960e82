#pragma once

#include "parley/config/settings.hpp"
#include "parley/net/exchange.hpp"
#include "parley/net/server.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>

#include <memory>
#include <string>

namespace parley::net {

/// One HTTP/1.1 connection, plain or TLS: reads requests one at a time (a fresh parser each,
/// with header and body limits and timeouts), hands each to the pipeline as an exchange,
/// writes the response, and keeps the connection alive unless told otherwise or draining.
/// This is the interface exchanges and the registry use; make_http_session() builds the one
/// implementation, a template over the stream type (TCP, or TLS over TCP).
///
/// Thread safety: every member function except start(), drain() and shut_down() runs on the
/// connection's strand: its io context's executor, which one thread runs (so "strand" below
/// means that thread). Pending operations and live exchanges hold shared_from_this().
class http_session : public std::enable_shared_from_this<http_session> {
public:
  virtual ~http_session() = default;

  /// Starts the connection (the TLS handshake first, if any), then reads (any thread).
  virtual void start() = 0;
  /// Finishes the current request, then closes; closes at once when idle (any thread).
  virtual void drain() = 0;
  /// The grace period is over (any thread): the response in progress, if its producer set an
  /// on_shutdown callback, is told to end now and the connection closes after it; any other
  /// connection (idle, a request still arriving, a handler without the callback) closes now.
  virtual void shut_down() = 0;

  /// Writes the response of `ex` (strand only; called by exchange).
  virtual void write_response(const std::shared_ptr<exchange>& ex, response res) = 0;
  /// Streaming (strand only; called by exchange).
  virtual void begin_stream(const std::shared_ptr<exchange>& ex, response header) = 0;
  virtual void stream_chunk(std::string data) = 0;
  virtual void end_stream() = 0;
  /// Watches the idle socket for EOF while `ex` is processed (strand only).
  virtual void watch_client(const std::shared_ptr<exchange>& ex) = 0;

  /// An exchange was dropped without answering: answer 500 (strand only).
  virtual void abandon(const std::string& request_id, const std::string& client_request_id) = 0;
  /// The exchange whose client went away ended unanswered (it logged 499).
  virtual void drop_left() = 0;

  virtual asio::any_io_executor executor() = 0;
};

/// A session for an accepted connection from `peer` (admitted by the registry, released when
/// the session ends). `tls`: the listener's TLS context, or null for plain HTTP.
std::shared_ptr<http_session> make_http_session(asio::ip::tcp::socket&& socket,
                                                std::shared_ptr<const config::http_settings> settings,
                                                std::shared_ptr<const pipeline> p,
                                                std::shared_ptr<session_registry> registry,
                                                std::string peer,
                                                std::shared_ptr<asio::ssl::context> tls);

} // namespace parley::net
