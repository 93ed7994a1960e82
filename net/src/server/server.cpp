#include "parley/net/server.hpp"

#include "parley/config/loader.hpp"
#include "server/http_session.hpp"
#include "parley/net/metrics.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>

#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <openssl/ssl.h>

#include <cerrno>
#include <future>

namespace parley::net {

// -- pipeline ---------------------------------------------------------------------

pipeline::pipeline(std::vector<std::unique_ptr<middleware>> chain, router r,
                   log::logger_ptr logger, std::shared_ptr<request_metrics> metrics)
  : chain_(std::move(chain)), router_(std::move(r)), logger_(std::move(logger)),
    metrics_(std::move(metrics)) {}

void pipeline::finished(const exchange& ex, unsigned status, bool write_ok) const {
  auto& ctx = ex.ctx();
  auto elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - ctx.start).count();
  if (metrics_)
    metrics_->record(ex, status, elapsed);
  if (!logger_->should_log(status >= 500 ? spdlog::level::warn : spdlog::level::info))
    return;
  auto line = log::event(logger_, status >= 500 ? spdlog::level::warn : spdlog::level::info, "request");
  line.str("request_id", ctx.request_id);
  if (!ctx.client_request_id.empty())
    line.str("client_request_id", ctx.client_request_id);
  line.str("trace_id", ctx.trace_id)
    .str("tenant_id", ctx.tenant_id)
    .str("key_id", ctx.key_id)
    .str("method", std::string(ex.req().method_string()))
    .str("route", ctx.route.empty() ? std::string("-") : ctx.route)
    .num("status", status)
    .real("latency_ms", elapsed * 1e3)
    .str("client", ctx.client_address)
    .flag("write_ok", write_ok);
  if (!ctx.error.empty())
    line.str("error", ctx.error);
  if (!ctx.model.empty()) {
    line.str("model", ctx.model)
      .num("prompt_tokens", ctx.prompt_tokens)
      .num("completion_tokens", ctx.completion_tokens)
      .real("upstream_ms", static_cast<double>(ctx.upstream_us) / 1e3)
      .real("ttft_ms", static_cast<double>(ctx.ttft_us) / 1e3)
      .num("attempts", ctx.attempts)
      .str("cache", ctx.cache);
  }
}

void pipeline::run(const exchange_ptr& ex) const {
  // The error guard: nothing thrown by a filter or handler may unwind into Asio.
  try {
    if (ex->next_filter == 0 && !route(ex))
      return;
    while (ex->next_filter < chain_.size()) {
      auto& step = chain_[ex->next_filter++];
      if (step->on_request(ex) == filter_status::stop)
        return;
    }
    ex->next_filter = chain_.size() + 1; // the handler ran; resume() is a no-op after this
    router_.dispatch(ex);
  } catch (const std::exception& e) {
    log::event(logger_, spdlog::level::err, "unhandled exception in request")
      .str("request_id", ex->ctx().request_id)
      .str("route", ex->ctx().route)
      .str("error", e.what());
    ex->respond_error({api_errc::internal, "", ""});
  } catch (...) {
    log::event(logger_, spdlog::level::err, "unhandled non-standard exception in request")
      .str("request_id", ex->ctx().request_id);
    ex->respond_error({api_errc::internal, "", ""});
  }
}

bool pipeline::route(const exchange_ptr& ex) const {
  // Routing comes first, so that authorization is decided by the route that will run, never
  // by how its path is spelled: one canonical spelling per route, everything else is 400.
  auto& ctx = ex->ctx();
  if (auto why = canonical_path_error(ex->req().target())) {
    ex->respond_error({api_errc::invalid_request, why, ""});
    return false;
  }
  auto m = router_.match(ex->req().method(), path_of(ex->req().target()));
  if (m.found) {
    ctx.route = m.found->pattern;
    ctx.params = std::move(m.params);
    ctx.needs = &m.found->who;
    ctx.handler = &m.found->fn;
  }
  ctx.allow = std::move(m.allow);
  return true;
}

void pipeline::decorate(exchange& ex, response& res) const {
  for (auto it = chain_.rbegin(); it != chain_.rend(); ++it) {
    try {
      (*it)->on_response(ex, res);
    } catch (const std::exception& e) {
      log::event(logger_, spdlog::level::err, "exception in response hook")
        .str("middleware", (*it)->name())
        .str("error", e.what());
    }
  }
}

// -- session registry -------------------------------------------------------------

void session_registry::add(const std::shared_ptr<http_session>& s) {
  std::lock_guard<std::mutex> lock(mu_);
  sessions_.insert(s);
}

void session_registry::remove(http_session* s) {
  std::lock_guard<std::mutex> lock(mu_);
  // The session is being destroyed: its weak_ptr is expired; drop every expired entry.
  for (auto it = sessions_.begin(); it != sessions_.end();)
    it = it->expired() ? sessions_.erase(it) : std::next(it);
  (void)s;
}

bool session_registry::admit(const std::string& peer, int max_total, int per_client) {
  std::lock_guard<std::mutex> lock(mu_);
  if (connections_ >= max_total)
    return false;
  auto& n = per_client_[peer];
  if (per_client > 0 && n >= per_client)
    return false;
  ++n;
  ++connections_;
  return true;
}

void session_registry::release(const std::string& peer) {
  std::lock_guard<std::mutex> lock(mu_);
  --connections_;
  auto it = per_client_.find(peer);
  if (it != per_client_.end() && --it->second <= 0)
    per_client_.erase(it);
}

std::vector<std::shared_ptr<http_session>> session_registry::live() const {
  std::vector<std::shared_ptr<http_session>> out;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& w : sessions_)
    if (auto s = w.lock())
      out.push_back(std::move(s));
  return out;
}

void session_registry::drain_all() {
  for (auto& s : live())
    s->drain();
}

void session_registry::shut_down_all() {
  for (auto& s : live())
    s->shut_down();
}

std::size_t session_registry::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::size_t n = 0;
  for (auto& w : sessions_)
    n += w.expired() ? 0 : 1;
  return n;
}

// -- listener -----------------------------------------------------------------------

std::shared_ptr<asio::ssl::context> make_tls_context(const config::http_settings& s) {
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  // TLS 1.2 and 1.3 only; no compression, no renegotiation, the server's cipher order.
  ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                   asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                   asio::ssl::context::no_tlsv1_1 | asio::ssl::context::no_compression |
                   asio::ssl::context::single_dh_use);
  auto* native = ctx->native_handle();
  SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION);
  SSL_CTX_set_options(native, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION);
  // TLS 1.2: forward-secret AEAD suites only (TLS 1.3's suites are all of that kind).
  if (SSL_CTX_set_cipher_list(native,
                              "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                              "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                              "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305") != 1)
    throw std::runtime_error("http.tls: no usable cipher");
  beast::error_code ec;
  ctx->use_certificate_chain_file(s.tls_cert_file, ec);
  if (ec)
    throw std::runtime_error("http.tls_cert_file: cannot load '" + s.tls_cert_file +
                             "': " + ec.message());
  ctx->use_private_key_file(s.tls_key_file, asio::ssl::context::pem, ec);
  if (ec)
    throw std::runtime_error("http.tls_key_file: cannot load '" + s.tls_key_file +
                             "': " + ec.message());
  if (SSL_CTX_check_private_key(native) != 1)
    throw std::runtime_error("http.tls_key_file: the key does not match the certificate");
  return ctx;
}

class listener : public std::enable_shared_from_this<listener> {
public:
  listener(io_pool& io, std::shared_ptr<const config::http_settings> settings,
           std::shared_ptr<const pipeline> p, log::logger_ptr logger,
           std::shared_ptr<session_registry> registry)
    : io_(io),
      acceptor_(io.at(0).get_executor()),
      settings_(std::move(settings)),
      pipeline_(std::move(p)),
      logger_(std::move(logger)),
      registry_(std::move(registry)),
      backoff_(acceptor_.get_executor()),
      tls_(settings_->tls_cert_file.empty() ? nullptr : make_tls_context(*settings_)) {}

  uint16_t start() {
    auto [host, port] = config::split_host_port(settings_->listen, "http.listen");
    auto address = asio::ip::make_address(host == "localhost" ? "127.0.0.1" : host);
    asio::ip::tcp::endpoint ep{address, port};
    acceptor_.open(ep.protocol());
    acceptor_.set_option(asio::socket_base::reuse_address(true));
    acceptor_.bind(ep);
    acceptor_.listen(asio::socket_base::max_listen_connections);
    accepting_ = true;
    auto bound = acceptor_.local_endpoint().port();
    asio::dispatch(acceptor_.get_executor(), [self = shared_from_this()] { self->do_accept(); });
    return bound;
  }

  void stop() {
    if (!accepting_.exchange(false))
      return;
    // Close on the acceptor's thread so it never races a completing accept, and wait (briefly)
    // for it: when stop() returns, new connections are refused by the kernel.
    auto closed = std::make_shared<std::promise<void>>();
    auto done = closed->get_future();
    asio::post(acceptor_.get_executor(), [self = shared_from_this(), closed] {
      beast::error_code ec;
      self->acceptor_.close(ec);
      self->backoff_.cancel();
      closed->set_value();
    });
    done.wait_for(std::chrono::seconds(2));
  }

private:
  void do_accept() {
    // Each connection lives on one io thread (round robin) for its whole life: one thread
    // runs each context, so its handlers never run concurrently (no strand needed).
    acceptor_.async_accept(io_.at(next_++ % io_.size()).get_executor(), [self = shared_from_this()](
                                                      beast::error_code ec,
                                                      asio::ip::tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !self->accepting_.load())
        return;
      if (ec)
        return self->on_accept_error(ec);
      self->backoff_ms_ = 0;
      self->admit(std::move(socket));
      self->do_accept();
    });
  }

  /// Starts a session for the connection, or closes it at once when it is over the
  /// listener's caps (a client holding many idle connections cannot starve the others).
  void admit(asio::ip::tcp::socket socket) {
    beast::error_code ec;
    auto ep = socket.remote_endpoint(ec);
    if (ec)
      return; // already gone
    auto peer = ep.address().to_string();
    if (!registry_->admit(peer, settings_->max_connections, settings_->max_connections_per_client)) {
      registry_->refused.fetch_add(1, std::memory_order_relaxed);
      // RST rather than FIN: nothing of the connection lingers in TIME_WAIT here.
      socket.set_option(asio::socket_base::linger(true, 0), ec);
      socket.close(ec);
      return;
    }
    socket.set_option(asio::ip::tcp::no_delay(true), ec);
    make_http_session(std::move(socket), settings_, pipeline_, registry_, peer, tls_)->start();
  }

  /// A failed accept. Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) the
  /// pending connection stays queued and accepting again at once would spin: back off,
  /// doubling from 10 ms to 1 s, and log once per episode. Other errors (a connection reset
  /// before it was accepted) are the client's: go on.
  void on_accept_error(beast::error_code ec) {
    registry_->accept_errors.fetch_add(1, std::memory_order_relaxed);
    bool resources = ec == asio::error::no_descriptors || ec == asio::error::no_buffer_space ||
                     ec == asio::error::no_memory || ec.value() == ENFILE;
    if (!resources)
      return do_accept();
    if (backoff_ms_ == 0)
      log::event(logger_, spdlog::level::warn, "accept failed; backing off")
        .str("error", ec.message());
    backoff_ms_ = backoff_ms_ == 0 ? 10 : std::min(backoff_ms_ * 2, 1000);
    backoff_.expires_after(std::chrono::milliseconds(backoff_ms_));
    backoff_.async_wait([self = shared_from_this()](beast::error_code wec) {
      if (wec || !self->accepting_.load())
        return;
      self->do_accept();
    });
  }

  io_pool& io_;
  std::size_t next_ = 0; ///< the io context of the next connection (acceptor's thread only)
  asio::ip::tcp::acceptor acceptor_;
  std::shared_ptr<const config::http_settings> settings_;
  std::shared_ptr<const pipeline> pipeline_;
  log::logger_ptr logger_;
  std::shared_ptr<session_registry> registry_;
  std::atomic<bool> accepting_{false};
  asio::steady_timer backoff_;
  int backoff_ms_ = 0; ///< current accept backoff (acceptor's thread only); 0 = none
  std::shared_ptr<asio::ssl::context> tls_; ///< null: plain HTTP
};

// -- server -----------------------------------------------------------------------

server::server(io_pool& io, const config::http_settings& settings,
               std::shared_ptr<const pipeline> p, log::logger_ptr logger)
  : registry_(std::make_shared<session_registry>()),
    listener_(std::make_shared<listener>(io,
                                         std::make_shared<const config::http_settings>(settings),
                                         std::move(p), std::move(logger), registry_)) {}

server::~server() { stop_accepting(); }

uint16_t server::start() { return listener_->start(); }

void server::stop_accepting() { listener_->stop(); }

void server::drain() {
  registry_->draining = true;
  stop_accepting();
  registry_->drain_all();
}

void server::end_in_flight() {
  drain();
  registry_->shut_down_all();
}

} // namespace parley::net
