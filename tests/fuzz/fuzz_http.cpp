// fuzz_http: the real HTTP server (parley::runtime::app, in-process) over loopback.
//
// LLVMFuzzerInitialize starts one node -- SQLite in a fresh temporary directory, 127.0.0.1
// port 0, the built-in parley-echo model unpaced, a fixed admin key -- and provisions through
// the admin API two tenants with one API key each: "chat" (used by the chat modes) and
// "target" (the one the admin modes may patch, delete or give keys).
//
// Each input is one connection: connect, write the request bytes, shutdown(SHUT_WR), read
// until the server closes (or 2 s pass), close. Byte 0 of the input picks how the rest becomes
// the request (mode = byte % 8, so the digits '0'..'7' name the modes in the seed corpus):
//   0  the rest, verbatim (request line, headers, framing, pipelining: everything raw)
//   1  POST /v1/chat/completions, tenant key, the rest as the JSON body
//   2  POST /admin/v1/tenants, admin key, the rest as the JSON body
//   3  <method picked by the rest's byte 0> <target: the first line after it>, tenant key,
//      the remainder as the body (path canonicalisation, routing, queries, conversations);
//      the method is GET POST PATCH DELETE PUT HEAD OPTIONS TRACE for byte % 8 (so '0'..'7')
//   4  the same with the admin key; in both, "{tenant}" and "{key}" in the target stand for
//      the target tenant's id and its key's id
//   5  PATCH /admin/v1/tenants/{tenant}, admin key, the rest as the JSON body
//   6  a valid chat request whose header block gets the rest inserted (header parsing)
//   7  POST /admin/v1/tenants/{tenant}/keys, admin key, the rest as the JSON body
//
// Findings, each an abort() that libFuzzer records with the input:
//  - a crash or sanitizer report anywhere in the server (same process);
//  - the listener refuses a connection, or GET /healthz (checked every 64 inputs and at the
//    end) does not answer 200 within 10 s: a dead or wedged server;
//  - a response status 500 (an unhandled exception or an internal error on client input);
//  - a log line that is not one valid JSON object (log injection, broken escaping), or a
//    line at level error or critical (e.g. "unhandled exception in request").
// The line-level findings come from the server's threads and may land while the next input
// runs: the message printed with the abort names the line, which is the reproduction.
#include "parley/config/logging.hpp"
#include "parley/config/settings.hpp"
#include "parley/runtime/app.hpp"

#include <nlohmann/json.hpp>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/base_sink.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

namespace {

using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr const char* admin_key = "fuzz-admin-key-0123456789abcdef0123456789abcdef";
constexpr int health_every = 64;

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "fuzz_http: FINDING: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

/// Formats every log line like production does (the JSON pattern) and checks it, then drops
/// it: the fuzzer's own output stays readable and nothing accumulates.
class checking_sink : public spdlog::sinks::base_sink<std::mutex> {
protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t buf;
    formatter_->format(msg, buf);
    std::string_view line(buf.data(), buf.size());
    if (!line.empty() && line.back() == '\n')
      line.remove_suffix(1);
    auto parsed = nlohmann::json::parse(line, nullptr, false);
    if (parsed.is_discarded() || !parsed.is_object())
      finding("a log line is not one JSON object: " + std::string(line));
    if (msg.level >= spdlog::level::err)
      finding("a log line at level error or above: " + std::string(line));
  }
  void flush_() override {}
};

// -- loopback I/O ------------------------------------------------------------------

uint16_t g_port = 0;

int connect_loopback() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    finding(std::string("socket(): ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(g_port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;
    if (err == EINTR) { // libFuzzer's SIGALRM (-timeout) interrupted it: the connect goes on
      pollfd p{fd, POLLOUT, 0};
      while (::poll(&p, 1, 10000) < 0 && errno == EINTR) {
      }
      socklen_t len = sizeof err;
      if (!(p.revents & POLLOUT) || ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = ETIMEDOUT;
    }
    if (err != 0 && err != EINTR)
      finding(std::string("the listener refused a connection: ") + std::strerror(err));
  }
  return fd;
}

/// Writes `request` while reading whatever the server answers (so neither side can block
/// on a full buffer), half-closes, then reads until EOF or `deadline`. Returns what was
/// read. The server may close or reset early (413, 431, a malformed head): that is fine.
std::string round_trip(const std::string& request, clock_type::duration limit) {
  auto deadline = clock_type::now() + limit;
  int fd = connect_loopback();
  std::string reply;
  std::size_t sent = 0;
  bool write_open = true;
  bool read_open = true;
  char buf[16384];
  while (read_open) {
    if (write_open && sent == request.size()) {
      ::shutdown(fd, SHUT_WR);
      write_open = false;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now());
    if (left <= 0ms)
      break;
    pollfd p{fd, static_cast<short>(POLLIN | (write_open ? POLLOUT : 0)), 0};
    int n = ::poll(&p, 1, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      auto r = ::recv(fd, buf, sizeof buf, 0);
      if (r > 0)
        reply.append(buf, static_cast<std::size_t>(r));
      else if (r == 0 || (errno != EINTR && errno != EAGAIN))
        read_open = false;
    }
    if (write_open && (p.revents & POLLOUT)) {
      auto w = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (w > 0)
        sent += static_cast<std::size_t>(w);
      else if (w < 0 && errno != EINTR && errno != EAGAIN)
        write_open = false; // closed by the server before it took everything
    }
  }
  ::close(fd);
  return reply;
}

/// The status code of the first response in `reply`, or 0.
int status_of(std::string_view reply) {
  if (reply.size() < 12 || reply.substr(0, 7) != "HTTP/1.")
    return 0;
  return std::atoi(std::string(reply.substr(9, 3)).c_str());
}

std::string body_of(const std::string& reply) {
  auto at = reply.find("\r\n\r\n");
  return at == std::string::npos ? std::string{} : reply.substr(at + 4);
}

std::string request(std::string_view method, std::string_view target, std::string_view key,
                    std::string_view body, std::string_view extra_headers = {}) {
  std::string r;
  r.reserve(256 + target.size() + body.size() + extra_headers.size());
  r.append(method).append(" ").append(target).append(" HTTP/1.1\r\n");
  r.append("Host: 127.0.0.1\r\nConnection: close\r\n");
  if (!key.empty())
    r.append("Authorization: Bearer ").append(key).append("\r\n");
  if (method != "GET" && method != "HEAD") {
    r.append("Content-Type: application/json\r\n");
    r.append("Content-Length: ").append(std::to_string(body.size())).append("\r\n");
  }
  r.append(extra_headers);
  r.append("\r\n");
  if (method != "GET" && method != "HEAD")
    r.append(body);
  return r;
}

/// One provisioning call at start-up; anything but the expected status stops the fuzzer.
nlohmann::json admin_call(std::string_view method, const std::string& target,
                          const nlohmann::json& body, int expected) {
  auto reply = round_trip(request(method, target, admin_key, body.dump()), 10s);
  if (status_of(reply) != expected) {
    std::fprintf(stderr, "fuzz_http: start-up call %s %s answered:\n%s\n",
                 std::string(method).c_str(), target.c_str(), reply.c_str());
    std::abort();
  }
  return nlohmann::json::parse(body_of(reply));
}

void check_health() {
  auto reply = round_trip("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 10s);
  if (status_of(reply) != 200)
    finding("GET /healthz did not answer 200 within 10 s; it answered: " + reply.substr(0, 200));
}

// -- the node ------------------------------------------------------------------------

struct node {
  std::string dir;
  std::unique_ptr<parley::runtime::app> app;
  std::string chat_key;       ///< API key of the "chat" tenant
  std::string target_tenant;  ///< id of the "target" tenant
  std::string target_key_id;  ///< id of the "target" tenant's key
};

node* g_node = nullptr;
std::atomic<uint64_t> g_runs{0};

/// Runs at exit (libFuzzer ends a finished run with exit(0); findings end it with _Exit and
/// never come here). The last inputs count too, so the server must still answer; then the
/// process ends at once, server running. Stopping it here is not an option: statics that CAF
/// and the server created after this handler was registered are already destroyed by now
/// (app::stop() then crashes in caf::actor_system's destructor), and shutdown is not what this
/// target tests -- the integration suite does.
void stop_node() {
  if (!g_node)
    return;
  check_health();
  std::error_code ec;
  std::filesystem::remove_all(g_node->dir, ec);
  std::fflush(nullptr);
  std::_Exit(0);
}

void start_node() {
  auto* n = new node; // lives for the process; stop_node() ends it at exit
  std::string tmpl = (std::filesystem::temp_directory_path() / "parley-fuzz-http.XXXXXX").string();
  if (!mkdtemp(tmpl.data())) {
    std::perror("fuzz_http: mkdtemp");
    std::abort();
  }
  n->dir = tmpl;

  parley::config::settings s;
  s.http.listen = "127.0.0.1:0";
  s.http.io_threads = 1;
  s.http.read_timeout_seconds = 5;
  s.data.dir = n->dir;
  s.admin.key = admin_key;
  s.actors.scheduler_threads = 0;
  s.shutdown.grace_seconds = 2;
  s.log.level = "debug";
  s.chat.echo_tokens_per_second = 0;
  // Every input comes from 127.0.0.1: without this, the failed-auth throttle would answer
  // 429 to nearly everything after the first 30 bad keys and hide the code behind it.
  s.auth.failed_auth_per_minute = 1000000;
  // Likewise the finite default tenant limits (600 requests a minute...) would turn the chat
  // modes into 429s within a second; inputs can still set limits (modes 2, 4 and 5).
  s.tenant_defaults.requests_per_minute = 0;
  s.tenant_defaults.tokens_per_minute = 0;
  s.tenant_defaults.tokens_per_day = 0;
  s.tenant_defaults.max_concurrent = 0;
  s.tenant_defaults.max_request_tokens = 0;

  auto sink = std::make_shared<checking_sink>();
  auto logger = std::make_shared<spdlog::logger>("fuzz", sink);
  logger->set_formatter(std::make_unique<spdlog::pattern_formatter>(
    parley::log::json_pattern, spdlog::pattern_time_type::utc, "\n"));
  logger->set_level(spdlog::level::debug);

  n->app = std::make_unique<parley::runtime::app>(s, logger);
  g_port = n->app->start();
  g_node = n;
  std::atexit(stop_node);

  auto chat = admin_call("POST", "/admin/v1/tenants", {{"slug", "chat"}, {"name", "Chat"}}, 201);
  auto key = admin_call("POST", "/admin/v1/tenants/" + chat["id"].get<std::string>() + "/keys",
                        {{"name", "fuzz"}}, 201);
  n->chat_key = key["key"].get<std::string>();
  auto target = admin_call("POST", "/admin/v1/tenants", {{"slug", "target"}, {"name", "Target"}}, 201);
  n->target_tenant = target["id"].get<std::string>();
  auto tkey = admin_call("POST", "/admin/v1/tenants/" + n->target_tenant + "/keys",
                         {{"name", "target"}}, 201);
  n->target_key_id = tkey["id"].get<std::string>();
  check_health();
  std::fprintf(stderr, "fuzz_http: parley listening on 127.0.0.1:%u (data in %s)\n",
               static_cast<unsigned>(g_port), n->dir.c_str());
}

// -- inputs -> requests -------------------------------------------------------------

std::string_view first_line(std::string_view s, std::string_view* rest = nullptr) {
  auto nl = s.find('\n');
  if (rest)
    *rest = nl == std::string_view::npos ? std::string_view{} : s.substr(nl + 1);
  auto line = s.substr(0, nl);
  if (!line.empty() && line.back() == '\r')
    line.remove_suffix(1);
  return line;
}

std::string substitute(std::string_view target) {
  std::string out(target);
  for (auto [name, value] : {std::pair<std::string_view, const std::string*>{"{tenant}", &g_node->target_tenant},
                             {"{key}", &g_node->target_key_id}}) {
    for (auto at = out.find(name); at != std::string::npos; at = out.find(name, at + value->size()))
      out.replace(at, name.size(), *value);
  }
  return out;
}

std::string build(const uint8_t* data, std::size_t size) {
  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  const auto& n = *g_node;
  const std::string tenant_path = "/admin/v1/tenants/" + n.target_tenant;
  switch (data[0] % 8) {
    case 0:
      return std::string(rest);
    case 1:
      return request("POST", "/v1/chat/completions", n.chat_key, rest);
    case 2:
      return request("POST", "/admin/v1/tenants", admin_key, rest);
    case 3:
    case 4: {
      static constexpr std::string_view methods[] = {"GET", "POST", "PATCH", "DELETE",
                                                     "PUT", "HEAD", "OPTIONS", "TRACE"};
      if (rest.empty())
        return {};
      auto method = methods[static_cast<unsigned char>(rest[0]) % 8];
      std::string_view body;
      auto target = first_line(rest.substr(1), &body);
      return request(method, substitute(target), data[0] % 8 == 3 ? std::string_view(n.chat_key)
                                                                  : std::string_view(admin_key),
                     body);
    }
    case 5:
      return request("PATCH", tenant_path, admin_key, rest);
    case 6: {
      std::string headers(rest);
      if (headers.size() < 2 || headers.compare(headers.size() - 2, 2, "\r\n") != 0)
        headers += "\r\n";
      return request("POST", "/v1/chat/completions", n.chat_key,
                     R"({"model":"parley-echo","messages":[{"role":"user","content":"hi"}]})",
                     headers);
    }
    default:
      return request("POST", tenant_path + "/keys", admin_key, rest);
  }
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  start_node();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  if (size == 0)
    return 0;
  auto bytes = build(data, size);
  if (!bytes.empty()) {
    auto reply = round_trip(bytes, 2s);
    if (status_of(reply) == 500)
      finding("the server answered 500:\n" + reply.substr(0, 2000));
  }
  if (++g_runs % health_every == 0)
    check_health();
  return 0;
}
