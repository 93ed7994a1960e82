// parley_stream_load: the load tool and the streaming upstream of parley's benchmark rig
// (bench/run). One self-contained C++17 file on Boost.Asio/Beast; loopback only.
//
//   parley_stream_load serve   --listen 127.0.0.1:0 [--tokens 20] [--tokens-per-second 2]
//                              [--max-seconds 600] [--threads 1]
//       An OpenAI-compatible upstream. POST .../chat/completions with "stream": true answers SSE
//       (chunked): a role chunk and the first content token at once, then one token every
//       1/R s, a finish chunk, a usage chunk and [DONE]; without "stream": true a JSON
//       chat.completion. Prints {"listening":PORT} once bound; stops on SIGTERM/SIGINT or after
//       --max-seconds.
//
//   parley_stream_load streams --url http://127.0.0.1:P/v1/chat/completions --model M
//                              --streams N [--key K] [--open-per-second X] [--timeout 120]
//                              [--watch-pid PID] [--header "k: v"]... [--threads 1]
//       Opens N concurrent streaming chat completions (X new ones per second; 0 = all at once),
//       holds each to its end, and prints JSON: ok, errors by kind, time to first token
//       (request written -> first data: chunk with non-empty delta content) percentiles in ms,
//       peak open streams; with --watch-pid, that process's VmRSS before, at peak and when all
//       N streams were open at once.
//
//   parley_stream_load rate    --url ... --model M --rps R --seconds S [--warmup 1] [--key K]
//                              [--max-connections 512] [--header "k: v"]... [--threads 1]
//       Open loop: non-streaming chat completions at a constant R per second on keep-alive
//       connections; latency is measured from each request's scheduled time (no coordinated
//       omission). Prints JSON with sent/ok/errors, achieved rate and latency percentiles.
//
//   parley_stream_load turns   --base http://127.0.0.1:P --model M --count N
//                              (--key K | --keys-file F) [--concurrency 16] [--conversation]
//       N chat completions, round-robin over the keys, C at a time; with --conversation each
//       first creates a server-side conversation (POST /v1/conversations) and chats in it, so
//       each leaves a live conversation actor. Prints JSON with ok/errors/seconds/per_second.
//
// Every mode stops by itself (timeouts everywhere); a target that is not on loopback is refused.
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <deque>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using steady = std::chrono::steady_clock;
using error_code = boost::system::error_code;

namespace {

// ---- small helpers ---------------------------------------------------------------------------

[[noreturn]] void die(const std::string& msg) {
  std::cerr << "parley_stream_load: " << msg << "\n";
  std::exit(2);
}

struct args {
  std::string mode;
  std::multimap<std::string, std::string> kv;
  std::vector<std::string> flags;

  std::string get(const std::string& k, const std::string& def = "") const {
    auto it = kv.find(k);
    return it == kv.end() ? def : it->second;
  }
  double num(const std::string& k, double def) const {
    auto it = kv.find(k);
    if (it == kv.end())
      return def;
    try {
      return std::stod(it->second);
    } catch (...) {
      die("--" + k + ": not a number: " + it->second);
    }
  }
  bool flag(const std::string& k) const { return std::find(flags.begin(), flags.end(), k) != flags.end(); }
  std::vector<std::string> all(const std::string& k) const {
    std::vector<std::string> out;
    auto [b, e] = kv.equal_range(k);
    for (auto it = b; it != e; ++it)
      out.push_back(it->second);
    return out;
  }
};

args parse_args(int argc, char** argv) {
  static const std::vector<std::string> boolean = {"conversation"};
  args a;
  if (argc < 2)
    die("usage: parley_stream_load serve|streams|rate|turns [--option value]... (see the source)");
  a.mode = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string s = argv[i];
    if (s.rfind("--", 0) != 0)
      die("unexpected argument: " + s);
    s = s.substr(2);
    if (std::find(boolean.begin(), boolean.end(), s) != boolean.end()) {
      a.flags.push_back(s);
      continue;
    }
    if (i + 1 >= argc)
      die("--" + s + " needs a value");
    a.kv.emplace(s, argv[++i]);
  }
  return a;
}

struct url {
  std::string host;
  unsigned short port = 0;
  std::string path;
};

bool is_loopback(const std::string& h) { return h == "127.0.0.1" || h == "localhost" || h == "::1"; }

url parse_url(const std::string& s) {
  const std::string scheme = "http://";
  if (s.rfind(scheme, 0) != 0)
    die("only http:// URLs: " + s);
  std::string rest = s.substr(scheme.size());
  auto slash = rest.find('/');
  std::string hostport = slash == std::string::npos ? rest : rest.substr(0, slash);
  url u;
  u.path = slash == std::string::npos ? "/" : rest.substr(slash);
  auto colon = hostport.rfind(':');
  if (colon == std::string::npos)
    die("URL needs a port: " + s);
  u.host = hostport.substr(0, colon);
  u.port = static_cast<unsigned short>(std::stoi(hostport.substr(colon + 1)));
  if (!is_loopback(u.host))
    die("refusing a target that is not on loopback: " + s);
  if (u.host == "localhost")
    u.host = "127.0.0.1";
  return u;
}

tcp::endpoint endpoint_of(const url& u) { return {asio::ip::make_address(u.host), u.port}; }

double ms_since(steady::time_point t0, steady::time_point t1) {
  return std::chrono::duration<double, std::milli>(t1 - t0).count();
}

std::string fmt(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.3f", v);
  return b;
}

/// {"p50":..,"p90":..,"p99":..,"max":..,"mean":..} in ms (nearest rank); nulls when empty.
std::string percentiles(std::vector<double> v) {
  if (v.empty())
    return R"({"p50":null,"p90":null,"p99":null,"max":null,"mean":null})";
  std::sort(v.begin(), v.end());
  auto at = [&](double q) {
    std::size_t rank = static_cast<std::size_t>(std::ceil(q * v.size()));
    return v[std::min(v.size() - 1, rank == 0 ? 0 : rank - 1)];
  };
  double sum = 0;
  for (double x : v)
    sum += x;
  return "{\"p50\":" + fmt(at(0.50)) + ",\"p90\":" + fmt(at(0.90)) + ",\"p99\":" + fmt(at(0.99)) +
         ",\"max\":" + fmt(v.back()) + ",\"mean\":" + fmt(sum / v.size()) + "}";
}

std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\')
      o += '\\', o += c;
    else if (static_cast<unsigned char>(c) < 0x20)
      o += ' ';
    else
      o += c;
  }
  return o;
}

/// Error counters by kind, shared by all threads.
struct error_counts {
  std::mutex m;
  std::map<std::string, long> by_kind;
  long total = 0;
  std::string last_detail;
  void add(const std::string& kind, const std::string& detail = "") {
    std::lock_guard<std::mutex> g(m);
    ++by_kind[kind];
    ++total;
    if (!detail.empty())
      last_detail = detail;
  }
  std::string json() {
    std::lock_guard<std::mutex> g(m);
    std::string o = "{";
    for (auto& [k, n] : by_kind)
      o += (o.size() > 1 ? "," : "") + std::string("\"") + json_escape(k) + "\":" + std::to_string(n);
    return o + "}";
  }
};

/// VmRSS / VmHWM of a process in KiB (0 if unreadable).
std::pair<long, long> rss_kib(long pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  long rss = 0, hwm = 0;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0)
      rss = std::atol(line.c_str() + 6);
    else if (line.rfind("VmHWM:", 0) == 0)
      hwm = std::atol(line.c_str() + 6);
  }
  return {rss, hwm};
}

/// True when an SSE data payload carries a delta with non-empty content.
bool has_content(const std::string& payload) {
  std::size_t pos = 0;
  while ((pos = payload.find("\"content\"", pos)) != std::string::npos) {
    pos += 9;
    std::size_t i = pos;
    while (i < payload.size() && (payload[i] == ' ' || payload[i] == ':'))
      ++i;
    if (i + 1 < payload.size() && payload[i] == '"' && payload[i + 1] != '"')
      return true;
  }
  return false;
}

bool wants_stream(const std::string& body) {
  auto p = body.find("\"stream\"");
  if (p == std::string::npos)
    return false;
  p += 8;
  while (p < body.size() && (body[p] == ' ' || body[p] == ':'))
    ++p;
  return body.compare(p, 4, "true") == 0;
}

void run_threads(asio::io_context& io, int threads) {
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i)
    pool.emplace_back([&io] { io.run(); });
  io.run();
  for (auto& t : pool)
    t.join();
}

/// 10k streams need 10k descriptors: raise the soft limit to the hard one.
void raise_nofile() {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
  }
}

// ---- serve: the streaming upstream -----------------------------------------------------------

struct serve_cfg {
  int tokens = 20;
  double tokens_per_second = 2;
  std::atomic<long> chat_requests{0}, streams_done{0}, dropped{0};
};

std::string sse_chunk(const std::string& payload) {
  std::string data = "data: " + payload + "\n\n";
  char head[32];
  std::snprintf(head, sizeof head, "%zx\r\n", data.size());
  return head + data + "\r\n";
}

const std::string k_chunk_prefix =
    R"({"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1764000000,"model":"bench-stream",)";

class upstream_conn : public std::enable_shared_from_this<upstream_conn> {
public:
  upstream_conn(tcp::socket s, serve_cfg& cfg) : sock_(std::move(s)), timer_(sock_.get_executor()), cfg_(cfg) {}
  void start() { read(); }

private:
  void read() {
    parser_.emplace();
    parser_->body_limit(8 * 1024 * 1024);
    http::async_read(sock_, buf_, *parser_, [self = shared_from_this()](error_code ec, std::size_t) {
      if (ec)
        return self->close();
      self->on_request();
    });
  }

  void on_request() {
    auto& req = parser_->get();
    keep_alive_ = req.keep_alive();
    std::string target(req.target());
    if (req.method() == http::verb::post && target.size() >= 17 &&
        target.compare(target.size() - 17, 17, "/chat/completions") == 0) {
      ++cfg_.chat_requests;
      if (wants_stream(req.body()))
        return start_stream();
      std::string body =
          R"({"id":"chatcmpl-bench","object":"chat.completion","created":1764000000,"model":"bench-stream","choices":[{"index":0,"message":{"role":"assistant","content":"hello from the bench upstream","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}})";
      return write_full(200, "application/json", body);
    }
    if (req.method() == http::verb::get && (target == "/healthz" || target == "/v1/models"))
      return write_full(200, "application/json", R"({"status":"ok"})");
    write_full(404, "application/json", R"({"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}})");
  }

  std::string head(unsigned status, const std::string& type, const std::string& extra) {
    std::string h = "HTTP/1.1 " + std::to_string(status) + (status == 200 ? " OK" : " Not Found") +
                    "\r\nContent-Type: " + type + "\r\n" + extra;
    if (!keep_alive_)
      h += "Connection: close\r\n";
    return h + "\r\n";
  }

  void write_full(unsigned status, const std::string& type, const std::string& body) {
    out_ = head(status, type, "Content-Length: " + std::to_string(body.size()) + "\r\n") + body;
    write_then([self = shared_from_this()] { self->next(); });
  }

  void start_stream() {
    sent_ = 0;
    out_ = head(200, "text/event-stream", "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n");
    out_ += sse_chunk(k_chunk_prefix + R"("choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]})");
    token();
  }

  void token() {
    if (sent_ < cfg_.tokens) {
      out_ += sse_chunk(k_chunk_prefix + R"("choices":[{"index":0,"delta":{"content":"tok)" +
                        std::to_string(sent_) + R"( "},"logprobs":null,"finish_reason":null}]})");
      ++sent_;
    }
    if (sent_ >= cfg_.tokens) {
      out_ += sse_chunk(k_chunk_prefix + R"("choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]})");
      out_ += sse_chunk(k_chunk_prefix + R"("choices":[],"usage":{"prompt_tokens":10,"completion_tokens":)" +
                        std::to_string(cfg_.tokens) + R"(,"total_tokens":)" + std::to_string(cfg_.tokens + 10) + "}}");
      out_ += sse_chunk("[DONE]");
      out_ += "0\r\n\r\n";
      return write_then([self = shared_from_this()] {
        ++self->cfg_.streams_done;
        self->next();
      });
    }
    write_then([self = shared_from_this()] {
      if (self->cfg_.tokens_per_second <= 0)
        return self->token();
      self->timer_.expires_after(std::chrono::microseconds(static_cast<long>(1e6 / self->cfg_.tokens_per_second)));
      self->timer_.async_wait([self](error_code ec) {
        if (ec)
          return self->close();
        self->token();
      });
    });
  }

  void write_then(std::function<void()> then) {
    asio::async_write(sock_, asio::buffer(out_), [self = shared_from_this(), then = std::move(then)](error_code ec, std::size_t) {
      if (ec) {
        ++self->cfg_.dropped;
        return self->close();
      }
      self->out_.clear();
      then();
    });
  }

  void next() {
    if (keep_alive_)
      return read();
    error_code ec;
    sock_.shutdown(tcp::socket::shutdown_send, ec);
    close();
  }

  void close() {
    error_code ec;
    timer_.cancel();
    sock_.close(ec);
  }

  tcp::socket sock_;
  asio::steady_timer timer_;
  serve_cfg& cfg_;
  beast::flat_buffer buf_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::string out_;
  int sent_ = 0;
  bool keep_alive_ = true;
};

class acceptor_loop : public std::enable_shared_from_this<acceptor_loop> {
public:
  acceptor_loop(asio::io_context& io, tcp::endpoint ep, serve_cfg& cfg) : io_(io), acc_(io), retry_(io), cfg_(cfg) {
    acc_.open(ep.protocol());
    acc_.set_option(tcp::acceptor::reuse_address(true));
    acc_.bind(ep);
    acc_.listen(65535);
  }
  unsigned short port() const { return acc_.local_endpoint().port(); }
  void start() {
    acc_.async_accept(io_, [self = shared_from_this()](error_code ec, tcp::socket s) {
      if (ec == asio::error::operation_aborted)
        return;
      if (ec) { // EMFILE and friends: back off a little, keep serving
        self->retry_.expires_after(std::chrono::milliseconds(20));
        return self->retry_.async_wait([self](error_code) { self->start(); });
      }
      error_code ignore;
      s.set_option(tcp::no_delay(true), ignore);
      std::make_shared<upstream_conn>(std::move(s), self->cfg_)->start();
      self->start();
    });
  }
  void stop() {
    error_code ec;
    acc_.close(ec);
  }

private:
  asio::io_context& io_;
  tcp::acceptor acc_;
  asio::steady_timer retry_;
  serve_cfg& cfg_;
};

int run_serve(const args& a) {
  std::string listen = a.get("listen", "127.0.0.1:0");
  auto colon = listen.rfind(':');
  std::string host = listen.substr(0, colon);
  if (!is_loopback(host))
    die("serve listens on loopback only");
  serve_cfg cfg;
  cfg.tokens = static_cast<int>(a.num("tokens", 20));
  cfg.tokens_per_second = a.num("tokens-per-second", 2);
  asio::io_context io;
  auto acc = std::make_shared<acceptor_loop>(
      io, tcp::endpoint(asio::ip::make_address(host == "localhost" ? "127.0.0.1" : host),
                        static_cast<unsigned short>(std::stoi(listen.substr(colon + 1)))),
      cfg);
  acc->start();
  std::cout << "{\"listening\":" << acc->port() << "}" << std::endl;
  asio::signal_set signals(io, SIGINT, SIGTERM);
  asio::steady_timer limit(io);
  auto stop = [&] {
    io.stop();
  };
  signals.async_wait([&](error_code, int) { stop(); });
  limit.expires_after(std::chrono::seconds(static_cast<long>(a.num("max-seconds", 600))));
  limit.async_wait([&](error_code ec) {
    if (!ec)
      stop();
  });
  run_threads(io, static_cast<int>(a.num("threads", 1)));
  std::cerr << "{\"chat_requests\":" << cfg.chat_requests << ",\"streams_done\":" << cfg.streams_done
            << ",\"dropped\":" << cfg.dropped << "}" << std::endl;
  return 0;
}

// ---- streams: N concurrent SSE streams -------------------------------------------------------

/// A socket with a deadline: when the timer fires first, the socket closes (failing its pending
/// operation) and `timed_out` says why. Shared by the streaming and the unary clients.
struct deadline_socket {
  explicit deadline_socket(asio::io_context& io) : sock(io), timer(io) {}
  /// Arms the deadline `seconds` from now; `owner` is kept alive until it fires or is cancelled.
  template <class Owner>
  void arm(double seconds, std::shared_ptr<Owner> owner) {
    timed_out = false;
    timer.expires_after(std::chrono::milliseconds(static_cast<long>(seconds * 1000)));
    timer.async_wait([this, owner = std::move(owner)](error_code ec) {
      if (ec)
        return;
      timed_out = true;
      error_code ignore;
      sock.close(ignore);
    });
  }
  tcp::socket sock;
  asio::steady_timer timer;
  bool timed_out = false;
};

struct streams_state {
  url target;
  std::string body, key, host_header;
  std::vector<std::pair<std::string, std::string>> headers;
  double timeout_s = 120;
  long n = 0;
  std::atomic<long> finished{0}, ok{0}, open{0}, peak_open{0}, connected{0};
  error_counts errors;
  std::mutex m;
  std::vector<double> ttft_ms;
  std::function<void()> on_all_finished;
  std::function<void()> on_all_open;
};

class stream_client : public std::enable_shared_from_this<stream_client> {
public:
  stream_client(asio::io_context& io, streams_state& st) : ds_(io), st_(st) {}

  void start() {
    ds_.arm(st_.timeout_s, shared_from_this());
    ds_.sock.async_connect(endpoint_of(st_.target), [self = shared_from_this()](error_code ec) {
      if (ec)
        return self->fail(self->ds_.timed_out ? "timeout" : "connect", ec.message());
      ++self->st_.connected;
      error_code ignore;
      self->ds_.sock.set_option(tcp::no_delay(true), ignore);
      self->write();
    });
  }

private:
  void write() {
    req_.method(http::verb::post);
    req_.target(st_.target.path);
    req_.version(11);
    req_.set(http::field::host, st_.host_header);
    req_.set(http::field::content_type, "application/json");
    req_.set(http::field::accept, "text/event-stream");
    if (!st_.key.empty())
      req_.set(http::field::authorization, "Bearer " + st_.key);
    for (auto& [k, v] : st_.headers)
      req_.set(k, v);
    req_.body() = st_.body;
    req_.prepare_payload();
    t_sent_ = steady::now();
    http::async_write(ds_.sock, req_, [self = shared_from_this()](error_code ec, std::size_t) {
      if (ec)
        return self->fail(self->ds_.timed_out ? "timeout" : "write", ec.message());
      self->read_header();
    });
  }

  void read_header() {
    parser_.emplace();
    parser_->body_limit(std::uint64_t{1} << 40); // not boost::none: Beast 1.74 then rejects any Content-Length
    http::async_read_header(ds_.sock, buf_, *parser_, [self = shared_from_this()](error_code ec, std::size_t) {
      if (ec)
        return self->fail(self->ds_.timed_out ? "timeout" : "read_header", ec.message());
      unsigned status = self->parser_->get().result_int();
      if (status != 200)
        return self->fail("status_" + std::to_string(status), "");
      self->is_open_ = true;
      long now_open = ++self->st_.open;
      long peak = self->st_.peak_open.load();
      while (now_open > peak && !self->st_.peak_open.compare_exchange_weak(peak, now_open)) {
      }
      if (now_open == self->st_.n && self->st_.on_all_open)
        self->st_.on_all_open();
      self->read_body();
    });
  }

  void read_body() {
    if (parser_->is_done())
      return finish();
    parser_->get().body().data = chunk_;
    parser_->get().body().size = sizeof chunk_;
    http::async_read_some(ds_.sock, buf_, *parser_, [self = shared_from_this()](error_code ec, std::size_t) {
      if (ec == http::error::need_buffer)
        ec = {};
      if (ec)
        return self->fail(self->ds_.timed_out ? "timeout" : "read_body", ec.message());
      std::size_t got = sizeof self->chunk_ - self->parser_->get().body().size;
      self->consume(self->chunk_, got);
      self->read_body();
    });
  }

  void consume(const char* p, std::size_t n) {
    pending_.append(p, n);
    std::size_t start = 0, nl;
    while ((nl = pending_.find('\n', start)) != std::string::npos) {
      std::string line = pending_.substr(start, nl - start);
      start = nl + 1;
      if (!line.empty() && line.back() == '\r')
        line.pop_back();
      if (line.rfind("data:", 0) != 0)
        continue;
      std::string payload = line.substr(line.size() > 5 && line[5] == ' ' ? 6 : 5);
      if (payload == "[DONE]") {
        got_done_ = true;
      } else if (payload.rfind("{\"error\"", 0) == 0) {
        error_frame_ = true;
        error_text_ = payload.substr(0, 300);
      } else if (!got_first_ && has_content(payload)) {
        got_first_ = true;
        double ttft = ms_since(t_sent_, steady::now());
        std::lock_guard<std::mutex> g(st_.m);
        st_.ttft_ms.push_back(ttft);
      }
    }
    pending_.erase(0, start);
  }

  void finish() {
    if (error_frame_)
      return fail("error_frame", error_text_);
    if (!got_first_)
      return fail("no_token", "");
    if (!got_done_)
      return fail("no_done", "");
    ++st_.ok;
    done();
  }

  void fail(const std::string& kind, const std::string& detail) {
    st_.errors.add(kind, detail);
    done();
  }

  void done() {
    if (finished_)
      return;
    finished_ = true;
    if (is_open_)
      --st_.open;
    error_code ignore;
    ds_.timer.cancel();
    ds_.sock.shutdown(tcp::socket::shutdown_both, ignore);
    ds_.sock.close(ignore);
    if (++st_.finished == st_.n && st_.on_all_finished)
      st_.on_all_finished();
  }

  deadline_socket ds_;
  streams_state& st_;
  http::request<http::string_body> req_;
  beast::flat_buffer buf_;
  std::optional<http::response_parser<http::buffer_body>> parser_;
  char chunk_[4096];
  std::string pending_, error_text_;
  steady::time_point t_sent_;
  bool got_first_ = false, got_done_ = false, error_frame_ = false;
  bool is_open_ = false, finished_ = false;
};

std::string chat_body(const std::string& model, bool stream) {
  return "{\"model\":\"" + json_escape(model) + "\"," + (stream ? "\"stream\":true," : "") +
         "\"messages\":[{\"role\":\"user\",\"content\":\"Say hello to the benchmark.\"}]}";
}

std::vector<std::pair<std::string, std::string>> extra_headers(const args& a) {
  std::vector<std::pair<std::string, std::string>> h;
  for (auto& s : a.all("header")) {
    auto c = s.find(':');
    if (c == std::string::npos)
      die("--header needs 'name: value': " + s);
    std::string v = s.substr(c + 1);
    v.erase(0, v.find_first_not_of(' '));
    h.emplace_back(s.substr(0, c), v);
  }
  return h;
}

int run_streams(const args& a) {
  streams_state st;
  st.target = parse_url(a.get("url"));
  st.host_header = st.target.host + ":" + std::to_string(st.target.port);
  st.key = a.get("key");
  st.headers = extra_headers(a);
  st.body = a.get("body", chat_body(a.get("model", "bench-stream"), true));
  st.n = static_cast<long>(a.num("streams", 100));
  st.timeout_s = a.num("timeout", 120);
  double open_rate = a.num("open-per-second", 0);
  long watch = static_cast<long>(a.num("watch-pid", 0));
  int threads = static_cast<int>(a.num("threads", 1));
  if (st.n <= 0)
    die("--streams must be positive");

  asio::io_context io;
  auto guard = asio::make_work_guard(io);
  auto t0 = steady::now();
  std::atomic<long> rss_peak{0}, rss_all_open{0};
  auto [rss_before, hwm_before] = watch ? rss_kib(watch) : std::pair<long, long>{0, 0};
  double all_open_s = -1;
  st.on_all_finished = [&] { asio::post(io, [&] { guard.reset(); io.stop(); }); };
  st.on_all_open = [&] {
    all_open_s = ms_since(t0, steady::now()) / 1000;
    if (watch)
      rss_all_open = rss_kib(watch).first;
  };

  // Launch: a tick every 10 ms opens the streams that are due.
  asio::steady_timer launcher(io), sampler(io), hard_stop(io);
  long launched = 0;
  std::function<void()> tick = [&] {
    long due = open_rate <= 0 ? st.n
                              : std::min<long>(st.n, static_cast<long>(ms_since(t0, steady::now()) / 1000 * open_rate) + 1);
    for (; launched < due; ++launched)
      std::make_shared<stream_client>(io, st)->start();
    if (launched < st.n) {
      launcher.expires_after(std::chrono::milliseconds(10));
      launcher.async_wait([&](error_code ec) {
        if (!ec)
          tick();
      });
    }
  };
  long most_open_sampled = -1, rss_most_open = 0;
  std::function<void()> sample = [&] {
    if (watch) {
      long r = rss_kib(watch).first;
      if (r > rss_peak)
        rss_peak = r;
      long open_now = st.open.load();
      if (open_now >= most_open_sampled) { // the reading with the most streams open
        most_open_sampled = open_now;
        rss_most_open = r;
      }
    }
    sampler.expires_after(std::chrono::milliseconds(100));
    sampler.async_wait([&](error_code ec) {
      if (!ec)
        sample();
    });
  };
  asio::post(io, tick);
  asio::post(io, sample);
  // Bounded: every stream has its own timeout; this is the backstop.
  double open_time = open_rate > 0 ? st.n / open_rate : 0;
  hard_stop.expires_after(std::chrono::milliseconds(static_cast<long>((st.timeout_s + open_time + 10) * 1000)));
  hard_stop.async_wait([&](error_code ec) {
    if (!ec) {
      guard.reset();
      io.stop();
    }
  });
  run_threads(io, threads);
  double secs = ms_since(t0, steady::now()) / 1000;
  long hwm_after = watch ? rss_kib(watch).second : 0;
  long unfinished = st.n - st.finished.load();
  if (unfinished > 0)
    st.errors.add("unfinished", "");

  std::lock_guard<std::mutex> g(st.m);
  std::cout << "{\"mode\":\"streams\",\"url\":\"" << json_escape(a.get("url")) << "\",\"n\":" << st.n
            << ",\"ok\":" << st.ok << ",\"errors\":" << (st.n - st.ok) << ",\"error_kinds\":" << st.errors.json()
            << ",\"last_error\":\"" << json_escape(st.errors.last_detail) << "\",\"connected\":" << st.connected
            << ",\"peak_open\":" << st.peak_open << ",\"all_open_after_s\":" << (all_open_s < 0 ? std::string("null") : fmt(all_open_s))
            << ",\"seconds\":" << fmt(secs) << ",\"ttft_ms\":" << percentiles(st.ttft_ms);
  if (watch)
    std::cout << ",\"rss_kib\":{\"before\":" << rss_before << ",\"peak_sampled\":" << rss_peak
              << ",\"all_open\":" << rss_all_open << ",\"most_open\":" << rss_most_open
              << ",\"most_open_streams\":" << most_open_sampled << ",\"hwm_before\":" << hwm_before << ",\"hwm_after\":" << hwm_after << "}";
  std::cout << "}" << std::endl;
  return 0;
}

// ---- a keep-alive unary HTTP client connection (rate, turns) ---------------------------------

struct unary_result {
  bool ok = false;
  unsigned status = 0;
  std::string kind, body;
};

class unary_conn : public std::enable_shared_from_this<unary_conn> {
public:
  using callback = std::function<void(unary_result)>;
  unary_conn(asio::io_context& io, tcp::endpoint ep, std::string host, double timeout_s)
      : ds_(io), ep_(ep), host_(std::move(host)), timeout_s_(timeout_s) {}

  void request(http::verb verb, const std::string& target, const std::string& body,
               const std::vector<std::pair<std::string, std::string>>& headers, callback cb) {
    cb_ = std::move(cb);
    req_ = {};
    req_.method(verb);
    req_.target(target);
    req_.version(11);
    req_.keep_alive(true);
    req_.set(http::field::host, host_);
    req_.set(http::field::content_type, "application/json");
    for (auto& [k, v] : headers)
      req_.set(k, v);
    req_.body() = body;
    req_.prepare_payload();
    ds_.arm(timeout_s_, shared_from_this());
    if (ds_.sock.is_open())
      return write();
    ds_.sock.async_connect(ep_, [self = shared_from_this()](error_code ec) {
      if (ec)
        return self->complete(self->ds_.timed_out ? "timeout" : "connect", 0);
      error_code ignore;
      self->ds_.sock.set_option(tcp::no_delay(true), ignore);
      self->write();
    });
  }

private:
  void write() {
    http::async_write(ds_.sock, req_, [self = shared_from_this()](error_code ec, std::size_t) {
      if (ec)
        return self->complete(self->ds_.timed_out ? "timeout" : "write", 0);
      self->res_ = {};
      http::async_read(self->ds_.sock, self->buf_, self->res_, [self](error_code ec, std::size_t) {
        if (ec)
          return self->complete(self->ds_.timed_out ? "timeout" : "read", 0);
        unsigned status = self->res_.result_int();
        if (!self->res_.keep_alive()) {
          error_code ignore;
          self->ds_.sock.close(ignore);
        }
        self->complete(status == 200 ? "" : "status_" + std::to_string(status), status);
      });
    });
  }

  void complete(const std::string& kind, unsigned status) {
    ds_.timer.cancel();
    unary_result r;
    r.ok = kind.empty();
    r.kind = kind;
    r.status = status;
    r.body = std::move(res_.body());
    if (!r.ok && status == 0) { // transport failure: reconnect next time
      error_code ignore;
      ds_.sock.close(ignore);
      buf_.consume(buf_.size());
    }
    auto cb = std::move(cb_);
    cb_ = nullptr;
    if (cb)
      cb(std::move(r));
  }

  deadline_socket ds_;
  tcp::endpoint ep_;
  std::string host_;
  double timeout_s_;
  http::request<http::string_body> req_;
  http::response<http::string_body> res_;
  beast::flat_buffer buf_;
  callback cb_;
};

// ---- rate: open-loop constant-rate unary requests --------------------------------------------

int run_rate(const args& a) {
  url target = parse_url(a.get("url"));
  std::string host = target.host + ":" + std::to_string(target.port);
  auto headers = extra_headers(a);
  if (!a.get("key").empty())
    headers.emplace_back("Authorization", "Bearer " + a.get("key"));
  std::string body = a.get("body", chat_body(a.get("model", "bench"), false));
  double rps = a.num("rps", 1000), seconds = a.num("seconds", 5), warmup = a.num("warmup", 1);
  std::size_t max_conns = static_cast<std::size_t>(a.num("max-connections", 512));
  double timeout_s = a.num("timeout", 10);

  asio::io_context io(1);
  auto guard = asio::make_work_guard(io);
  std::vector<std::shared_ptr<unary_conn>> idle;
  std::size_t conns = 0;
  std::deque<steady::time_point> backlog; // scheduled but no connection free
  std::vector<double> lat;
  lat.reserve(static_cast<std::size_t>(rps * seconds) + 16);
  long sent = 0, ok = 0, completed = 0, measured_errors = 0, total_planned = static_cast<long>(rps * (warmup + seconds));
  error_counts errors;
  auto t0 = steady::now() + std::chrono::milliseconds(50);
  auto t_measure = t0 + std::chrono::microseconds(static_cast<long>(warmup * 1e6));
  auto t_end = t0 + std::chrono::microseconds(static_cast<long>((warmup + seconds) * 1e6));
  steady::time_point last_done = t0;

  std::function<void(std::shared_ptr<unary_conn>, steady::time_point)> issue;
  auto finished_one = [&] {
    ++completed;
    if (completed == total_planned)
      asio::post(io, [&] { guard.reset(); io.stop(); });
  };
  issue = [&](std::shared_ptr<unary_conn> c, steady::time_point scheduled) {
    ++sent;
    c->request(http::verb::post, target.path, body, headers, [&, c, scheduled](unary_result r) {
      auto now = steady::now();
      bool measured = scheduled >= t_measure;
      if (measured) {
        last_done = now;
        if (r.ok) {
          ++ok;
          lat.push_back(ms_since(scheduled, now));
        } else {
          ++measured_errors;
          errors.add(r.kind, r.body.substr(0, 200));
        }
      }
      finished_one();
      if (!backlog.empty()) {
        auto s = backlog.front();
        backlog.pop_front();
        return issue(c, s);
      }
      idle.push_back(c);
    });
  };
  auto dispatch = [&](steady::time_point scheduled) {
    if (!idle.empty()) {
      auto c = idle.back();
      idle.pop_back();
      return issue(c, scheduled);
    }
    if (conns < max_conns) {
      ++conns;
      return issue(std::make_shared<unary_conn>(io, endpoint_of(target), host, timeout_s), scheduled);
    }
    backlog.push_back(scheduled);
  };

  long scheduled_n = 0, measured_planned = 0;
  asio::steady_timer ticker(io), hard_stop(io);
  std::function<void()> tick = [&] {
    auto now = steady::now();
    while (scheduled_n < total_planned) {
      auto when = t0 + std::chrono::nanoseconds(static_cast<long>(scheduled_n * 1e9 / rps));
      if (when > now)
        break;
      ++scheduled_n;
      if (when >= t_measure)
        ++measured_planned;
      dispatch(when);
    }
    if (scheduled_n < total_planned) {
      ticker.expires_after(std::chrono::microseconds(200));
      ticker.async_wait([&](error_code ec) {
        if (!ec)
          tick();
      });
    }
  };
  ticker.expires_at(t0);
  ticker.async_wait([&](error_code ec) {
    if (!ec)
      tick();
  });
  hard_stop.expires_at(t_end + std::chrono::milliseconds(static_cast<long>(timeout_s * 1000) + 2000));
  hard_stop.async_wait([&](error_code ec) {
    if (!ec) {
      guard.reset();
      io.stop();
    }
  });
  io.run();
  long not_done = measured_planned - ok - measured_errors;
  if (not_done > 0)
    errors.add("unfinished", "");
  double span = std::max(1e-9, ms_since(t_measure, std::max(last_done, t_end)) / 1000);
  std::cout << "{\"mode\":\"rate\",\"url\":\"" << json_escape(a.get("url")) << "\",\"target_rps\":" << fmt(rps)
            << ",\"seconds\":" << fmt(seconds) << ",\"warmup_seconds\":" << fmt(warmup) << ",\"planned\":" << measured_planned
            << ",\"ok\":" << ok << ",\"errors\":" << (measured_planned - ok) << ",\"error_kinds\":" << errors.json()
            << ",\"last_error\":\"" << json_escape(errors.last_detail) << "\",\"connections\":" << conns
            << ",\"achieved_rps\":" << fmt(ok / span) << ",\"latency_ms\":" << percentiles(lat) << "}" << std::endl;
  return 0;
}

// ---- turns: conversations and per-tenant requests --------------------------------------------

std::string json_string_field(const std::string& body, const std::string& field) {
  std::string pat = "\"" + field + "\":\"";
  auto p = body.find(pat);
  if (p == std::string::npos)
    return {};
  p += pat.size();
  auto e = body.find('"', p);
  return e == std::string::npos ? std::string() : body.substr(p, e - p);
}

int run_turns(const args& a) {
  url base = parse_url(a.get("base"));
  std::string host = base.host + ":" + std::to_string(base.port);
  std::vector<std::string> keys;
  if (!a.get("keys-file").empty()) {
    std::ifstream f(a.get("keys-file"));
    std::string k;
    while (std::getline(f, k))
      if (!k.empty())
        keys.push_back(k);
  } else if (!a.get("key").empty()) {
    keys.push_back(a.get("key"));
  }
  if (keys.empty())
    die("turns needs --key or --keys-file");
  std::string model = a.get("model", "parley-echo");
  long count = static_cast<long>(a.num("count", 100));
  int concurrency = static_cast<int>(a.num("concurrency", 16));
  bool conversation = a.flag("conversation");
  double timeout_s = a.num("timeout", 30);

  asio::io_context io(1);
  auto guard = asio::make_work_guard(io);
  long next = 0, done = 0, ok = 0;
  error_counts errors;
  std::vector<double> lat;
  auto t0 = steady::now();
  auto prefix = base.path == "/" ? std::string() : base.path;
  if (!prefix.empty() && prefix.back() == '/')
    prefix.pop_back();

  std::function<void(std::shared_ptr<unary_conn>)> work;
  auto complete = [&](std::shared_ptr<unary_conn> c, bool good, steady::time_point started, const unary_result& r) {
    ++done;
    if (good) {
      ++ok;
      lat.push_back(ms_since(started, steady::now()));
    } else {
      errors.add(r.kind.empty() ? "bad_body" : r.kind, r.body.substr(0, 200));
    }
    if (done == count)
      return asio::post(io, [&] { guard.reset(); io.stop(); });
    work(c);
  };
  work = [&](std::shared_ptr<unary_conn> c) {
    if (next >= count)
      return;
    long i = next++;
    std::vector<std::pair<std::string, std::string>> h = {{"Authorization", "Bearer " + keys[i % keys.size()]}};
    auto started = steady::now();
    auto chat = [&, c, h, i, started](const std::string& conv) {
      std::string body = "{\"model\":\"" + json_escape(model) + "\"," +
                         (conv.empty() ? std::string() : "\"conversation\":\"" + conv + "\",") +
                         "\"messages\":[{\"role\":\"user\",\"content\":\"hello number " + std::to_string(i) + "\"}]}";
      c->request(http::verb::post, prefix + "/v1/chat/completions", body, h, [&, c, started](unary_result r) {
        bool good = r.ok && r.body.find("\"chat.completion\"") != std::string::npos;
        complete(c, good, started, r);
      });
    };
    if (!conversation)
      return chat("");
    c->request(http::verb::post, prefix + "/v1/conversations", "{}", h, [&, c, started, chat](unary_result r) {
      std::string id = r.ok ? json_string_field(r.body, "id") : std::string();
      if (id.empty())
        return complete(c, false, started, r);
      chat(id);
    });
  };
  for (int w = 0; w < concurrency; ++w)
    work(std::make_shared<unary_conn>(io, endpoint_of(base), host, timeout_s));
  asio::steady_timer hard_stop(io);
  hard_stop.expires_after(std::chrono::milliseconds(static_cast<long>(a.num("max-seconds", 600) * 1000)));
  hard_stop.async_wait([&](error_code ec) {
    if (!ec) {
      guard.reset();
      io.stop();
    }
  });
  if (count > 0)
    io.run();
  double secs = ms_since(t0, steady::now()) / 1000;
  std::cout << "{\"mode\":\"turns\",\"conversation\":" << (conversation ? "true" : "false") << ",\"count\":" << count
            << ",\"ok\":" << ok << ",\"errors\":" << (count - ok) << ",\"error_kinds\":" << errors.json()
            << ",\"last_error\":\"" << json_escape(errors.last_detail) << "\",\"seconds\":" << fmt(secs)
            << ",\"per_second\":" << fmt(ok / std::max(secs, 1e-9)) << ",\"latency_ms\":" << percentiles(lat) << "}"
            << std::endl;
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  raise_nofile();
  args a = parse_args(argc, argv);
  if (a.mode == "serve")
    return run_serve(a);
  if (a.mode == "streams")
    return run_streams(a);
  if (a.mode == "rate")
    return run_rate(a);
  if (a.mode == "turns")
    return run_turns(a);
  die("unknown mode: " + a.mode + " (serve|streams|rate|turns)");
}
