// SIGTERM while 200 SSE streams are open, half from parley-echo and half relayed from the fake
// upstream: every stream ends cleanly -- with [DONE] when it finishes within the grace
// period, else with one error event (server_shutdown) and [DONE] -- and always with the
// chunked body's last chunk, never cut off; a request still waiting for its whole answer gets
// 503 server_shutdown; new connections are refused; the process exits 0, and every call is in
// the usage ledger (ok, or cancelled when the grace period cut it short).
#include "support/http_client.hpp"
#include "support/process.hpp"
#include "support/sse.hpp"

#include "parley/persistence/open.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <thread>

using namespace parley::test;
using json = nlohmann::json;
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using steady = std::chrono::steady_clock;

namespace {

const std::string admin = "drain-admin-key-0123456789abcdef0123456789";

/// What one stream saw, filled in by the client thread; read by the test thread after join.
struct stream_result {
  int status = 0;
  std::string body;        ///< the decoded (de-chunked) SSE body
  bool complete = false;   ///< the response ended with the chunked body's last chunk
  std::string ended_by;    ///< "" when complete, else how it ended (eof, reset, timeout...)
  steady::time_point ended_at{};
};

/// N chat completions (streamed, or not) on one io thread, each on its own connection. The thread only
/// records (stream_result); the test thread waits on mid_stream() and asserts after join().
class stream_set {
public:
  stream_set(uint16_t port, const std::string& key, std::vector<std::string> bodies,
             std::chrono::seconds bound)
    : results_(bodies.size()), deadline_(steady::now() + bound) {
    for (std::size_t i = 0; i < bodies.size(); ++i)
      streams_.push_back(std::make_shared<one>(ioc_, *this, i, port, key, std::move(bodies[i])));
  }
  ~stream_set() { join(); }

  void start() {
    for (auto& s : streams_)
      s->start();
    thread_ = std::thread([this] { ioc_.run(); });
  }
  /// Streams that have received at least one content delta (any thread).
  int mid_stream() const { return mid_.load(); }
  /// Streams that ended, completely or not (any thread).
  int ended() const { return ended_.load(); }
  /// Waits for every stream to end (each is bounded by the set's deadline).
  void join() {
    if (thread_.joinable())
      thread_.join();
  }
  const std::vector<stream_result>& results() const { return results_; }

private:
  struct one : std::enable_shared_from_this<one> {
    one(asio::io_context& ioc, stream_set& set, std::size_t i, uint16_t port, const std::string& key,
        std::string body)
      : set(set), i(i), stream(ioc), port(port) {
      request = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + key +
                "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                "\r\n\r\n" + body;
      parser.body_limit(64u << 20);
      // Not eager: with eager parsing a read only completes at the end of a chunked body
      // (after each chunk the parser wants the next chunk's header), and we watch it flow.
    }

    void start() {
      stream.expires_at(set.deadline_);
      stream.async_connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), port),
                           [self = shared_from_this()](beast::error_code ec) {
                             if (ec)
                               return self->end("connect: " + ec.message());
                             self->write();
                           });
    }
    void write() {
      asio::async_write(stream, asio::buffer(request),
                        [self = shared_from_this()](beast::error_code ec, std::size_t) {
                          if (ec)
                            return self->end("write: " + ec.message());
                          self->read();
                        });
    }
    void read() {
      http::async_read_some(stream, buffer, parser,
                            [self = shared_from_this()](beast::error_code ec, std::size_t) {
                              self->on_read(ec);
                            });
    }
    void on_read(beast::error_code ec) {
      auto& r = set.results_[i];
      if (parser.is_header_done())
        r.status = parser.get().result_int();
      // The role chunk comes first; a second event is the first content delta.
      if (!counted_mid && parser.get().body().find("data: ", parser.get().body().find("data: ") + 1) !=
                            std::string::npos) {
        counted_mid = true;
        set.mid_.fetch_add(1);
      }
      if (parser.is_done()) {
        r.complete = true;
        return end("");
      }
      if (ec == beast::error::timeout)
        return end("timeout");
      if (ec == http::error::end_of_stream || ec == asio::error::eof)
        return end("eof before the last chunk");
      if (ec)
        return end(ec.message());
      read();
    }
    void end(std::string why) {
      auto& r = set.results_[i];
      r.body = parser.get().body();
      r.ended_by = std::move(why);
      r.ended_at = steady::now();
      beast::error_code ignored;
      stream.socket().close(ignored);
      set.ended_.fetch_add(1);
    }

    stream_set& set;
    std::size_t i;
    beast::tcp_stream stream;
    uint16_t port;
    std::string request;
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    bool counted_mid = false;
  };

  asio::io_context ioc_{1};
  std::vector<stream_result> results_;
  steady::time_point deadline_;
  std::vector<std::shared_ptr<one>> streams_;
  std::atomic<int> mid_{0}, ended_{0};
  std::thread thread_;
};

std::string words(int n, const std::string& tag) {
  std::string s;
  for (int i = 0; i < n; ++i)
    s += (i ? " " : "") + tag + "w" + std::to_string(i);
  return s;
}

/// How one stream ended, judged from its events.
struct verdict {
  bool done_last = false;      ///< the last event is [DONE]
  bool shutdown_error = false; ///< the event before it is {"error":{...}} with code server_shutdown
  bool other_error = false;    ///< some other error event
  std::string text;            ///< the streamed content, concatenated
};

verdict judge(const stream_result& r) {
  verdict v;
  auto ev = sse_data(r.body);
  v.done_last = !ev.empty() && ev.back() == "[DONE]";
  for (std::size_t k = 0; k < ev.size(); ++k) {
    if (ev[k] == "[DONE]")
      continue;
    auto j = json::parse(ev[k], nullptr, false);
    if (j.is_discarded())
      continue;
    if (j.contains("error")) {
      auto& e = j["error"];
      bool shaped = e.is_object() && e.contains("message") && e.contains("type") && e.contains("code") &&
                    e.contains("param");
      if (shaped && e["code"] == "server_shutdown" && k + 2 == ev.size())
        v.shutdown_error = true;
      else
        v.other_error = true;
      continue;
    }
    if (j.contains("choices") && !j["choices"].empty() && j["choices"][0]["delta"].contains("content"))
      v.text += j["choices"][0]["delta"]["content"].get<std::string>();
  }
  return v;
}

struct drain_node {
  temp_dir dir;
  uint16_t port = 0, fake_port = 0;
  std::unique_ptr<child_process> fake, proc;
  std::string tenant_id, key;

  drain_node(int grace_seconds, int echo_tokens_per_second) {
    fake = start_fake_upstream(dir, fake_port);
    auto cfg = "[http]\nlisten = \"127.0.0.1:0\"\nio_threads = 2\nmax_connections_per_client = 0\n"
               "[data]\ndir = \"" + dir.path() + "\"\n[shutdown]\ngrace_seconds = " +
               std::to_string(grace_seconds) + "\n[chat]\necho_tokens_per_second = " +
               std::to_string(echo_tokens_per_second) + "\n[upstream]\nurl = \"http://127.0.0.1:" +
               std::to_string(fake_port) + "/v1\"\n[log]\nlevel = \"info\"\n";
    proc = start_parley(dir, cfg, port, {{"PARLEY_ADMIN_KEY", admin}});
    std::map<std::string, std::string> ah{{"Authorization", "Bearer " + admin}};
    json limits{{"requests_per_minute", 0}, {"tokens_per_minute", 0}, {"tokens_per_day", 0},
                {"max_concurrent", 0}};
    auto t = fetch(port, http::verb::post, "/admin/v1/tenants",
                   json{{"slug", "drain"}, {"name", "D"}, {"config", {{"limits", limits}}}}.dump(), ah);
    if (t.status != 201)
      throw std::runtime_error("tenant: " + t.body);
    tenant_id = json::parse(t.body)["id"];
    auto k = fetch(port, http::verb::post, "/admin/v1/tenants/" + tenant_id + "/keys",
                   json{{"name", "k"}}.dump(), ah);
    if (k.status != 201)
      throw std::runtime_error("key: " + k.body);
    key = json::parse(k.body)["key"];
  }

  /// 100 parley-echo streams and 100 from the fake upstream, each `n_words` long at
  /// `tokens_per_second` (the echo's pace is the node's setting).
  std::vector<std::string> bodies(int n_words, int tokens_per_second, std::vector<std::string>& expected) {
    std::vector<std::string> out;
    for (int i = 0; i < 200; ++i) {
      bool echo = i % 2 == 0;
      auto text = words(n_words, "s" + std::to_string(i));
      json b{{"stream", true}};
      if (echo) {
        b["model"] = "parley-echo";
        b["messages"] = {{{"role", "user"}, {"content", text}}};
        expected.push_back(text);
      } else {
        b["model"] = "fake-model";
        b["messages"] = {{{"role", "user"},
                          {"content", "SCRIPT:{\"tokens_per_second\":" + std::to_string(tokens_per_second) +
                                        "} " + text}}};
        expected.push_back("echo: " + text);
      }
      out.push_back(b.dump());
    }
    return out;
  }

  /// Usage ledger rows of the tenant, read from the node's SQLite file after it exited.
  std::vector<parley::persistence::usage_entry> ledger() const {
    auto store = parley::persistence::open_sqlite_store(dir.path() + "/parley.db",
                                                        parley::config::store_settings{});
    auto rows = store->list_usage_entries(tenant_id, 0, std::numeric_limits<int64_t>::max(), 100000);
    return rows.ok() ? *rows : std::vector<parley::persistence::usage_entry>{};
  }
};

/// Polls until `cond` holds or `bound` passes (polling interval, not a synchronization sleep).
template <class Cond>
bool wait_until(Cond cond, std::chrono::milliseconds bound) {
  auto deadline = steady::now() + bound;
  while (!cond()) {
    if (steady::now() >= deadline)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

/// After the drain began: new connections are refused (the listener is closed) within a
/// bound; a connection that slips in before that is closed unanswered, or answered 503.
bool new_connections_turned_away(uint16_t port, const std::string& key) {
  if (wait_until([&] { return connection_refused(port); }, std::chrono::seconds(5)))
    return true;
  try {
    auto r = fetch(port, http::verb::post, "/v1/chat/completions",
                   json{{"model", "parley-echo"}, {"messages", {{{"role", "user"}, {"content", "late"}}}}}.dump(),
                   {{"Authorization", "Bearer " + key}});
    return r.status == 503;
  } catch (const std::exception&) {
    return true; // accepted by the kernel's backlog, then closed unanswered
  }
}

/// The precondition of both tests: all 200 streams have begun and none has ended. If not, the
/// node is killed (ending every stream) and an early end is shown.
void all_mid_stream(drain_node& n, stream_set& set) {
  bool ok = wait_until([&] { return set.mid_stream() == 200 || set.ended() > 0; }, std::chrono::seconds(30)) &&
            set.ended() == 0;
  if (ok)
    return;
  int mid = set.mid_stream(), ended = set.ended();
  n.proc->signal(SIGKILL);
  set.join();
  auto out = n.proc->output();
  INFO("mid-stream " << mid << ", ended " << ended << "; stream 0: status " << set.results()[0].status
                     << ", ended by '" << set.results()[0].ended_by << "'\nparley output tail:\n"
                     << out.substr(out.size() > 3000 ? out.size() - 3000 : 0));
  FAIL("not all 200 streams were mid-stream when the signal was due");
}

/// Counts over the 200 streams, and the first stream that broke a rule (for the failure message).
struct tally {
  int status_200 = 0, complete = 0, done_last = 0, whole_text = 0, prefix_intact = 0;
  int shutdown_error = 0, other_error = 0;
  steady::time_point first_end = steady::time_point::max(), last_end{};
  std::string first_bad;

  void add(std::size_t i, const stream_result& r, const verdict& v, const std::string& expected, bool good) {
    status_200 += r.status == 200;
    complete += r.complete;
    done_last += v.done_last;
    whole_text += v.text == expected;
    // What came before an end is the start of the answer: nothing lost or garbled.
    prefix_intact += !v.text.empty() && expected.compare(0, v.text.size(), v.text) == 0;
    shutdown_error += v.shutdown_error;
    other_error += v.other_error;
    first_end = std::min(first_end, r.ended_at);
    last_end = std::max(last_end, r.ended_at);
    if (!good && first_bad.empty())
      first_bad = "stream " + std::to_string(i) + ": status " + std::to_string(r.status) + ", ended by '" +
                  r.ended_by + "', body tail:\n" + r.body.substr(r.body.size() > 800 ? r.body.size() - 800 : 0);
  }
};

long long ms(steady::duration d) {
  return static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
}

} // namespace

TEST_CASE("SIGTERM with 200 open SSE streams lets every stream finish with DONE and exits 0",
          "[runtime][drain][integration]") {
  // 50 words at 5 tokens a second: each stream runs about 10 s; the grace period is 60 s.
  drain_node n(60, 5);
  std::vector<std::string> expected;
  stream_set set(n.port, n.key, n.bodies(50, 5, expected), std::chrono::seconds(90));
  set.start();
  all_mid_stream(n, set);

  auto t0 = steady::now();
  n.proc->signal(SIGTERM);
  REQUIRE(n.proc->wait_for_output("\"msg\":\"draining\"", std::chrono::seconds(10)));
  CHECK(new_connections_turned_away(n.port, n.key));
  set.join();
  auto rc = n.proc->wait_exit(std::chrono::seconds(30));
  auto exited = steady::now() - t0;

  tally t;
  for (std::size_t i = 0; i < set.results().size(); ++i) {
    auto& r = set.results()[i];
    auto v = judge(r);
    t.add(i, r, v, expected[i],
          r.status == 200 && r.complete && v.done_last && !v.other_error && !v.shutdown_error && v.text == expected[i]);
  }
  std::printf("drain, grace 60 s, 200 streams of ~10 s (100 parley-echo, 100 fake upstream):\n"
              "  status 200 %3d | last chunk %3d | [DONE] last %3d | whole text %3d | error events %3d\n"
              "  SIGTERM -> streams ended %lld..%lld ms | SIGTERM -> exit %lld ms | exit status %d\n",
              t.status_200, t.complete, t.done_last, t.whole_text, t.shutdown_error + t.other_error,
              ms(t.first_end - t0), ms(t.last_end - t0), ms(exited), rc ? *rc : -1);
  INFO(t.first_bad);
  CHECK(t.status_200 == 200);
  CHECK(t.complete == 200); // no stream was cut: each ended with the chunked body's last chunk
  CHECK(t.done_last == 200);
  CHECK(t.whole_text == 200);
  CHECK(t.shutdown_error + t.other_error == 0);
  REQUIRE(rc);
  CHECK(*rc == 0);
  CHECK(exited < std::chrono::seconds(60));
  CHECK(n.proc->output().find("grace period over") == std::string::npos);
  // Each completed stream has its one ledger row, committed before its [DONE].
  auto rows = n.ledger();
  int ok_rows = 0;
  for (auto& row : rows)
    ok_rows += row.outcome == "ok";
  CHECK(rows.size() == 200);
  CHECK(ok_rows == 200);
}

TEST_CASE("SIGTERM with 200 SSE streams longer than the grace period ends each with a shutdown error and DONE",
          "[runtime][drain][integration]") {
  // 300 words at 5 tokens a second: each stream would run a minute; the grace period is 2 s.
  constexpr int grace = 2;
  drain_node n(grace, 5);
  std::vector<std::string> expected;
  auto bodies = n.bodies(300, 5, expected);
  // And one request that waits for its whole answer (not streamed): it is answered 503.
  bodies.push_back(json{{"model", "parley-echo"},
                        {"messages", {{{"role", "user"}, {"content", words(300, "plain")}}}}}.dump());
  stream_set set(n.port, n.key, std::move(bodies), std::chrono::seconds(90));
  set.start();
  all_mid_stream(n, set);

  auto t0 = steady::now();
  n.proc->signal(SIGTERM);
  REQUIRE(n.proc->wait_for_output("\"msg\":\"draining\"", std::chrono::seconds(10)));
  CHECK(new_connections_turned_away(n.port, n.key));
  auto rc = n.proc->wait_exit(std::chrono::seconds(grace + 30));
  auto exited = steady::now() - t0;
  set.join();

  tally t;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    auto& r = set.results()[i];
    auto v = judge(r);
    t.add(i, r, v, expected[i],
          r.status == 200 && r.complete && v.done_last && v.shutdown_error && !v.other_error &&
            expected[i].compare(0, v.text.size(), v.text) == 0);
  }
  std::printf("drain, grace %d s, 200 streams of ~60 s (100 parley-echo, 100 fake upstream):\n"
              "  status 200 %3d | last chunk %3d | server_shutdown error + [DONE] %3d | other errors %3d | "
              "partial text intact %3d\n"
              "  SIGTERM -> streams ended %lld..%lld ms | SIGTERM -> exit %lld ms | exit status %d\n",
              grace, t.status_200, t.complete, t.shutdown_error, t.other_error, t.prefix_intact,
              ms(t.first_end - t0), ms(t.last_end - t0), ms(exited), rc ? *rc : -1);
  INFO(t.first_bad);
  CHECK(t.status_200 == 200);
  CHECK(t.complete == 200); // no stream was cut: each ended with the chunked body's last chunk
  CHECK(t.done_last == 200);
  CHECK(t.shutdown_error == 200);
  CHECK(t.other_error == 0);
  CHECK(t.prefix_intact == 200);
  auto& plain = set.results().back();
  auto plain_error = json::parse(plain.body, nullptr, false);
  std::printf("  the request waiting for its whole answer: status %d, %s\n", plain.status, plain.body.c_str());
  INFO(plain.body);
  CHECK(plain.status == 503);
  CHECK(plain.complete);
  CHECK((plain_error.is_object() ? plain_error.value("/error/code"_json_pointer, std::string()) : "") ==
        "server_shutdown");
  REQUIRE(rc);
  CHECK(*rc == 0);
  // Nothing ends before the grace period is over; the exit follows it closely (generous
  // margin: a 2-core machine running other tests).
  CHECK(t.first_end - t0 >= std::chrono::milliseconds(grace * 1000 - 200));
  CHECK(exited < std::chrono::seconds(grace + 10));
  CHECK(n.proc->output().find("grace period over") != std::string::npos);
  // Every cut-short call is in the ledger, as cancelled, charged for what was sent.
  auto rows = n.ledger();
  int cancelled = 0;
  for (auto& row : rows)
    cancelled += row.outcome == "cancelled";
  CHECK(rows.size() == 201);
  CHECK(cancelled == 201);
}
