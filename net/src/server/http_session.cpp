#include "server/http_session.hpp"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>

namespace parley::net {

http_session::http_session(asio::ip::tcp::socket&& socket,
                           std::shared_ptr<const config::http_settings> settings,
                           std::shared_ptr<const pipeline> p,
                           std::shared_ptr<session_registry> registry, std::string peer)
  : stream_(std::move(socket)),
    settings_(std::move(settings)),
    pipeline_(std::move(p)),
    registry_(std::move(registry)),
    peer_(std::move(peer)) {}

http_session::~http_session() {
  registry_->release(peer_);
  registry_->remove(this);
}

void http_session::start() {
  registry_->add(shared_from_this());
  asio::dispatch(stream_.get_executor(), [self = shared_from_this()] {
    if (self->registry_->draining.load())
      return self->do_close();
    self->do_read_header();
  });
}

void http_session::drain() {
  asio::post(stream_.get_executor(), [self = shared_from_this()] {
    self->closing_ = true;
    if (!self->busy_)
      self->do_close();
  });
}

void http_session::do_read_header() {
  // A fresh parser per request: limits apply per message and no state leaks between them.
  parser_.emplace();
  parser_->header_limit(static_cast<std::uint32_t>(settings_->max_header_bytes));
  parser_->body_limit(settings_->max_body_bytes);
  // The first request must arrive within the read timeout; a kept-alive connection may sit
  // idle for the idle timeout before its next request starts.
  stream_.expires_after(std::chrono::seconds(first_request_ ? settings_->read_timeout_seconds
                                                            : settings_->idle_timeout_seconds));
  http::async_read_header(stream_, buffer_, *parser_,
                          [self = shared_from_this()](beast::error_code ec, std::size_t n) {
                            self->on_read_header(ec, n);
                          });
}

void http_session::on_read_header(beast::error_code ec, std::size_t) {
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
    stream_.expires_after(std::chrono::seconds(settings_->write_timeout_seconds));
    asio::async_write(stream_, asio::buffer(continue_line, sizeof continue_line - 1),
                      [self = shared_from_this()](beast::error_code ec, std::size_t) {
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

void http_session::do_read_body() {
  if (parser_->is_done())
    return start_exchange();
  stream_.expires_after(std::chrono::seconds(settings_->read_timeout_seconds));
  http::async_read(stream_, buffer_, *parser_,
                   [self = shared_from_this()](beast::error_code ec, std::size_t n) {
                     self->on_read_body(ec, n);
                   });
}

void http_session::on_read_body(beast::error_code ec, std::size_t) {
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

void http_session::start_exchange() {
  // No timer while the request is processed: handlers bound their own work.
  stream_.expires_never();
  auto ex = std::make_shared<exchange>(shared_from_this(), parser_->release(), pipeline_);
  ex->ctx().client_address = peer_;
  pipeline_->run(ex);
}

void http_session::reply_parse_error(api_errc code) {
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
  auto ex = std::make_shared<exchange>(shared_from_this(), std::move(req), pipeline_);
  ex->ctx().client_address = peer_;
  ex->respond_error({code, "", ""});
}

void http_session::write_response(const std::shared_ptr<exchange>& ex, response res) {
  pipeline_->decorate(*ex, res);
  bool keep = ex->req().keep_alive() && !closing_ && !registry_->draining.load();
  if (!keep)
    closing_ = true;
  res.keep_alive(keep);
  if (ex->req().method() == http::verb::head)
    res.body().clear();
  res.prepare_payload();
  auto status = res.result_int();
  auto sp = std::make_shared<response>(std::move(res));
  stream_.expires_after(std::chrono::seconds(settings_->write_timeout_seconds));
  http::async_write(stream_, *sp,
                    [self = shared_from_this(), sp, ex, status](beast::error_code ec, std::size_t) {
                      self->log_access(*ex, status, !ec);
                      if (ec)
                        self->client_gone(ec.message().c_str());
                      self->finish_request();
                      if (ec || self->closing_)
                        return self->do_close();
                      self->do_read_header();
                    });
}

void http_session::log_access(const exchange& ex, unsigned status, bool ok) {
  pipeline_->finished(ex, status, ok);
}

// -- streaming ----------------------------------------------------------------------

namespace {
/// A client that does not read its stream may make us hold at most this much.
constexpr std::size_t max_stream_queue_bytes = 4u << 20;
} // namespace

void http_session::begin_stream(const std::shared_ptr<exchange>& ex, response header) {
  pipeline_->decorate(*ex, header);
  bool keep = ex->req().keep_alive() && !closing_ && !registry_->draining.load();
  if (!keep)
    closing_ = true;
  stream_header_ = std::make_shared<http::response<http::empty_body>>();
  static_cast<http::response_header<>&>(*stream_header_) = header.base();
  stream_header_->keep_alive(keep);
  stream_header_->chunked(true);
  stream_ex_ = ex;
  registry_->streams.fetch_add(1, std::memory_order_relaxed);
  stream_queue_.clear();
  stream_queued_bytes_ = 0;
  stream_ending_ = false;
  stream_writing_ = true; // the header goes first
  stream_sr_ = std::make_shared<http::response_serializer<http::empty_body>>(*stream_header_);
  stream_.expires_after(std::chrono::seconds(settings_->write_timeout_seconds));
  http::async_write_header(stream_, *stream_sr_,
                           [self = shared_from_this()](beast::error_code ec, std::size_t) {
                             if (ec)
                               return self->finish_stream(false);
                             self->write_next_chunk();
                           });
}

void http_session::stream_chunk(std::string data) {
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

void http_session::end_stream() {
  if (!stream_ex_)
    return;
  stream_ending_ = true;
  if (!stream_writing_)
    write_next_chunk();
}

void http_session::write_next_chunk() {
  if (!stream_ex_)
    return;
  if (stream_queue_.empty()) {
    if (!stream_ending_) {
      stream_writing_ = false;
      return;
    }
    stream_writing_ = true;
    stream_.expires_after(std::chrono::seconds(settings_->write_timeout_seconds));
    asio::async_write(stream_, http::make_chunk_last(),
                      [self = shared_from_this()](beast::error_code ec, std::size_t) {
                        self->finish_stream(!ec);
                      });
    return;
  }
  stream_writing_ = true;
  // The front string stays in the queue (and alive) until its write completes.
  stream_.expires_after(std::chrono::seconds(settings_->write_timeout_seconds));
  asio::async_write(stream_, http::make_chunk(asio::buffer(stream_queue_.front())),
                    [self = shared_from_this()](beast::error_code ec, std::size_t) {
                      if (ec)
                        return self->finish_stream(false);
                      self->stream_queued_bytes_ -= self->stream_queue_.front().size();
                      self->stream_queue_.pop_front();
                      if (self->stream_ex_ && self->stream_ex_->on_written_)
                        self->stream_ex_->on_written_();
                      self->write_next_chunk();
                    });
}

void http_session::finish_stream(bool ok) {
  auto ex = std::move(stream_ex_);
  stream_ex_.reset();
  stream_queue_.clear();
  stream_queued_bytes_ = 0;
  stream_writing_ = false;
  stream_sr_.reset();
  if (!ex)
    return;
  registry_->streams.fetch_sub(1, std::memory_order_relaxed);
  log_access(*ex, stream_header_ ? stream_header_->result_int() : 200, ok);
  stream_header_.reset();
  if (!ok) {
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

void http_session::watch_client(const std::shared_ptr<exchange>& ex) {
  watched_ = ex;
  if (watching_ || closed_)
    return;
  watching_ = true;
  stream_.socket().async_wait(
    asio::ip::tcp::socket::wait_read, [self = shared_from_this()](beast::error_code ec) {
      self->watching_ = false;
      auto ex = self->watched_.lock();
      if (ec || !ex || self->closed_)
        return;
      // Readable while we owe an answer: either the client closed (EOF) or it pipelined its
      // next request (data stays in the socket for the next read).
      char c;
      beast::error_code pec, ignored;
      auto& sock = self->stream_.socket();
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

void http_session::client_gone(const char* why) {
  std::shared_ptr<exchange> ex = stream_ex_ ? stream_ex_ : watched_.lock();
  if (!ex || !ex->on_gone_)
    return;
  auto gone = std::move(ex->on_gone_);
  ex->on_gone_ = nullptr;
  log::event(pipeline_->logger(), spdlog::level::info, "client went away")
    .str("request_id", ex->ctx().request_id)
    .str("why", why);
  ex->client_left_.store(true, std::memory_order_release);
  gone();
}

void http_session::drop_left() {
  // The request whose client went away ended without an answer: count it done and close.
  finish_request();
  do_close();
}

void http_session::abandon(const std::string& request_id) {
  // A bug dropped an exchange without an answer: still answer, and keep the counts right.
  log::event(pipeline_->logger(), spdlog::level::err, "exchange dropped without a response")
    .str("request_id", request_id);
  request req;
  auto ex = std::make_shared<exchange>(shared_from_this(), std::move(req), pipeline_);
  ex->ctx().request_id = request_id;
  // busy_ is still set from the dropped request: this answer's write completes it.
  closing_ = true;
  ex->respond_error({api_errc::internal, "", ""});
}

void http_session::finish_request() {
  watched_.reset();
  if (busy_) {
    busy_ = false;
    registry_->in_flight.fetch_sub(1);
  }
}

void http_session::do_close() {
  if (closed_)
    return;
  closed_ = true;
  beast::error_code ec;
  stream_.socket().shutdown(asio::ip::tcp::socket::shutdown_send, ec);
  stream_.socket().close(ec);
}

} // namespace parley::net
