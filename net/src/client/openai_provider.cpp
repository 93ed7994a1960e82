// The OpenAI-compatible upstream client. One call = one operation object on one io thread:
// take a pooled connection (or resolve, connect, TLS-handshake a new one), write the request,
// read the response header, then read the streamed body in 16 KiB slices through the SSE
// parser, sending each delta to the listening actor. Every step has a timeout.
#include "parley/net/openai_provider.hpp"
#include "parley/net/json_body.hpp"
#include "parley/net/sse_parser.hpp"
#include "json/json_text.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <ctime>
#include <iomanip>
#include <limits>
#include <sstream>
#include <mutex>
#include <optional>
#include <regex>

namespace parley::net {
namespace {

using json = nlohmann::json;
using tcp = asio::ip::tcp;
using actors::chat_error_kind;
using actors::failure_cause;

struct endpoint {
  bool tls = false;
  std::string host;
  std::string port;
  std::string base_path; ///< without trailing slash
};

endpoint parse_url(const std::string& url) {
  static const std::regex re(R"(^(https?)://([^/:]+|\[[^\]]+\])(?::([0-9]{1,5}))?(/.*)?$)",
                             std::regex::icase);
  std::smatch m;
  if (!std::regex_match(url, m, re))
    throw std::invalid_argument("upstream URL must be http(s)://host[:port][/path]");
  endpoint e;
  e.tls = beast::iequals(m[1].str(), "https");
  e.host = m[2].str();
  if (e.host.front() == '[')
    e.host = e.host.substr(1, e.host.size() - 2);
  e.port = m[3].matched ? m[3].str() : (e.tls ? "443" : "80");
  e.base_path = m[4].matched ? m[4].str() : "";
  while (!e.base_path.empty() && e.base_path.back() == '/')
    e.base_path.pop_back();
  return e;
}

/// Shared by all calls of one upstream: where it is, credentials, TLS context, and an idle
/// pool per io context (a pooled connection is bound to the context that opened it, and a
/// call uses its own thread's context, so it is served without leaving that thread).
template <class Stream>
struct upstream {
  upstream(io_pool& pool, endpoint e, std::string key, upstream_client_settings s,
           log::logger_ptr lg)
    : io(pool), ep(std::move(e)), api_key(std::move(key)), settings(s), logger(std::move(lg)),
      lanes(pool.size()) {}

  struct lane {
    std::mutex mu;
    std::vector<std::unique_ptr<Stream>> idle;
  };

  io_pool& io;
  endpoint ep;
  std::string api_key;
  upstream_client_settings settings;
  log::logger_ptr logger;
  std::unique_ptr<asio::ssl::context> tls;
  std::vector<lane> lanes;

  std::unique_ptr<Stream> take_idle(std::size_t i) {
    auto& l = lanes[i];
    std::lock_guard<std::mutex> lock(l.mu);
    if (l.idle.empty())
      return nullptr;
    auto s = std::move(l.idle.back());
    l.idle.pop_back();
    return s;
  }
  void give_back(std::size_t i, std::unique_ptr<Stream> s) {
    auto& l = lanes[i];
    std::lock_guard<std::mutex> lock(l.mu);
    // The bound is per upstream, shared by the lanes.
    if (l.idle.size() * lanes.size() < settings.max_idle_connections)
      l.idle.push_back(std::move(s));
  }
};

/// Retry-After (delta-seconds or an HTTP date) or the non-standard retry-after-ms that
/// OpenAI and Azure send, in milliseconds; 0 when absent or unreadable.
template <class Fields>
int64_t retry_after_ms(const Fields& h) {
  if (auto it = h.find("retry-after-ms"); it != h.end()) {
    try {
      auto v = std::stod(std::string(it->value()));
      if (v >= 0 && v < 86400e3)
        return static_cast<int64_t>(v);
    } catch (...) {
    }
  }
  auto it = h.find(http::field::retry_after);
  if (it == h.end())
    return 0;
  std::string v(it->value());
  if (!v.empty() && std::all_of(v.begin(), v.end(), [](unsigned char c) { return std::isdigit(c); }))
    return v.size() > 6 ? 0 : std::stoll(v) * 1000;
  std::tm tm{};
  std::istringstream in(v);
  in >> std::get_time(&tm, "%a, %d %b %Y %H:%M:%S");
  if (in.fail())
    return 0;
  auto when = std::chrono::system_clock::from_time_t(timegm(&tm));
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(when - std::chrono::system_clock::now()).count();
  return ms > 0 && ms < 86400000 ? ms : 0;
}

tcp::socket& lowest_socket(beast::tcp_stream& s) { return s.socket(); }
tcp::socket& lowest_socket(beast::ssl_stream<beast::tcp_stream>& s) {
  return beast::get_lowest_layer(s).socket();
}
beast::tcp_stream& tcp_layer(beast::tcp_stream& s) { return s; }
beast::tcp_stream& tcp_layer(beast::ssl_stream<beast::tcp_stream>& s) {
  return beast::get_lowest_layer(s);
}

template <class Stream>
class call_op : public actors::call_handle,
                public std::enable_shared_from_this<call_op<Stream>> {
public:
  call_op(std::shared_ptr<upstream<Stream>> up, actors::upstream_call call,
          std::shared_ptr<actors::call_listener> listener)
    : up_(std::move(up)),
      lane_(up_->io.pick()),
      exec_(up_->io.at(lane_).get_executor()),
      resolver_(exec_),
      listener_(std::move(listener)),
      request_id_(call.request_id),
      client_model_(call.client_model) {
    // The body is assembled as text: the messages are already validated JSON, and the other
    // fields (extra_json, an object without the keys set here) are spliced in as they are.
    std::string body;
    body.reserve(256 + call.extra_json.size());
    body += '{';
    std::string_view extra(call.extra_json);
    while (!extra.empty() && (extra.back() == ' ' || extra.back() == '\n'))
      extra.remove_suffix(1);
    if (extra.size() > 2 && extra.front() == '{' && extra.back() == '}') {
      auto inner = extra.substr(1, extra.size() - 2);
      if (inner.find_first_not_of(" \t\r\n") != std::string_view::npos) {
        body.append(inner.data(), inner.size());
        body += ',';
      }
    }
    body += "\"model\":";
    jsontext::append_string(body, call.model);
    body += ",\"messages\":[";
    bool first = true;
    for (auto& m : call.messages) {
      if (!first)
        body += ',';
      first = false;
      if (!m.json.empty()) {
        body += m.json;
      } else {
        body += "{\"role\":";
        jsontext::append_string(body, m.role);
        body += ",\"content\":";
        jsontext::append_string(body, m.text);
        body += '}';
      }
      prompt_estimate_ += actors::estimate_tokens(m.text) + 4;
    }
    body += "],\"stream\":true,\"stream_options\":{\"include_usage\":true}";
    if (call.max_tokens > 0) {
      body += ",\"max_tokens\":";
      body += std::to_string(call.max_tokens);
    }
    body += '}';
    // The request's bytes, made once (a retry on a fresh connection sends them again). Every
    // value is parley's own (config, generated ids), so none can carry a line break.
    req_.reserve(256 + body.size() + up_->api_key.size());
    req_ += "POST ";
    req_ += up_->ep.base_path;
    req_ += "/chat/completions HTTP/1.1\r\nHost: ";
    req_ += up_->ep.host;
    req_ += "\r\nUser-Agent: parley/0.1\r\nContent-Type: application/json\r\n"
            "Accept: text/event-stream\r\nx-request-id: ";
    req_ += request_id_;
    if (!call.traceparent.empty()) {
      req_ += "\r\ntraceparent: ";
      req_ += call.traceparent;
    }
    if (!up_->api_key.empty()) {
      req_ += "\r\nAuthorization: Bearer ";
      req_ += up_->api_key;
    }
    req_ += "\r\nContent-Length: ";
    req_ += std::to_string(body.size());
    req_ += "\r\n\r\n";
    req_ += body;
  }

  void start() {
    asio::post(exec_, [self = this->shared_from_this()] { self->acquire(); });
  }

  void cancel() override {
    asio::post(exec_, [self = this->shared_from_this()] {
      if (self->finished_)
        return;
      self->finished_ = true; // the listener wants nothing more
      self->resolver_.cancel();
      if (self->stream_) {
        beast::error_code ec;
        lowest_socket(*self->stream_).close(ec);
      }
    });
  }

private:
  // -- connection -----------------------------------------------------------------
  void acquire() {
    if (finished_)
      return;
    if (auto s = up_->take_idle(lane_)) {
      stream_ = std::move(s);
      reused_ = true;
      return write();
    }
    connect_new();
  }

  void connect_new() {
    reused_ = false;
    resolver_.async_resolve(up_->ep.host, up_->ep.port,
                            [self = this->shared_from_this()](beast::error_code ec,
                                                              tcp::resolver::results_type r) {
                              if (ec)
                                return self->fail(chat_error_kind::upstream_error,
                                                  "could not resolve the upstream", ec,
                                                  failure_cause::connect);
                              self->make_stream();
                              auto& tcp = tcp_layer(*self->stream_);
                              tcp.expires_after(std::chrono::milliseconds(self->up_->settings.connect_timeout_ms));
                              tcp.async_connect(r, [self](beast::error_code ec2, tcp::endpoint) {
                                if (ec2)
                                  return self->fail_io(ec2, "the upstream did not accept the connection in time",
                                                       "could not connect to the upstream",
                                                       failure_cause::connect_timeout, failure_cause::connect);
                                tcp_layer(*self->stream_).socket().set_option(tcp::no_delay(true), ec2);
                                self->handshake();
                              });
                            });
  }

  void make_stream();
  void handshake();

  // -- request and response --------------------------------------------------------
  void write() {
    tcp_layer(*stream_).expires_after(std::chrono::milliseconds(up_->settings.first_byte_timeout_ms));
    asio::async_write(*stream_, asio::buffer(req_), [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec) {
        // A pooled connection the upstream closed meanwhile: one fresh try.
        if (self->reused_ && !self->finished_)
          return self->connect_new();
        return self->fail(chat_error_kind::upstream_error, "could not send to the upstream", ec,
                          ec == beast::error::timeout ? failure_cause::first_byte_timeout
                                                      : failure_cause::reset);
      }
      self->read_header();
    });
  }

  void read_header() {
    parser_.emplace();
    // A stream is as long as the upstream talks; reads are bounded by time instead. (Not
    // boost::none: Beast 1.74 compares a Content-Length against an empty optional as "over".)
    parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
    tcp_layer(*stream_).expires_after(std::chrono::milliseconds(up_->settings.first_byte_timeout_ms));
    http::async_read_header(*stream_, buffer_, *parser_,
                            [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                              if (ec) {
                                if (self->reused_ && !self->finished_ &&
                                    (ec == http::error::end_of_stream || ec == asio::error::connection_reset ||
                                     ec == asio::error::eof))
                                  return self->connect_new();
                                return self->fail_io(ec, "the upstream did not answer in time",
                                                     "the upstream closed the connection without answering",
                                                     failure_cause::first_byte_timeout, failure_cause::reset);
                              }
                              auto& h = self->parser_->get();
                              self->status_ = h.result_int();
                              if (self->status_ != 200)
                                self->retry_after_ms_ = retry_after_ms(h);
                              self->read_body();
                            });
  }

  void read_body() {
    if (finished_)
      return;
    if (parser_->is_done())
      return on_body_end();
    auto& body = parser_->get().body();
    body.data = slice_;
    body.size = sizeof slice_;
    tcp_layer(*stream_).expires_after(std::chrono::milliseconds(up_->settings.idle_timeout_ms));
    // read_some: return as soon as any body bytes arrived, so tokens flow as they come.
    http::async_read_some(*stream_, buffer_, *parser_,
                     [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                       if (ec == http::error::need_buffer)
                         ec = {};
                       if (ec)
                         return self->fail_io(ec, "the upstream stream stalled", "the upstream stream broke off",
                                              failure_cause::idle_timeout,
                                              self->status_ == 200 ? failure_cause::reset : failure_cause::status);
                       auto n = sizeof self->slice_ - self->parser_->get().body().size;
                       self->on_bytes(std::string_view(self->slice_, n));
                       self->read_body();
                     });
  }

  void on_bytes(std::string_view bytes) {
    if (status_ != 200) {
      // An error body: keep a bounded prefix for the message.
      if (error_body_.size() < 16384)
        error_body_.append(bytes.substr(0, 16384 - error_body_.size()));
      return;
    }
    std::vector<std::string> events;
    if (!sse_.feed(bytes, events))
      return fail(chat_error_kind::upstream_error, "the upstream sent an oversized event", {},
                  failure_cause::broken);
    for (auto& data : events)
      on_event(data);
  }

  void on_event(const std::string& data) {
    if (finished_)
      return;
    if (data == "[DONE]") {
      done_seen_ = true;
      return;
    }
    // The fast reader first; anything it does not fully understand goes to the full parser.
    jsontext::chunk_fields f;
    if (!jsontext::scan_chunk(data, f)) {
      f = jsontext::chunk_fields{};
      if (data.empty())
        return; // an empty event carries nothing
      // Not a JSON object: the stream is broken (dropping it would silently lose text).
      if (!read_with_parser(data, f))
        return fail(chat_error_kind::upstream_error, "the upstream sent a malformed event", {},
                    failure_cause::broken);
    }
    if (f.error)
      return fail(chat_error_kind::upstream_error,
                  "the upstream reported an error" +
                    (f.error_message.empty() ? "" : ": " + f.error_message.substr(0, 300)),
                  {}, failure_cause::broken);
    if (f.has_usage) {
      if (f.prompt_tokens >= 0)
        prompt_tokens_ = f.prompt_tokens;
      if (f.completion_tokens >= 0)
        completion_tokens_ = f.completion_tokens;
      have_usage_ = true;
    }
    if (f.has_content && !f.content.empty()) {
      completion_estimate_ += actors::estimate_tokens(f.content);
      listener_->on_delta(std::move(f.content));
    }
    if (f.has_finish)
      finish_reason_ = std::move(f.finish_reason);
  }

  /// The same fields through nlohmann's parser (odd but valid JSON). False: not an object.
  static bool read_with_parser(const std::string& data, jsontext::chunk_fields& f) {
    json j;
    if (parse_untrusted_json(data, j) || !j.is_object())
      return false;
    if (auto e = j.find("error"); e != j.end() && !e->is_null()) {
      f.error = true;
      if (e->is_object() && e->contains("message") && (*e)["message"].is_string())
        f.error_message = (*e)["message"].get<std::string>();
    }
    if (auto u = j.find("usage"); u != j.end() && u->is_object()) {
      f.has_usage = true;
      if (u->contains("prompt_tokens") && (*u)["prompt_tokens"].is_number_integer())
        f.prompt_tokens = (*u)["prompt_tokens"].get<int64_t>();
      if (u->contains("completion_tokens") && (*u)["completion_tokens"].is_number_integer())
        f.completion_tokens = (*u)["completion_tokens"].get<int64_t>();
    }
    auto choices = j.find("choices");
    if (choices == j.end() || !choices->is_array() || choices->empty())
      return true;
    auto& c0 = (*choices)[0];
    if (!c0.is_object())
      return true;
    if (auto d = c0.find("delta"); d != c0.end() && d->is_object()) {
      auto content = d->find("content");
      if (content != d->end() && content->is_string()) {
        f.has_content = true;
        f.content = content->get<std::string>();
      }
    }
    if (auto fr = c0.find("finish_reason"); fr != c0.end() && fr->is_string()) {
      f.has_finish = true;
      f.finish_reason = fr->get<std::string>();
    }
    return true;
  }

  void on_body_end() {
    if (finished_)
      return;
    bool keep = parser_->get().keep_alive();
    if (status_ != 200)
      return fail_status();
    if (finish_reason_.empty() && !done_seen_)
      return fail(chat_error_kind::upstream_error, "the upstream ended the stream early", {},
                  failure_cause::broken);
    finished_ = true;
    actors::chat_done d;
    d.finish_reason = finish_reason_.empty() ? "stop" : finish_reason_;
    d.prompt_tokens = have_usage_ ? prompt_tokens_ : prompt_estimate_;
    d.completion_tokens = have_usage_ ? completion_tokens_ : completion_estimate_;
    d.model = client_model_;
    listener_->on_done(std::move(d));
    if (keep && buffer_.size() == 0) {
      tcp_layer(*stream_).expires_never();
      up_->give_back(lane_, std::move(stream_));
    }
  }

  /// Maps an upstream error status. Client errors keep the upstream's message (it explains
  /// the request); everything else gets a generic one: no upstream detail reaches clients.
  void fail_status() {
    std::string msg;
    json j;
    if (!parse_untrusted_json(error_body_, j) && j.is_object() && j.contains("error") && j["error"].is_object())
      msg = j["error"].value("message", "");
    auto st = failure_cause::status;
    if (status_ == 400 || status_ == 422)
      return fail(chat_error_kind::invalid_request,
                  msg.empty() ? "the upstream rejected the request" : msg.substr(0, 500), {}, st);
    if (status_ == 404)
      return fail(chat_error_kind::model_not_found, "the upstream does not serve this model", {}, st);
    if (status_ == 429)
      return fail(chat_error_kind::overloaded, "the upstream is rate limiting; retry later", {}, st);
    if (status_ == 401 || status_ == 403)
      return fail(chat_error_kind::upstream_error, "the upstream refused parley's credentials", {}, st);
    if (status_ == 504 || status_ == 408)
      return fail(chat_error_kind::upstream_timeout, "the upstream timed out", {}, st);
    if (status_ == 503)
      return fail(chat_error_kind::overloaded, "the upstream is unavailable; retry later", {}, st);
    fail(chat_error_kind::upstream_error,
         "the upstream failed with status " + std::to_string(status_), {}, st);
  }

  /// An I/O step failed: by its timer (504, cause `on_timeout`) or otherwise (502, `otherwise`).
  void fail_io(beast::error_code ec, const char* timed_out, const char* failed, failure_cause on_timeout,
               failure_cause otherwise) {
    bool t = ec == beast::error::timeout;
    fail(t ? chat_error_kind::upstream_timeout : chat_error_kind::upstream_error, t ? timed_out : failed, ec,
         t ? on_timeout : otherwise);
  }

  void fail(chat_error_kind kind, std::string message, beast::error_code ec, failure_cause cause) {
    if (finished_)
      return;
    finished_ = true;
    log::event(up_->logger, spdlog::level::warn, "upstream call failed")
      .str("request_id", request_id_)
      .str("upstream_host", up_->ep.host)
      .num("status", status_)
      .str("error", ec ? ec.message() : message);
    actors::chat_failure f{kind, std::move(message), status_, retry_after_ms_, cause};
    listener_->on_failed(std::move(f));
    if (stream_) {
      beast::error_code ignored;
      lowest_socket(*stream_).close(ignored);
    }
  }

  std::shared_ptr<upstream<Stream>> up_;
  std::size_t lane_; ///< the io context (and idle pool) this call runs on
  asio::io_context::executor_type exec_; ///< the lane's context: run by one thread, so serial
  tcp::resolver resolver_;
  std::unique_ptr<Stream> stream_;
  std::shared_ptr<actors::call_listener> listener_;
  std::string request_id_;
  std::string client_model_;
  int64_t retry_after_ms_ = 0;
  std::string req_; ///< the whole request as sent: head and body
  std::optional<http::response_parser<http::buffer_body>> parser_;
  beast::flat_buffer buffer_;
  char slice_[4096]; ///< body read buffer: SSE events are small, and thousands of streams add up
  sse_parser sse_;
  std::string error_body_;
  int status_ = 0;
  bool reused_ = false;
  bool finished_ = false;
  bool done_seen_ = false;
  bool have_usage_ = false;
  std::string finish_reason_;
  int64_t prompt_tokens_ = 0, completion_tokens_ = 0;
  int64_t prompt_estimate_ = 0, completion_estimate_ = 0;
};

template <>
void call_op<beast::tcp_stream>::make_stream() {
  stream_ = std::make_unique<beast::tcp_stream>(exec_);
}
template <>
void call_op<beast::tcp_stream>::handshake() {
  write();
}

template <>
void call_op<beast::ssl_stream<beast::tcp_stream>>::make_stream() {
  stream_ = std::make_unique<beast::ssl_stream<beast::tcp_stream>>(exec_, *up_->tls);
  // SNI, and verification of the certificate against the host name.
  SSL_set_tlsext_host_name(stream_->native_handle(), up_->ep.host.c_str());
  stream_->set_verify_callback(asio::ssl::host_name_verification(up_->ep.host));
}
template <>
void call_op<beast::ssl_stream<beast::tcp_stream>>::handshake() {
  tcp_layer(*stream_).expires_after(std::chrono::milliseconds(up_->settings.tls_timeout_ms));
  stream_->async_handshake(asio::ssl::stream_base::client,
                           [self = shared_from_this()](beast::error_code ec) {
                             if (ec)
                               return self->fail_io(ec, "the TLS handshake with the upstream timed out",
                                                    "the TLS handshake with the upstream failed",
                                                    failure_cause::tls_timeout, failure_cause::connect);
                             self->write();
                           });
}

template <class Stream>
class openai_provider final : public actors::provider_port {
public:
  explicit openai_provider(std::shared_ptr<upstream<Stream>> up) : up_(std::move(up)) {}
  std::shared_ptr<actors::call_handle> start(actors::upstream_call call,
                                             std::shared_ptr<actors::call_listener> listener) override {
    auto op = std::make_shared<call_op<Stream>>(up_, std::move(call), std::move(listener));
    op->start();
    return op;
  }

private:
  std::shared_ptr<upstream<Stream>> up_;
};

} // namespace

std::shared_ptr<actors::provider_port>
make_openai_provider(io_pool& io, const std::string& base_url, std::string api_key,
                     upstream_client_settings settings, log::logger_ptr logger) {
  auto ep = parse_url(base_url);
  if (ep.tls) {
    auto up = std::make_shared<upstream<beast::ssl_stream<beast::tcp_stream>>>(
      io, ep, std::move(api_key), settings, std::move(logger));
    up->tls = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_client);
    up->tls->set_default_verify_paths();
    up->tls->set_verify_mode(asio::ssl::verify_peer);
    return std::make_shared<openai_provider<beast::ssl_stream<beast::tcp_stream>>>(std::move(up));
  }
  auto up = std::make_shared<upstream<beast::tcp_stream>>(io, ep, std::move(api_key), settings,
                                                          std::move(logger));
  return std::make_shared<openai_provider<beast::tcp_stream>>(std::move(up));
}

} // namespace parley::net
