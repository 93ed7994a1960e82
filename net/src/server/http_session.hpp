#pragma once

#include "parley/config/settings.hpp"
#include "parley/net/exchange.hpp"
#include "parley/net/server.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/serializer.hpp>

#include <deque>
#include <memory>
#include <optional>

namespace parley::net {

/// One HTTP/1.1 connection: reads requests one at a time (a fresh parser each, with header
/// and body limits and timeouts), hands each to the pipeline as an exchange, writes the
/// response, and keeps the connection alive unless told otherwise or draining.
///
/// Thread safety: every member function except start() and drain() runs on the
/// connection's strand. Pending operations and live exchanges hold shared_from_this().
class http_session : public std::enable_shared_from_this<http_session> {
public:
  http_session(asio::ip::tcp::socket&& socket,
               std::shared_ptr<const config::http_settings> settings,
               std::shared_ptr<const pipeline> p, std::shared_ptr<session_registry> registry,
               std::string peer);
  ~http_session();

  /// Starts reading (any thread).
  void start();
  /// Finishes the current request, then closes; closes at once when idle (any thread).
  void drain();

  /// Writes the response of `ex` (strand only; called by exchange).
  void write_response(const std::shared_ptr<exchange>& ex, response res);
  /// Streaming (strand only; called by exchange).
  void begin_stream(const std::shared_ptr<exchange>& ex, response header);
  void stream_chunk(std::string data);
  void end_stream();
  /// Watches the idle socket for EOF while `ex` is processed (strand only).
  void watch_client(const std::shared_ptr<exchange>& ex);

  /// An exchange was dropped without answering: answer 500 (strand only).
  void abandon(const std::string& request_id);
  /// The exchange whose client went away ended unanswered (it logged 499).
  void drop_left();

  asio::any_io_executor executor() { return stream_.get_executor(); }

private:
  void do_read_header();
  void on_read_header(beast::error_code ec, std::size_t);
  void do_read_body();
  void on_read_body(beast::error_code ec, std::size_t);
  void start_exchange();
  void reply_parse_error(api_errc code);
  void finish_request();
  void do_close();
  void write_next_chunk();
  void finish_stream(bool ok);
  void client_gone(const char* why);
  void log_access(const exchange& ex, unsigned status, bool ok);

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::shared_ptr<const config::http_settings> settings_;
  std::shared_ptr<const pipeline> pipeline_;
  std::shared_ptr<session_registry> registry_;
  std::string peer_;
  bool first_request_ = true;
  bool busy_ = false;     ///< an exchange is in flight
  bool closing_ = false;  ///< close after the current response
  bool closed_ = false;

  // The streamed response in progress, if any.
  std::shared_ptr<exchange> stream_ex_;
  std::shared_ptr<http::response<http::empty_body>> stream_header_;
  std::shared_ptr<http::response_serializer<http::empty_body>> stream_sr_;
  std::deque<std::string> stream_queue_;
  std::size_t stream_queued_bytes_ = 0;
  bool stream_writing_ = false;
  bool stream_ending_ = false;
  // The exchange being processed, watched for a client disconnect.
  std::weak_ptr<exchange> watched_;
  bool watching_ = false;
};

} // namespace parley::net
