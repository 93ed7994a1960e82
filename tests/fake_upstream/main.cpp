// parley_fake_upstream: a scripted OpenAI-compatible upstream for parley's integration tests.
//
//   parley_fake_upstream --listen 127.0.0.1:0 [--max-seconds 600]
// prints {"listening":PORT} once bound; exits on SIGTERM/SIGINT or after --max-seconds.
//
// POST /v1/chat/completions echoes the last user message ("echo: <text>") as JSON or as SSE
// (stream:true; one delta per space-separated word), with word-count usage. A script changes one
// request's behaviour; it comes from POST /_script {"count":N,"script":{...}} (next N chat
// requests, -1 = until /_reset) and/or a last user message "SCRIPT:{json} rest" (its fields win).
// Script fields: latency_ms, tokens_per_second, reply, status, error_body, retry_after,
// stall_after_tokens + stall_ms, reset_before_first_byte, reset_after_tokens, ratelimit_headers,
// fail_ratio (0..1: each request fails with `status`, default 503, with this probability, else
// succeeds; random per request) + seed (reseeds the generator when the script is installed by
// /_script, or by the request that carries it inline).
// GET /v1/models, GET /_stats, POST /_reset. /_stats: chat_requests, streams_completed,
// client_disconnects, injected_failures (fail_ratio hits), open_responses (chat responses in
// progress now), requests_by_model ({model: chat requests}), last_request, last_headers.
//
// One io thread, async Beast/Asio, a strand per connection, keep-alive HTTP/1.1, loopback only.
// Every response is a list of steps (delay, bytes | reset) run with one timer per connection;
// while a chat response is in progress a pending read notices a peer that goes away.
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <csignal>
#include <ctime>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using json = nlohmann::json;
using micros = std::chrono::microseconds;

namespace {

// ---- global state (only touched on the single io thread) ---------------------------------------
struct state {
  int64_t chat_requests = 0, streams_completed = 0, client_disconnects = 0, next_id = 0;
  int64_t injected_failures = 0, open_responses = 0;
  json requests_by_model = json::object();
  json last_request = nullptr;
  json last_headers = json::object();
  json script = nullptr; // from POST /_script
  int64_t script_count = 0; // requests left for `script`; -1 = unlimited
} g;

std::mt19937_64& rng() {
  static std::mt19937_64 r{std::random_device{}()};
  return r;
}

json error_body(const std::string& message, const std::string& type) {
  return {{"error", {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}}}};
}

std::string chunk(const std::string& data) {
  std::ostringstream o;
  o << std::hex << data.size() << "\r\n" << data << "\r\n";
  return o.str();
}

/// The status line and headers (without the blank line ending them).
std::string head(unsigned status, const std::vector<std::pair<std::string, std::string>>& fields,
                 bool keep_alive) {
  std::string h = "HTTP/1.1 " + std::to_string(status) + " " +
                  std::string(http::obsolete_reason(static_cast<http::status>(status))) + "\r\n";
  for (auto& [k, v] : fields)
    h += k + ": " + v + "\r\n";
  if (!keep_alive)
    h += "Connection: close\r\n";
  return h;
}

std::string text_of(const json& m) {
  if (!m.is_object() || !m.contains("content"))
    return {};
  const json& c = m["content"];
  if (c.is_string())
    return c.get<std::string>();
  std::string out;
  if (c.is_array())
    for (auto& p : c)
      if (p.is_object() && p.value("type", "") == "text" && p.contains("text") && p["text"].is_string())
        out += p["text"].get<std::string>();
  return out;
}

int64_t count_words(const std::string& s) {
  std::istringstream in(s);
  std::string w;
  int64_t n = 0;
  while (in >> w)
    ++n;
  return n;
}

/// Length of the JSON object at the start of s (strings and escapes respected), or 0.
std::size_t json_object_length(const std::string& s) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{') {
      ++depth;
    } else if (c == '}' && --depth == 0) {
      return i + 1;
    } else if (depth == 0 && c != ' ') {
      return 0;
    }
  }
  return 0;
}

std::string trim(const std::string& s) {
  auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos)
    return {};
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

// ---- one response: what to send and when -------------------------------------------------------
struct step {
  micros delay{0};
  std::string bytes;
  bool reset = false; // close with RST instead of writing
};

struct plan {
  std::vector<step> steps;
  bool chat = false;   // a chat response: watch for the peer going away, count disconnects
  bool stream = false; // counts as a completed stream when every step ran
};

/// Builds the response to a chat request; may throw nlohmann exceptions on ill-typed input.
plan chat_plan(const http::request<http::string_body>& req, bool keep_alive) {
  plan p;
  p.chat = true;
  ++g.chat_requests;
  json body = json::parse(req.body(), nullptr, false);
  g.last_request = body.is_discarded() ? json(nullptr) : body;
  if (body.is_object() && body.contains("model") && body["model"].is_string()) {
    auto& n = g.requests_by_model[body["model"].get<std::string>()];
    n = n.is_number_integer() ? n.get<int64_t>() + 1 : int64_t{1};
  }
  g.last_headers = json::object();
  for (const char* name : {"authorization", "traceparent", "x-request-id", "content-type"})
    if (auto it = req.find(name); it != req.end())
      g.last_headers[name] = std::string(it->value());

  auto json_reply = [&](unsigned status, const json& j, std::vector<std::pair<std::string, std::string>> extra,
                        micros delay) {
    auto b = j.dump();
    extra.emplace_back("Content-Type", "application/json");
    extra.emplace_back("Content-Length", std::to_string(b.size()));
    p.steps.push_back({delay, head(status, extra, keep_alive) + "\r\n" + b, false});
  };
  if (!body.is_object() || !body.contains("messages") || !body["messages"].is_array()) {
    json_reply(400, error_body("fake upstream: body must be a JSON object with messages", "invalid_request_error"),
               {}, micros{0});
    return p;
  }

  // Script: the /_script one (consumed by this request), overridden field by field by SCRIPT:.
  json script = json::object();
  if (g.script_count != 0 && g.script.is_object()) {
    script = g.script;
    if (g.script_count > 0 && --g.script_count == 0)
      g.script = nullptr;
  }
  std::string last_user;
  int64_t prompt_tokens = 0;
  for (auto& m : body["messages"]) {
    auto t = text_of(m);
    prompt_tokens += count_words(t);
    if (m.is_object() && m.value("role", "") == "user")
      last_user = t;
  }
  std::string echo = last_user;
  if (last_user.rfind("SCRIPT:", 0) == 0) {
    std::string rest = last_user.substr(7);
    auto len = json_object_length(rest);
    json inline_script = len ? json::parse(rest.substr(0, len), nullptr, false) : json();
    if (!inline_script.is_object()) {
      json_reply(400, error_body("fake upstream: SCRIPT: must be followed by a JSON object", "invalid_request_error"),
                 {}, micros{0});
      return p;
    }
    script.update(inline_script);
    echo = trim(rest.substr(len));
    if (inline_script.contains("seed"))
      rng().seed(inline_script["seed"].get<uint64_t>());
  }

  std::string reply = script.contains("reply") ? script["reply"].get<std::string>() : "echo: " + echo;
  std::vector<std::string> tokens; // "w1", " w2", ...: concatenated they give the reply exactly
  for (std::size_t pos = 0; !reply.empty();) {
    auto sp = reply.find(' ', pos + 1);
    tokens.push_back(reply.substr(pos, sp == std::string::npos ? std::string::npos : sp - pos));
    if (sp == std::string::npos)
      break;
    pos = sp;
  }
  json limit = body.contains("max_completion_tokens") && body["max_completion_tokens"].is_number_integer()
                 ? body["max_completion_tokens"]
                 : body.value("max_tokens", json());
  std::string finish = "stop";
  if (limit.is_number_integer() && limit.get<int64_t>() >= 0 &&
      limit.get<int64_t>() < static_cast<int64_t>(tokens.size())) {
    tokens.resize(static_cast<std::size_t>(limit.get<int64_t>()));
    finish = "length";
  }
  std::string content;
  for (auto& t : tokens)
    content += t;
  auto completion_tokens = static_cast<int64_t>(tokens.size());
  json usage = {{"prompt_tokens", prompt_tokens},
                {"completion_tokens", completion_tokens},
                {"total_tokens", prompt_tokens + completion_tokens}};

  micros latency{script.value("latency_ms", int64_t{0}) * 1000};
  std::vector<std::pair<std::string, std::string>> extra;
  if (script.value("ratelimit_headers", false))
    extra = {{"x-ratelimit-limit-requests", "100"}, {"x-ratelimit-remaining-requests", "0"},
             {"x-ratelimit-reset-requests", "1s"}, {"x-ratelimit-limit-tokens", "10000"},
             {"x-ratelimit-remaining-tokens", "0"}, {"x-ratelimit-reset-tokens", "1s"}};

  if (script.contains("fail_ratio")) {
    // A random fault: fail with `status` (default 503) with this probability, else succeed.
    double ratio = script["fail_ratio"].get<double>();
    bool fail = std::uniform_real_distribution<double>(0.0, 1.0)(rng()) < ratio;
    if (fail) {
      ++g.injected_failures;
      if (script.value("status", 0) < 100 || script.value("status", 0) == 200)
        script["status"] = 503;
    } else {
      script.erase("status");
    }
  }
  if (script.value("reset_before_first_byte", false)) {
    p.steps.push_back({latency, {}, true});
    return p;
  }
  if (int status = script.value("status", 0); status >= 100 && status != 200) {
    if (script.contains("retry_after"))
      extra.emplace_back("Retry-After", script["retry_after"].is_string() ? script["retry_after"].get<std::string>()
                                                                         : script["retry_after"].dump());
    json_reply(static_cast<unsigned>(status),
               script.contains("error_body") ? script["error_body"] : error_body("fake error", "server_error"), extra,
               latency);
    return p;
  }

  std::string id = "chatcmpl-fake-" + std::to_string(++g.next_id);
  std::string model = body.contains("model") && body["model"].is_string() ? body["model"].get<std::string>()
                                                                           : "fake-model";
  auto created = static_cast<int64_t>(std::time(nullptr));
  int64_t reset_after = script.value("reset_after_tokens", int64_t{-1});

  if (!body.value("stream", false)) {
    json j = {{"id", id}, {"object", "chat.completion"}, {"created", created}, {"model", model},
              {"choices", {{{"index", 0},
                            {"message", {{"role", "assistant"}, {"content", content}, {"refusal", nullptr}}},
                            {"logprobs", nullptr}, {"finish_reason", finish}}}},
              {"usage", usage}};
    json_reply(200, j, extra, latency);
    if (reset_after >= 0) { // non-streaming: the header and half the body, then RST
      auto& s = p.steps.back();
      auto body_at = s.bytes.find("\r\n\r\n") + 4;
      s.bytes.resize(body_at + (s.bytes.size() - body_at) / 2);
      p.steps.push_back({micros{0}, {}, true});
    }
    return p;
  }

  p.stream = true;
  bool include_usage = body.contains("stream_options") && body["stream_options"].is_object() &&
                       body["stream_options"].value("include_usage", false);
  extra.emplace_back("Content-Type", "text/event-stream");
  extra.emplace_back("Cache-Control", "no-cache");
  extra.emplace_back("Transfer-Encoding", "chunked");
  p.steps.push_back({latency, head(200, extra, keep_alive) + "\r\n", false});
  auto frame = [&](const json& delta, const json& fin) {
    json c = {{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", model},
              {"choices", {{{"index", 0}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", fin}}}}};
    if (include_usage)
      c["usage"] = nullptr;
    return chunk("data: " + c.dump() + "\n\n");
  };
  p.steps.push_back({micros{0}, frame({{"role", "assistant"}, {"content", ""}}, nullptr), false});
  double tps = script.value("tokens_per_second", 0.0);
  micros pace{tps > 0 ? static_cast<int64_t>(1e6 / tps) : 0};
  int64_t stall_after = script.value("stall_after_tokens", int64_t{-1});
  micros stall{script.value("stall_ms", int64_t{1000}) * 1000};
  for (std::size_t i = 0; i <= tokens.size(); ++i) {
    auto n = static_cast<int64_t>(i); // tokens sent so far
    if (n == reset_after) {
      p.steps.push_back({n == stall_after ? stall : micros{0}, {}, true});
      return p;
    }
    micros delay = n == stall_after ? stall : micros{0};
    if (i == tokens.size()) {
      p.steps.push_back({delay, frame(json::object(), finish), false});
      break;
    }
    p.steps.push_back({delay + pace, frame({{"content", tokens[i]}}, nullptr), false});
  }
  std::string tail;
  if (include_usage) {
    json u = {{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", model},
              {"choices", json::array()}, {"usage", usage}};
    tail += chunk("data: " + u.dump() + "\n\n");
  }
  tail += chunk("data: [DONE]\n\n") + "0\r\n\r\n";
  p.steps.push_back({micros{0}, tail, false});
  return p;
}

plan route(const http::request<http::string_body>& req, bool keep_alive) {
  std::string path(req.target().substr(0, req.target().find('?')));
  auto ends_with = [&](const std::string& s) {
    return path.size() >= s.size() && path.compare(path.size() - s.size(), s.size(), s) == 0;
  };
  auto simple = [&](unsigned status, const json& j) {
    plan p;
    auto b = j.dump();
    p.steps.push_back({micros{0},
                       head(status, {{"Content-Type", "application/json"}, {"Content-Length", std::to_string(b.size())}},
                            keep_alive) + "\r\n" + b,
                       false});
    return p;
  };
  if (req.method() == http::verb::post && ends_with("/chat/completions")) {
    try {
      return chat_plan(req, keep_alive);
    } catch (const std::exception& e) {
      return simple(400, error_body(std::string("fake upstream: bad request or script: ") + e.what(),
                                    "invalid_request_error"));
    }
  }
  if (req.method() == http::verb::get && ends_with("/models"))
    return simple(200, {{"object", "list"},
                        {"data", {{{"id", "fake-model"}, {"object", "model"}, {"created", 0}, {"owned_by", "fake"}}}}});
  if (req.method() == http::verb::get && path == "/_stats")
    return simple(200, {{"chat_requests", g.chat_requests}, {"streams_completed", g.streams_completed},
                        {"client_disconnects", g.client_disconnects},
                        {"injected_failures", g.injected_failures}, {"open_responses", g.open_responses},
                        {"requests_by_model", g.requests_by_model}, {"last_request", g.last_request},
                        {"last_headers", g.last_headers}});
  if (req.method() == http::verb::post && path == "/_reset") {
    auto next_id = g.next_id;
    auto open = g.open_responses; // responses still running keep counting themselves down
    g = state{};
    g.next_id = next_id;
    g.open_responses = open;
    return simple(200, json::object());
  }
  if (req.method() == http::verb::post && path == "/_script") {
    json b = json::parse(req.body(), nullptr, false);
    if (!b.is_object() || !b.contains("script") || !b["script"].is_object())
      return simple(400, error_body("fake upstream: expected {\"count\":N,\"script\":{...}}", "invalid_request_error"));
    g.script = b["script"];
    if (g.script.contains("seed"))
      rng().seed(g.script["seed"].get<uint64_t>());
    g.script_count = b.contains("count") && b["count"].is_number_integer() ? b["count"].get<int64_t>() : 1;
    return simple(200, json::object());
  }
  return simple(404, error_body("fake upstream: no route for " + std::string(req.method_string()) + " " + path,
                                "invalid_request_error"));
}

// ---- one connection ----------------------------------------------------------------------------
class connection : public std::enable_shared_from_this<connection> {
public:
  explicit connection(tcp::socket s) : sock_(std::move(s)), timer_(sock_.get_executor()) {}

  void start() { read_request(); }

private:
  void read_request() {
    parser_.emplace();
    parser_->body_limit(64 * 1024 * 1024);
    http::async_read_header(sock_, buf_, *parser_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      self->on_header(ec);
    });
  }

  void on_header(beast::error_code ec) {
    if (ec)
      return close();
    auto read_body = [self = shared_from_this()] {
      if (self->parser_->is_done())
        return self->on_request();
      http::async_read(self->sock_, self->buf_, *self->parser_, [self](beast::error_code ec, std::size_t) {
        if (ec)
          return self->close();
        self->on_request();
      });
    };
    auto& req = parser_->get();
    if (auto it = req.find(http::field::expect); it != req.end() && beast::iequals(it->value(), "100-continue")) {
      static const std::string cont = "HTTP/1.1 100 Continue\r\n\r\n";
      asio::async_write(sock_, asio::buffer(cont), [self = shared_from_this(), read_body](beast::error_code ec, std::size_t) {
        if (ec)
          return self->close();
        read_body();
      });
      return;
    }
    read_body();
  }

  void on_request() {
    auto req = parser_->release();
    keep_alive_ = req.keep_alive();
    plan_ = route(req, keep_alive_);
    next_ = 0;
    in_response_ = true;
    if (plan_.chat) {
      open_counted_ = true;
      ++g.open_responses;
      watch();
    }
    run_step();
  }

  /// A read pending during a chat response: EOF or an error means the peer went away.
  void watch() {
    watching_ = true;
    sock_.async_read_some(buf_.prepare(4096), [self = shared_from_this()](beast::error_code ec, std::size_t n) {
      self->watching_ = false;
      if (self->closed_)
        return;
      if (!ec)
        self->buf_.commit(n); // a pipelined request: kept for the next read
      if (!self->in_response_)
        return self->read_request(); // cancelled (or data/EOF) after the response: carry on
      if (ec)
        return self->disconnected();
      self->watch();
    });
  }

  void run_step() {
    if (closed_)
      return;
    if (next_ == plan_.steps.size())
      return response_done();
    if (plan_.steps[next_].delay.count() > 0) {
      timer_.expires_after(plan_.steps[next_].delay);
      timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
        if (!ec && !self->closed_)
          self->do_step();
      });
      return;
    }
    do_step();
  }

  void do_step() {
    auto& s = plan_.steps[next_];
    if (s.reset) {
      beast::error_code ec;
      sock_.set_option(asio::socket_base::linger(true, 0), ec);
      in_response_ = false;
      return close();
    }
    asio::async_write(sock_, asio::buffer(s.bytes), [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec)
        return self->disconnected();
      ++self->next_;
      self->run_step();
    });
  }

  /// A chat response ended (completed, reset, or its peer went away).
  void uncount_open() {
    if (open_counted_) {
      open_counted_ = false;
      --g.open_responses;
    }
  }

  void response_done() {
    in_response_ = false;
    uncount_open();
    if (plan_.stream)
      ++g.streams_completed;
    plan_ = {};
    if (!keep_alive_) {
      beast::error_code ec;
      sock_.shutdown(tcp::socket::shutdown_send, ec);
      return close();
    }
    if (watching_) {
      beast::error_code ec;
      sock_.cancel(ec); // the watcher's handler starts the next read
      return;
    }
    read_request();
  }

  void disconnected() {
    if (closed_)
      return;
    if (in_response_)
      ++g.client_disconnects;
    in_response_ = false;
    close();
  }

  void close() {
    uncount_open();
    if (closed_)
      return;
    closed_ = true;
    timer_.cancel();
    beast::error_code ec;
    sock_.close(ec);
  }

  tcp::socket sock_;
  asio::steady_timer timer_;
  beast::flat_buffer buf_;
  std::optional<http::request_parser<http::string_body>> parser_;
  plan plan_;
  std::size_t next_ = 0;
  bool keep_alive_ = true, in_response_ = false, watching_ = false, closed_ = false;
  bool open_counted_ = false; // this connection's chat response counts in open_responses
};

void accept(tcp::acceptor& acc) {
  acc.async_accept(asio::make_strand(acc.get_executor()), [&acc](beast::error_code ec, tcp::socket s) {
    if (!ec) {
      s.set_option(tcp::no_delay(true), ec);
      std::make_shared<connection>(std::move(s))->start();
    }
    if (acc.is_open())
      accept(acc);
  });
}

} // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:0";
  long max_seconds = 600;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--listen" && i + 1 < argc) {
      listen = argv[++i];
    } else if (a == "--max-seconds" && i + 1 < argc) {
      max_seconds = std::stol(argv[++i]);
    } else {
      std::cerr << "usage: parley_fake_upstream [--listen 127.0.0.1:PORT] [--max-seconds N]\n";
      return 2;
    }
  }
  std::signal(SIGPIPE, SIG_IGN);
  auto colon = listen.rfind(':');
  if (colon == std::string::npos) {
    std::cerr << "--listen wants HOST:PORT\n";
    return 2;
  }
  std::string host = listen.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  if (host == "localhost")
    host = "127.0.0.1";
  beast::error_code ec;
  auto address = asio::ip::make_address(host, ec);
  if (ec || !address.is_loopback()) {
    std::cerr << "--listen: a loopback address only, got " << host << "\n";
    return 2;
  }

  asio::io_context ioc{1};
  tcp::acceptor acc(ioc);
  tcp::endpoint ep(address, static_cast<unsigned short>(std::stoi(listen.substr(colon + 1))));
  acc.open(ep.protocol());
  acc.set_option(asio::socket_base::reuse_address(true));
  acc.bind(ep);
  acc.listen(asio::socket_base::max_listen_connections);
  std::cout << json{{"listening", acc.local_endpoint().port()}}.dump() << std::endl;

  asio::signal_set signals(ioc, SIGINT, SIGTERM);
  signals.async_wait([&](beast::error_code, int) { ioc.stop(); });
  asio::steady_timer safety(ioc, std::chrono::seconds(max_seconds)); // never outlive a test run
  safety.async_wait([&](beast::error_code e) {
    if (!e)
      ioc.stop();
  });
  accept(acc);
  ioc.run();
  return 0;
}
