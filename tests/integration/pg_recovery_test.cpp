// PostgreSQL stopped (immediate) and restarted under load, with the test's own cluster:
// readiness turns 503 while the database is gone and requests fail cleanly (503 in OpenAI's
// error shape, or a stream's error event, within a bound); once it is back the same process
// becomes ready and serves again, and nothing acknowledged was lost -- every turn that
// completed has its user message and reply stored, and every completed request its one
// usage ledger row.
#include "support/admin_client.hpp"
#include "support/http_client.hpp"
#include "support/pg_cluster.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <thread>

using namespace parley::test;
using json = nlohmann::json;
using steady = std::chrono::steady_clock;

namespace {

/// Where a request falls on the test's timeline, judged after the fact from when it was sent
/// and answered: wholly before the stop, wholly within the outage, sent once the node was
/// ready again, or across a change (the database stopping or starting under it).
enum phase : int { before = 0, outage = 1, after = 2, across = 3 };
const char* phase_name[] = {"before", "outage", "after", "across"};

/// One request as the client saw it (written by its client thread, read after join).
struct call {
  std::string request_id;      ///< the client's X-Request-Id (a correlation id only)
  std::string parley_id;       ///< parley's id for it, the ledger's key (x-parley-request-id)
  std::string conversation_id; ///< "" = stateless
  std::string text;
  bool stream = false;
  steady::time_point sent, answered;
  int status = 0;              ///< 0: no HTTP answer (the connection failed or timed out)
  bool completed = false;      ///< 200 with the whole answer (a stream: [DONE], no error event)
  bool clean_error = false;    ///< 503 with {"error":{...}}, or a 200 stream ending error event + [DONE]
  std::string error_code;      ///< the error's code, if any
  std::string transport;       ///< what went wrong below HTTP
};

/// The error object of an OpenAI error body, or null.
json error_of(const std::string& body) {
  auto j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("error") || !j["error"].is_object())
    return nullptr;
  auto& e = j["error"];
  if (!e.contains("message") || !e.contains("type") || !e.contains("code") || !e.contains("param"))
    return nullptr;
  return e;
}

/// Judges one answer: completed, clean error, or neither.
void judge(call& c, const http_reply& r) {
  c.status = r.status;
  c.parley_id = r.header("x-parley-request-id");
  if (r.status == 200 && !c.stream) {
    auto j = json::parse(r.body, nullptr, false);
    c.completed = !j.is_discarded() && j.contains("choices") &&
                  j["choices"][0]["message"]["content"] == c.text;
    return;
  }
  if (r.status == 200) {
    // data: payloads; the reply's text; the last error event, if any.
    std::string text;
    json err = nullptr;
    bool done_last = false;
    for (std::size_t pos = 0; (pos = r.body.find("data: ", pos)) != std::string::npos;) {
      auto end = r.body.find("\n\n", pos);
      auto data = r.body.substr(pos + 6, end - pos - 6);
      pos = end;
      done_last = data == "[DONE]";
      if (done_last)
        continue;
      auto j = json::parse(data, nullptr, false);
      if (j.is_discarded())
        continue;
      if (j.contains("error"))
        err = error_of(data);
      else if (j.contains("choices") && !j["choices"].empty() && j["choices"][0]["delta"].contains("content"))
        text += j["choices"][0]["delta"]["content"].get<std::string>();
    }
    if (!err.is_null()) {
      c.clean_error = done_last;
      c.error_code = err["code"].is_string() ? err["code"].get<std::string>() : "";
    } else {
      c.completed = done_last && text == c.text;
    }
    return;
  }
  auto e = error_of(r.body);
  c.clean_error = r.status == 503 && !e.is_null();
  if (!e.is_null())
    c.error_code = e["code"].is_string() ? e["code"].get<std::string>() : "";
}

/// One client: requests one after another until `stop`, at most `max_calls`. Worker thread:
/// it records, the test thread asserts. `down`: the database is stopped now (set by the test).
void client_loop(uint16_t port, const std::string& key, int worker, std::string conversation, bool stream,
                 const std::atomic<bool>& down, const std::atomic<bool>& stop, std::atomic<int>& completed,
                 std::atomic<int>& answered_while_down, std::vector<call>& out) {
  constexpr int max_calls = 1500;
  std::map<std::string, std::string> h{{"Authorization", "Bearer " + key}};
  std::unique_ptr<http_client> c;
  for (int n = 0; n < max_calls && !stop.load(); ++n) {
    call k;
    k.request_id = "pgr-" + std::to_string(worker) + "-" + std::to_string(n);
    k.conversation_id = conversation;
    k.text = "turn " + std::to_string(n) + " of client " + std::to_string(worker) + " outlives the database";
    k.stream = stream;
    json body{{"model", "parley-echo"}, {"stream", stream}, {"messages", {{{"role", "user"}, {"content", k.text}}}}};
    if (!conversation.empty())
      body["conversation"] = conversation;
    h["X-Request-Id"] = k.request_id;
    bool down_at_send = down.load();
    k.sent = steady::now();
    try {
      if (!c)
        c = std::make_unique<http_client>(port); // every operation times out after 10 s
      judge(k, c->post("/v1/chat/completions", body.dump(), h));
      if (k.status != 200 && k.status != 503)
        c.reset(); // not reused after an unexpected answer
    } catch (const std::exception& e) {
      k.transport = e.what();
      c.reset();
    }
    k.answered = steady::now();
    if (k.completed)
      completed.fetch_add(1);
    if (down_at_send && down.load())
      answered_while_down.fetch_add(1);
    bool failed = !k.completed;
    out.push_back(std::move(k));
    if (failed) // a client backs off a little after a failure (its pace, not a synchronization)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

/// Polls `cond` until it returns true or `bound` passes; returns the time it took, or nullopt.
template <class Cond>
std::optional<std::chrono::milliseconds> poll_until(Cond cond, std::chrono::milliseconds bound) {
  auto t0 = steady::now();
  while (!cond()) {
    if (steady::now() - t0 >= bound)
      return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(50)); // polling interval
  }
  return std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - t0);
}

int readyz(uint16_t port) {
  try {
    return fetch(port, http::verb::get, "/readyz", {}, admin_headers()).status;
  } catch (const std::exception&) {
    return 0;
  }
}

} // namespace

TEST_CASE("PostgreSQL restarted under load: readiness follows it, requests fail cleanly and nothing acknowledged is lost",
          "[runtime][pg][integration]") {
  auto test_start = steady::now();
  pg_cluster pg; // stopped and removed at the end, also on failure
  temp_dir d;
  uint16_t port = 0;
  // Short pool waits so that requests during the outage answer quickly.
  auto cfg = "[http]\nlisten = \"127.0.0.1:0\"\nmax_connections_per_client = 0\n[data]\ndir = \"" + d.path() +
             "\"\n[store]\nbackend = \"postgres\"\nacquire_timeout_ms = 1000\n"
             "[chat]\necho_tokens_per_second = 200\n[log]\nlevel = \"info\"\n";
  auto proc = start_parley(d, cfg, port,
                           {{"PARLEY_STORE_POSTGRES_DSN", pg.dsn()}, {"PARLEY_ADMIN_KEY", server_fixture::admin_key}});
  const int pid = proc->pid();
  auto ms = [](steady::duration dur) {
    return static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(dur).count());
  };
  REQUIRE(readyz(port) == 200);

  json limits{{"requests_per_minute", 0}, {"tokens_per_minute", 0}, {"tokens_per_day", 0}, {"max_concurrent", 0}};
  auto tenant = create_tenant(port, "pg-recovery", {{"config", {{"limits", limits}}}});
  std::string tid = tenant["id"];
  std::string key = create_key(port, tid)["key"];

  // 20 clients: 12 in conversations of their own (4 of them streaming), 8 stateless (2 streaming).
  constexpr int conversations = 12, stateless = 8;
  std::vector<std::string> conv_ids;
  for (int i = 0; i < conversations; ++i) {
    auto c = fetch(port, http::verb::post, "/v1/conversations", "{}", bearer(key));
    REQUIRE(c.status == 200);
    conv_ids.push_back(json::parse(c.body)["id"]);
  }
  std::atomic<bool> down{false}, stop{false};
  std::atomic<int> completed{0}, answered_while_down{0};
  std::vector<std::vector<call>> logs(conversations + stateless);
  std::vector<std::thread> clients;
  for (int i = 0; i < conversations + stateless; ++i) {
    bool in_conv = i < conversations;
    bool stream = in_conv ? i % 3 == 0 : i % 4 == 0;
    clients.emplace_back(client_loop, port, key, i, in_conv ? conv_ids[static_cast<std::size_t>(i)] : std::string(),
                         stream, std::cref(down), std::cref(stop), std::ref(completed), std::ref(answered_while_down),
                         std::ref(logs[static_cast<std::size_t>(i)]));
  }
  // Always stop and join the clients, also when a REQUIRE below fails.
  struct joiner {
    std::atomic<bool>& stop;
    std::vector<std::thread>& threads;
    void join() {
      stop = true;
      for (auto& t : threads)
        if (t.joinable())
          t.join();
    }
    ~joiner() { join(); }
  } clients_joiner{stop, clients};

  // Load is flowing.
  REQUIRE(poll_until([&] { return completed.load() >= 200; }, std::chrono::seconds(30)));

  // The database goes away: readiness follows within a bound, requests fail (and answer).
  auto stop_began = steady::now();
  pg.stop_immediate();
  auto stop_ended = steady::now();
  down = true;
  auto not_ready = poll_until([&] { return readyz(port) == 503; }, std::chrono::seconds(15));
  REQUIRE(not_ready);
  auto not_ready_ms = ms(steady::now() - stop_began);
  auto ready_body = fetch(port, http::verb::get, "/readyz", {}, admin_headers()).body;
  INFO(ready_body);
  CHECK(ready_body.find("\"name\":\"store\",\"ok\":false") != std::string::npos);
  // The outage lasts a few seconds (several readiness checks and parked usage retries), and
  // requests sent meanwhile are answered: at least 100 of them, none left hanging.
  REQUIRE(poll_until(
    [&] { return answered_while_down.load() >= 100 && steady::now() - stop_began >= std::chrono::seconds(3); },
    std::chrono::seconds(30)));

  // It comes back: the same process becomes ready again, without a restart, and serves.
  down = false;
  auto start_began = steady::now();
  pg.start();
  auto start_ended = steady::now();
  auto ready_again = poll_until([&] { return readyz(port) == 200; }, std::chrono::seconds(30));
  REQUIRE(ready_again);
  auto ready_at = steady::now();
  auto ready_ms = ms(ready_at - start_began);
  CHECK_FALSE(proc->wait_exit(std::chrono::milliseconds(0))); // still running: never crashed
  int completed_when_ready = completed.load();
  REQUIRE(poll_until([&] { return completed.load() >= completed_when_ready + 200; }, std::chrono::seconds(30)));
  clients_joiner.join();
  // Usage rows parked during the outage land, still without a restart.
  auto unparked = poll_until([&] { return metric(port, "parley_usage_parked_rows") == 0; },
                             std::chrono::seconds(20));
  CHECK(unparked);

  // -- what the database holds --------------------------------------------------------------
  std::map<std::string, std::vector<std::string>> ledger; // request id -> outcomes
  std::map<std::string, std::set<std::string>> stored;    // conversation -> "role:text"
  {
    pqxx::connection c(pg.dsn());
    pqxx::nontransaction n(c);
    for (auto row : n.exec_params("SELECT request_id, outcome FROM usage_ledger WHERE tenant_id = $1", tid))
      ledger[row[0].as<std::string>()].push_back(row[1].as<std::string>());
    for (auto row : n.exec_params("SELECT conversation_id, role, content->>'content' FROM messages "
                                  "WHERE tenant_id = $1",
                                  tid))
      stored[row[0].as<std::string>()].insert(row[1].as<std::string>() + ":" + row[2].as<std::string>());
  }

  struct counts {
    int sent = 0, completed = 0, clean = 0, unclean = 0, transport = 0;
    double max_ms = 0;
  } by_phase[4];
  int total_completed = 0, turns_completed = 0, turns_stored = 0, completed_one_row = 0;
  int failed_with_row = 0, failed_no_row = 0, duplicate_rows = 0;
  std::map<std::string, int> error_codes;
  std::vector<std::string> bad; // the first few unexplained answers, for the failure message
  for (auto& l : logs)
    for (auto& k : l) {
      int ph = k.answered < stop_began                              ? before
               : k.sent > stop_ended && k.answered < start_began ? outage
               : k.sent > ready_at                                ? after
                                                                   : across;
      auto& p = by_phase[ph];
      ++p.sent;
      p.max_ms = std::max(p.max_ms, std::chrono::duration<double, std::milli>(k.answered - k.sent).count());
      auto it = k.parley_id.empty() ? ledger.end() : ledger.find(k.parley_id);
      std::size_t rows = it == ledger.end() ? 0 : it->second.size();
      duplicate_rows += rows > 1;
      if (!k.transport.empty()) {
        ++p.transport;
        if (bad.size() < 5)
          bad.push_back(k.request_id + ": " + k.transport);
      } else if (k.completed) {
        ++p.completed;
        ++total_completed;
        completed_one_row += rows == 1 && it->second[0] == "ok";
        if (!k.conversation_id.empty()) {
          ++turns_completed;
          auto& st = stored[k.conversation_id];
          turns_stored += st.count("user:" + k.text) && st.count("assistant:" + k.text);
        }
      } else if (k.clean_error) {
        ++p.clean;
        ++error_codes[k.error_code];
      } else {
        ++p.unclean;
        if (bad.size() < 5)
          bad.push_back(k.request_id + ": status " + std::to_string(k.status));
      }
      if (!k.completed)
        (rows ? failed_with_row : failed_no_row) += 1;
    }
  std::size_t ledger_rows = 0;
  for (auto& [id, outcomes] : ledger)
    ledger_rows += outcomes.size();

  std::printf("PostgreSQL stopped (immediate) and restarted under load, 20 clients, one parley process (pid %d):\n"
              "  phase    sent  completed  clean 503/error event  unclean  transport  max ms\n",
              pid);
  for (int p = 0; p < 4; ++p)
    std::printf("  %-7s %5d  %9d  %21d  %7d  %9d  %6.0f\n", phase_name[p], by_phase[p].sent, by_phase[p].completed,
                by_phase[p].clean, by_phase[p].unclean, by_phase[p].transport, by_phase[p].max_ms);
  std::string codes;
  for (auto& [c, n] : error_codes)
    codes += " " + c + "=" + std::to_string(n);
  std::printf("  error codes:%s\n"
              "  pg_ctl stop took %lld ms, start %lld ms; /readyz 503 %lld ms after the stop began, 200 again "
              "%lld ms after the start began\n"
              "  completed turns %d, stored with user message and reply %d\n"
              "  completed requests %d, with exactly one ledger row (ok) %d; ledger rows %zu\n"
              "  failed requests with a row (an attempt recorded) %d, without %d; request ids with 2+ rows %d\n"
              "  test took %lld ms\n",
              codes.c_str(), ms(stop_ended - stop_began), ms(start_ended - start_began),
              not_ready_ms, ready_ms, turns_completed, turns_stored, total_completed, completed_one_row,
              ledger_rows, failed_with_row, failed_no_row, duplicate_rows, ms(steady::now() - test_start));

  INFO("unexplained answers: " << [&] {
    std::string s;
    for (auto& b : bad)
      s += "\n  " + b;
    return s;
  }());
  for (auto& p : by_phase) {
    CHECK(p.transport == 0); // never a hang past the client's 10 s bound, never a cut connection
    CHECK(p.unclean == 0);   // every failure is a 503 (or a stream's error event) in OpenAI's shape
  }
  CHECK(by_phase[before].completed == by_phase[before].sent); // a healthy database: nothing fails
  CHECK(by_phase[outage].completed == 0); // nothing is acknowledged that could not be stored
  CHECK(by_phase[outage].clean >= 50);
  CHECK(by_phase[after].completed >= 200);
  CHECK(by_phase[after].completed == by_phase[after].sent); // no broken pooled connection is reused
  // Nothing acknowledged was lost.
  CHECK(turns_stored == turns_completed);
  CHECK(completed_one_row == total_completed);
  CHECK(duplicate_rows == 0);
  CHECK(ledger_rows == static_cast<std::size_t>(total_completed + failed_with_row));

  proc->signal(SIGTERM);
  CHECK(proc->wait_exit(std::chrono::seconds(20)) == std::optional<int>(0));
  auto out = proc->output();
  std::size_t listening = 0;
  for (std::size_t pos = 0; (pos = out.find("\"msg\":\"listening\"", pos)) != std::string::npos; ++pos)
    ++listening;
  CHECK(listening == 1); // one start: it recovered in place
}
