#include "server/http_session.hpp"
#include "server/wire.hpp"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <array>
#include <deque>
#include <optional>

namespace parley::net {
namespace {

template <class Stream>
constexpr bool is_tls = !std::is_same_v<Stream, beast::tcp_stream>;

/// Plain streams take the socket; TLS streams also the listener's context.
template <class Stream>
Stream make_stream(asio::ip::tcp::socket&& socket, asio::ssl::context* tls) {
  if constexpr (is_tls<Stream>)
    return Stream(std::move(socket), *tls);
  else
    return Stream(std::move(socket));
}

} // namespace

template <class Stream>
class basic_http_session final : public http_session {
public:
  basic_http_session(asio::ip::tcp::socket&& socket,
                     std::shared_ptr<const config::http_settings> settings,
                     std::shared_ptr<const pipeline> p, std::shared_ptr<session_registry> registry,
                     std::string peer, std::shared_ptr<asio::ssl::context> tls);
  ~basic_http_session() override;

  void start() override;
  void drain() override;
  void shut_down() override;
  void write_response(const std::shared_ptr<exchange>& ex, response res) override;
  void begin_stream(const std::shared_ptr<exchange>& ex, response header) override;
  void stream_chunk(std::string data) override;
  void end_stream() override;
  void watch_client(const std::shared_ptr<exchange>& ex) override;
  void abandon(const std::string& request_id, const std::string& client_request_id) override;
  void drop_left() override;
  asio::any_io_executor executor() override { return stream_.get_executor(); }

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
  /// After a write: the body goes (an idle keep-alive connection holds no response), and the
  /// head/chunk buffer is kept for the next write only while it is small.
  void release_write_buffers() {
    std::string().swap(out_body_);
    if (out_head_.capacity() > 16u << 10)
      std::string().swap(out_head_);
  }

  std::shared_ptr<basic_http_session> self() {
    return std::static_pointer_cast<basic_http_session>(shared_from_this());
  }
  beast::tcp_stream& tcp() { return beast::get_lowest_layer(stream_); }
  void do_handshake();

  std::shared_ptr<asio::ssl::context> tls_; ///< kept alive while the stream uses it
  Stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::shared_ptr<const config::http_settings> settings_;
  std::shared_ptr<const pipeline> pipeline_;
  std::shared_ptr<session_registry> registry_;
  std::string peer_;
  std::string out_head_, out_body_; ///< the response being written (reused across requests)
  bool first_request_ = true;
  bool busy_ = false;     ///< an exchange is in flight
  bool closing_ = false;  ///< close after the current response
  bool closed_ = false;

  // The streamed response in progress, if any.
  std::shared_ptr<exchange> stream_ex_;
  unsigned stream_status_ = 200;
  std::deque<std::string> stream_queue_;
  std::size_t stream_queued_bytes_ = 0;
  bool stream_writing_ = false;
  bool stream_ending_ = false;
  // The exchange being processed, watched for a client disconnect.
  std::weak_ptr<exchange> watched_;
  bool watching_ = false;
};


template <class Stream>
basic_http_session<Stream>::basic_http_session(asio::ip::tcp::socket&& socket,
                           std::shared_ptr<const config::http_settings> settings,
                           std::shared_ptr<const pipeline> p,
                           std::shared_ptr<session_registry> registry, std::string peer,
                           std::shared_ptr<asio::ssl::context> tls)
  : tls_(std::move(tls)),
    stream_(make_stream<Stream>(std::move(socket), tls_.get())),
    settings_(std::move(settings)),
    pipeline_(std::move(p)),
    registry_(std::move(registry)),
    peer_(std::move(peer)) {}

template <class Stream>
basic_http_session<Stream>::~basic_http_session() {
  registry_->release(peer_);
  registry_->remove(this);
}

template <class Stream>
void basic_http_session<Stream>::start() {
  registry_->add(self());
  asio::dispatch(stream_.get_executor(), [self = self()] {
    if (self->registry_->draining.load())
      return self->do_close();
    if constexpr (is_tls<Stream>)
      self->do_handshake();
    else
      self->do_read_header();
  });
}

template <class Stream>
void basic_http_session<Stream>::do_handshake() {
  if constexpr (is_tls<Stream>) {
    // The handshake must finish within the read timeout, like a first request.
    tcp().expires_after(std::chrono::seconds(settings_->read_timeout_seconds));
    stream_.async_handshake(asio::ssl::stream_base::server, buffer_.data(),
                            [self = self()](beast::error_code ec, std::size_t used) {
                              if (ec) // not TLS, an old protocol, no shared cipher, a timeout
                                return self->do_close();
                              self->buffer_.consume(used);
                              self->do_read_header();
                            });
  }
}

template <class Stream>
void basic_http_session<Stream>::drain() {
  asio::post(stream_.get_executor(), [self = self()] {
    self->closing_ = true;
    if (!self->busy_)
      self->do_close();
  });
}

template <class Stream>
void basic_http_session<Stream>::shut_down() {
  asio::post(stream_.get_executor(), [self = self()] {
    self->closing_ = true;
    auto ex = self->stream_ex_ ? self->stream_ex_ : self->watched_.lock();
    if (ex && ex->on_shutdown_) {
      // Its producer ends the response (an error answer, or a stream's last events and end);
      // the connection closes once that is written (closing_).
      auto end = std::move(ex->on_shutdown_);
      ex->on_shutdown_ = nullptr;
      ex->on_gone_ = nullptr;
      return end();
    }
    // Nothing can end this connection cleanly any more: it would be cut at exit anyway.
    self->do_close();
  });
}

template <class Stream>
void basic_http_session<Stream>::do_read_header() {
  // A fresh parser per request: limits apply per message and no state leaks between them.
  parser_.emplace();
  parser_->header_limit(static_cast<std::uint32_t>(settings_->max_header_bytes));
  parser_->body_limit(settings_->max_body_bytes);
  // The first request must arrive within the read timeout; a kept-alive connection may sit
  // idle for the idle timeout before its next request starts.
  tcp().expires_after(std::chrono::seconds(first_request_ ? settings_->read_timeout_seconds
                                                            : settings_->idle_timeout_seconds));
  http::async_read_header(stream_, buffer_, *parser_,
                          [self = self()](beast::error_code ec, std::size_t n) {
                            self->on_read_header(ec, n);
                          });
}

template <class Stream>
void basic_http_session<Stream>::on_read_header(beast::error_code ec, std::size_t) {
  if (ec == http::error::header_limit)
    return reply_parse_error(api_errc::headers_too_large);
  if (ec == http::error::body_limit)
    return reply_parse_error(api_errc::payload_too_large);
  if (ec == http::error::end_of_stream || ec == asio::error::operation_aborted ||
      ec == beast::error::timeout || ec == asio::error::eof ||
      ec == asio::error::connection_reset || ec == asio::error::bad_descriptor)
    return do_close();
  if (ec)
    return reply_parse_error(api_errc::invalid_request);
  first_request_ = false;
  // From here on a request is in flight: a drain lets it finish instead of cutting it off.
  busy_ = true;
  registry_->in_flight.fetch_add(1);
  registry_->total.fetch_add(1);
  auto& req = parser_->get();
  // Say yes to "Expect: 100-continue" only for bodies we will accept (too large: 413 above).
  auto expect = req[http::field::expect];
  if (beast::iequals(expect, "100-continue") && !parser_->is_done()) {
    static const char continue_line[] = "HTTP/1.1 100 Continue\r\n\r\n";
    tcp().expires_after(std::chrono::seconds(settings_->write_timeout_seconds));
    asio::async_write(stream_, asio::buffer(continue_line, sizeof continue_line - 1),
                      [self = self()](beast::error_code ec, std::size_t) {
                        if (ec) {
                          self->finish_request();
                          return self->do_close();
                        }
                        self->do_read_body();
                      });
    return;
  }
  do_read_body();
}

template <class Stream>
void basic_http_session<Stream>::do_read_body() {
  if (parser_->is_done())
    return start_exchange();
  tcp().expires_after(std::chrono::seconds(settings_->read_timeout_seconds));
  http::async_read(stream_, buffer_, *parser_,
                   [self = self()](beast::error_code ec, std::size_t n) {
                     self->on_read_body(ec, n);
                   });
}

template <class Stream>
void basic_http_session<Stream>::on_read_body(beast::error_code ec, std::size_t) {
  if (ec == http::error::body_limit)
    return reply_parse_error(api_errc::payload_too_large);
  if (ec == asio::error::operation_aborted || ec == beast::error::timeout ||
      ec == asio::error::eof || ec == http::error::end_of_stream ||
      ec == asio::error::connection_reset || ec == http::error::partial_message) {
    finish_request();
    return do_close();
  }
  if (ec)
    return reply_parse_error(api_errc::invalid_request);
  start_exchange();
}

template <class Stream>
void basic_http_session<Stream>::start_exchange() {
  // No timer while the request is processed: handlers bound their own work.
  tcp().expires_never();
  auto ex = std::make_shared<exchange>(self(), parser_->release(), pipeline_);
  ex->ctx().client_address = peer_;
  pipeline_->run(ex);
}

template <class Stream>
void basic_http_session<Stream>::reply_parse_error(api_errc code) {
  // The message cannot be read to its end, so the connection cannot be reused.
  closing_ = true;
  if (!busy_) {
    busy_ = true;
    registry_->in_flight.fetch_add(1);
    registry_->total.fetch_add(1);
  }
  request req;
  req.version(11);
  if (parser_ && parser_->is_header_done()) {
    // Keep what was parsed of the header (method, target) for the log line, not the body.
    // method_string, not method(): an unknown method has no verb, and Beast's method(verb)
    // throws for verb::unknown.
    auto& h = parser_->get();
    req.method_string(h.method_string());
    req.target(h.target());
    req.version(h.version() ? h.version() : 11);
    if (auto it = h.find(http::field::origin); it != h.end())
      req.set(http::field::origin, it->value());
    if (auto it = h.find("x-request-id"); it != h.end())
      req.set("x-request-id", it->value());
  }
  auto ex = std::make_shared<exchange>(self(), std::move(req), pipeline_);
  ex->ctx().client_address = peer_;
  ex->respond_error({code, "", ""});
}

template <class Stream>
void basic_http_session<Stream>::write_response(const std::shared_ptr<exchange>& ex, response res) {
  pipeline_->decorate(*ex, res);
  bool keep = ex->req().keep_alive() && !closing_ && !registry_->draining.load();
  if (!keep)
    closing_ = true;
  res.keep_alive(keep);
  if (ex->req().method() == http::verb::head)
    res.body().clear();
  res.prepare_payload();
  auto status = res.result_int();
  // Head and body as two buffers of this session's own (one response is written at a time).
  out_head_.clear();
  wire::append_head(out_head_, res.base());
  out_body_ = std::move(res.body());
  std::array<asio::const_buffer, 2> bufs{asio::buffer(out_head_), asio::buffer(out_body_)};
  tcp().expires_after(std::chrono::seconds(settings_->write_timeout_seconds));
  asio::async_write(stream_, bufs,
                    [self = self(), ex, status](beast::error_code ec, std::size_t) {
                      self->release_write_buffers();
                      self->log_access(*ex, status, !ec);
                      if (ec)
                        self->client_gone(ec.message().c_str());
                      self->finish_request();
                      if (ec || self->closing_)
                        return self->do_close();
                      self->do_read_header();
                    });
}

template <class Stream>
void basic_http_session<Stream>::log_access(const exchange& ex, unsigned status, bool ok) {
  pipeline_->finished(ex, status, ok);
}

// -- streaming ----------------------------------------------------------------------

namespace {
/// A client that does not read its stream may make us hold at most this much.
constexpr std::size_t max_stream_queue_bytes = 4u << 20;
} // namespace

template <class Stream>
void basic_http_session<Stream>::begin_stream(const std::shared_ptr<exchange>& ex, response header) {
  pipeline_->decorate(*ex, header);
  bool keep = ex->req().keep_alive() && !closing_ && !registry_->draining.load();
  if (!keep)
    closing_ = true;
  header.keep_alive(keep);
  header.chunked(true);
  stream_status_ = header.result_int();
  stream_ex_ = ex;
  registry_->streams.fetch_add(1, std::memory_order_relaxed);
  stream_queue_.clear();
  stream_queued_bytes_ = 0;
  stream_ending_ = false;
  stream_writing_ = true; // the header goes first
  out_head_.clear();
  wire::append_head(out_head_, header.base());
  tcp().expires_after(std::chrono::seconds(settings_->write_timeout_seconds));
  asio::async_write(stream_, asio::buffer(out_head_),
                    [self = self()](beast::error_code ec, std::size_t) {
                      if (ec)
                        return self->finish_stream(false);
                      self->write_next_chunk();
                    });
}

template <class Stream>
void basic_http_session<Stream>::stream_chunk(std::string data) {
  if (!stream_ex_ || stream_ending_)
    return;
  stream_queued_bytes_ += data.size();
  if (stream_queued_bytes_ > max_stream_queue_bytes) {
    log::event(pipeline_->logger(), spdlog::level::warn, "stream aborted: client not reading")
      .str("request_id", stream_ex_->ctx().request_id)
      .num("queued_bytes", static_cast<int64_t>(stream_queued_bytes_));
    return finish_stream(false);
  }
  stream_queue_.push_back(std::move(data));
  if (!stream_writing_)
    write_next_chunk();
}

template <class Stream>
void basic_http_session<Stream>::end_stream() {
  if (!stream_ex_)
    return;
  stream_ending_ = true;
  if (!stream_writing_)
    write_next_chunk();
}

template <class Stream>
void basic_http_session<Stream>::write_next_chunk() {
  if (!stream_ex_)
    return;
  if (stream_queue_.empty() && !stream_ending_) {
    stream_writing_ = false;
    return;
  }
  stream_writing_ = true;
  // What is queued goes out in one write (up to about 64 KiB), framed into one buffer, and
  // with it the last chunk once the stream is ending and nothing else waits.
  constexpr std::size_t batch_bytes = 64u << 10;
  out_head_.clear();
  std::size_t n = 0;
  for (auto& s : stream_queue_) {
    if (n > 0 && out_head_.size() + s.size() > batch_bytes)
      break;
    wire::append_chunk(out_head_, s);
    ++n;
  }
  bool last = stream_ending_ && n == stream_queue_.size();
  if (last)
    out_head_ += wire::last_chunk;
  tcp().expires_after(std::chrono::seconds(settings_->write_timeout_seconds));
  asio::async_write(stream_, asio::buffer(out_head_),
                    [self = self(), n, last](beast::error_code ec, std::size_t) {
                      if (ec)
                        return self->finish_stream(false);
                      for (std::size_t i = 0; i < n && !self->stream_queue_.empty(); ++i) {
                        self->stream_queued_bytes_ -= self->stream_queue_.front().size();
                        self->stream_queue_.pop_front();
                        if (self->stream_ex_ && self->stream_ex_->on_written_)
                          self->stream_ex_->on_written_(); // one credit per chunk written
                      }
                      if (last) {
                        self->release_write_buffers();
                        return self->finish_stream(true);
                      }
                      self->write_next_chunk();
                    });
}

template <class Stream>
void basic_http_session<Stream>::finish_stream(bool ok) {
  auto ex = std::move(stream_ex_);
  stream_ex_.reset();
  stream_queue_.clear();
  stream_queued_bytes_ = 0;
  stream_writing_ = false;
  if (!ex)
    return;
  registry_->streams.fetch_sub(1, std::memory_order_relaxed);
  log_access(*ex, stream_status_, ok);
  if (!ok) {
    ex->on_shutdown_ = nullptr;
    if (ex->on_gone_) {
      auto gone = std::move(ex->on_gone_);
      ex->on_gone_ = nullptr;
      gone();
    }
    closing_ = true;
  }
  finish_request();
  if (closing_)
    return do_close();
  do_read_header();
}

template <class Stream>
void basic_http_session<Stream>::watch_client(const std::shared_ptr<exchange>& ex) {
  watched_ = ex;
  if (watching_ || closed_)
    return;
  watching_ = true;
  tcp().socket().async_wait(
    asio::ip::tcp::socket::wait_read, [self = self()](beast::error_code ec) {
      self->watching_ = false;
      auto ex = self->watched_.lock();
      if (ec || !ex || self->closed_)
        return;
      // Readable while we owe an answer: either the client closed (EOF) or it pipelined its
      // next request (data stays in the socket for the next read).
      char c;
      beast::error_code pec, ignored;
      auto& sock = self->tcp().socket();
      sock.non_blocking(true, ignored);
      auto n = sock.receive(asio::buffer(&c, 1), asio::socket_base::message_peek, pec);
      // (Its own error code: resetting the mode must not clear the receive's would_block,
      // which would read as end of stream and cancel a healthy request.)
      sock.non_blocking(false, ignored);
      if (pec == asio::error::would_block || pec == asio::error::try_again)
        return self->watch_client(ex);
      if (n == 0 || pec)
        self->client_gone(pec ? pec.message().c_str() : "end of stream");
    });
}

template <class Stream>
void basic_http_session<Stream>::client_gone(const char* why) {
  std::shared_ptr<exchange> ex = stream_ex_ ? stream_ex_ : watched_.lock();
  if (!ex || !ex->on_gone_)
    return;
  auto gone = std::move(ex->on_gone_);
  ex->on_gone_ = nullptr;
  ex->on_shutdown_ = nullptr;
  log::event(pipeline_->logger(), spdlog::level::info, "client went away")
    .str("request_id", ex->ctx().request_id)
    .str("why", why);
  ex->client_left_.store(true, std::memory_order_release);
  gone();
}

template <class Stream>
void basic_http_session<Stream>::drop_left() {
  // The request whose client went away ended without an answer: count it done and close.
  finish_request();
  do_close();
}

template <class Stream>
void basic_http_session<Stream>::abandon(const std::string& request_id,
                                         const std::string& client_request_id) {
  // A bug dropped an exchange without an answer: still answer, and keep the counts right.
  log::event(pipeline_->logger(), spdlog::level::err, "exchange dropped without a response")
    .str("request_id", request_id);
  request req;
  auto ex = std::make_shared<exchange>(self(), std::move(req), pipeline_);
  ex->ctx().request_id = request_id;
  ex->ctx().client_request_id = client_request_id; // still echoed as x-request-id
  // busy_ is still set from the dropped request: this answer's write completes it.
  closing_ = true;
  ex->respond_error({api_errc::internal, "", ""});
}

template <class Stream>
void basic_http_session<Stream>::finish_request() {
  watched_.reset();
  if (busy_) {
    busy_ = false;
    registry_->in_flight.fetch_sub(1);
  }
}

template <class Stream>
void basic_http_session<Stream>::do_close() {
  if (closed_)
    return;
  closed_ = true;
  beast::error_code ec;
  tcp().socket().shutdown(asio::ip::tcp::socket::shutdown_send, ec);
  tcp().socket().close(ec);
}


std::shared_ptr<http_session> make_http_session(asio::ip::tcp::socket&& socket,
                                                std::shared_ptr<const config::http_settings> settings,
                                                std::shared_ptr<const pipeline> p,
                                                std::shared_ptr<session_registry> registry,
                                                std::string peer,
                                                std::shared_ptr<asio::ssl::context> tls) {
  if (tls)
    return std::make_shared<basic_http_session<beast::ssl_stream<beast::tcp_stream>>>(
      std::move(socket), std::move(settings), std::move(p), std::move(registry), std::move(peer),
      std::move(tls));
  return std::make_shared<basic_http_session<beast::tcp_stream>>(
    std::move(socket), std::move(settings), std::move(p), std::move(registry), std::move(peer),
    nullptr);
}

} // namespace parley::net
