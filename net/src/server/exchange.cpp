#include "parley/net/exchange.hpp"

#include "parley/net/server.hpp"
#include "server/http_session.hpp"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <nlohmann/json.hpp>

namespace parley::net {

exchange::exchange(std::shared_ptr<http_session> session, request req,
                   std::shared_ptr<const pipeline> p)
  : session_(std::move(session)), pipeline_(std::move(p)), req_(std::move(req)) {}

exchange::~exchange() {
  if (responded_.load(std::memory_order_acquire) || !session_)
    return;
  if (client_left_.load(std::memory_order_acquire)) {
    // Nobody to answer: record it as nginx does (499, client closed request), then close.
    pipeline_->finished(*this, 499, false);
    asio::post(session_->executor(), [s = session_] { s->drop_left(); });
    return;
  }
  asio::post(session_->executor(),
             [s = session_, id = ctx_.request_id, client_id = ctx_.client_request_id] {
               s->abandon(id, client_id);
             });
}

asio::any_io_executor exchange::executor() const { return session_->executor(); }

void exchange::respond(response res) {
  if (responded_.exchange(true, std::memory_order_acq_rel))
    return;
  for (auto& [k, v] : extra_headers_)
    res.set(k, v);
  extra_headers_.clear();
  // dispatch: runs inline when already on the connection's io thread, else hops onto it.
  asio::dispatch(session_->executor(), [self = shared_from_this(), res = std::move(res)]() mutable {
    self->session_->write_response(self, std::move(res));
  });
}

void exchange::respond_error(const api_error& e) {
  response res{status_of(e.code), req_.version() ? req_.version() : 11};
  res.set(http::field::content_type, "application/json");
  res.body() = error_body(e);
  respond(std::move(res));
}

void exchange::respond_json(http::status status, const nlohmann::json& body) {
  response res{status, req_.version() ? req_.version() : 11};
  res.set(http::field::content_type, "application/json");
  // Values may carry client or upstream text cut at any byte: replace invalid UTF-8, never throw.
  res.body() = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  respond(std::move(res));
}

void exchange::add_header(std::string name, std::string value) {
  extra_headers_.emplace_back(std::move(name), std::move(value));
}

void exchange::begin_stream(response header) {
  if (responded_.exchange(true, std::memory_order_acq_rel))
    return;
  for (auto& [k, v] : extra_headers_)
    header.set(k, v);
  extra_headers_.clear();
  asio::dispatch(session_->executor(), [self = shared_from_this(), h = std::move(header)]() mutable {
    self->session_->begin_stream(self, std::move(h));
  });
}

void exchange::stream_write(std::string data) {
  asio::dispatch(session_->executor(), [self = shared_from_this(), d = std::move(data)]() mutable {
    self->session_->stream_chunk(std::move(d));
  });
}

void exchange::end_stream() {
  asio::dispatch(session_->executor(), [self = shared_from_this()] { self->session_->end_stream(); });
}

void exchange::watch(std::function<void()> on_gone, std::function<void()> on_written,
                     std::function<void()> on_shutdown) {
  on_gone_ = std::move(on_gone);
  on_written_ = std::move(on_written);
  on_shutdown_ = std::move(on_shutdown);
  // Start watching the socket for a client that goes away while we work on its answer.
  asio::dispatch(session_->executor(), [self = shared_from_this()] {
    self->session_->watch_client(self);
  });
}

void exchange::resume() {
  asio::dispatch(session_->executor(), [self = shared_from_this()] {
    self->pipeline_->run(self);
  });
}

} // namespace parley::net
