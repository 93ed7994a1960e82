// kill -9 under load, on SQLite and on PostgreSQL: every request the client saw complete has
// exactly one usage ledger row per upstream attempt, its conversation holds both its user
// message and its reply; a request that did not complete has at most one row; and the usage
// rollup matches the ledger.
#include "support/http_client.hpp"
#include "support/pg_schema.hpp"
#include "support/process.hpp"
#include "support/wait.hpp"

#include "parley/persistence/open.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <thread>

using namespace parley::test;
using json = nlohmann::json;
namespace http = boost::beast::http;

namespace {

const std::string admin = "ledger-admin-key-0123456789abcdef012345";

struct sent {
  std::string request_id;      ///< the client's X-Request-Id (a correlation id only)
  std::string parley_id;       ///< parley's id for it (the ledger's key), once answered
  std::string conversation_id; ///< "" = stateless
  std::string text;            ///< the user message (the echo model replies with it)
  bool completed = false;      ///< 200 with the whole answer (JSON body, or the stream's [DONE])
};

/// One client: requests one after another until the server dies or `stop` is set. Runs on a
/// worker thread: it only records what happened (the test thread asserts).
void client_loop(uint16_t port, const std::string& key, int worker, const std::string& conversation,
                 bool stream, std::atomic<bool>& stop, std::vector<sent>& out) {
  std::map<std::string, std::string> h{{"Authorization", "Bearer " + key}};
  try {
    http_client c(port);
    for (int n = 0; !stop.load(); ++n) {
      sent s;
      s.request_id = "ledger-" + std::to_string(worker) + "-" + std::to_string(n);
      s.conversation_id = conversation;
      s.text = "turn " + std::to_string(n) + " of client " + std::to_string(worker) +
               " says hello to the ledger";
      json body{{"model", "parley-echo"},
                {"stream", stream},
                {"messages", {{{"role", "user"}, {"content", s.text}}}}};
      if (!conversation.empty())
        body["conversation"] = conversation;
      h["X-Request-Id"] = s.request_id;
      out.push_back(s); // recorded before sending: a request cut off by the kill is listed too
      auto r = c.post("/v1/chat/completions", body.dump(), h);
      out.back().parley_id = r.header("x-parley-request-id");
      bool whole = stream ? r.body.find("data: [DONE]") != std::string::npos &&
                              r.body.find("\"error\"") == std::string::npos
                          : r.body.find("\"choices\"") != std::string::npos;
      out.back().completed = r.status == 200 && whole;
    }
  } catch (const std::exception&) {
    // The server was killed mid-request: the last request did not complete.
  }
}

struct tally {
  int completed = 0, completed_one_row = 0;
  int incomplete = 0, rows_of_incomplete = 0;
  int violations = 0;
};

void run_crash(const std::string& backend, const std::string& config,
               std::map<std::string, std::string> env,
               const std::function<std::unique_ptr<parley::persistence::store>()>& open_store) {
  temp_dir d;
  env["PARLEY_ADMIN_KEY"] = admin;
  std::map<std::string, std::string> ah{{"Authorization", "Bearer " + admin}};
  uint16_t port = 0;
  auto cfg = "[http]\nlisten = \"127.0.0.1:0\"\nmax_connections_per_client = 0\n[data]\ndir = \"" +
             d.path() + "\"\n[chat]\necho_tokens_per_second = 200\n" + config;
  auto proc = start_parley(d, cfg, port, env);
  // No limits: the load must not be refused.
  json limits{{"requests_per_minute", 0}, {"tokens_per_minute", 0}, {"tokens_per_day", 0},
              {"max_concurrent", 0}};
  auto t = fetch(port, http::verb::post, "/admin/v1/tenants",
                 json{{"slug", "ledger"}, {"name", "L"}, {"config", {{"limits", limits}}}}.dump(), ah);
  INFO(t.body);
  REQUIRE(t.status == 201);
  std::string tid = json::parse(t.body)["id"];
  auto k = fetch(port, http::verb::post, "/admin/v1/tenants/" + tid + "/keys",
                 json{{"name", "k"}}.dump(), ah);
  REQUIRE(k.status == 201);
  std::string key = json::parse(k.body)["key"];
  std::map<std::string, std::string> kh{{"Authorization", "Bearer " + key}};

  // 50 clients each in its own conversation, 10 stateless ones; half of each stream.
  constexpr int conversations = 50, stateless = 10;
  std::vector<std::string> conv_ids;
  for (int i = 0; i < conversations; ++i) {
    auto c = fetch(port, http::verb::post, "/v1/conversations", "{}", kh);
    REQUIRE(c.status == 200);
    conv_ids.push_back(json::parse(c.body)["id"]);
  }
  std::atomic<bool> stop{false};
  std::vector<std::vector<sent>> logs(conversations + stateless);
  std::vector<std::thread> clients;
  for (int i = 0; i < conversations + stateless; ++i)
    clients.emplace_back(client_loop, port, key, i,
                         i < conversations ? conv_ids[static_cast<std::size_t>(i)] : std::string(),
                         i % 2 == 0, std::ref(stop), std::ref(logs[static_cast<std::size_t>(i)]));

  // Kill it once the load is well under way: completions counted by the node's own metrics.
  int admitted = 0;
  wait_until(deadline_in(std::chrono::seconds(30)), [&] {
    auto m = fetch(port, http::verb::get, "/metrics", {}, ah);
    const std::string name = "\nparley_admitted_total ";
    auto pos = m.body.find(name);
    if (pos != std::string::npos)
      admitted = std::atoi(m.body.c_str() + pos + name.size());
    return admitted >= 300;
  }, std::chrono::milliseconds(50));
  proc->signal(SIGKILL);
  auto exit_status = proc->wait_exit(std::chrono::seconds(10));
  stop = true;
  for (auto& c : clients)
    c.join();
  // Asserted once the clients are joined: a failed REQUIRE with joinable threads would
  // terminate the run instead of failing this test.
  REQUIRE(admitted >= 300);
  REQUIRE(exit_status == std::optional<int>(128 + SIGKILL));

  auto store = open_store();
  auto rows = store->list_usage_entries(tid, 0, std::numeric_limits<int64_t>::max(), 1000000);
  REQUIRE(rows.ok());
  std::map<std::string, std::vector<parley::persistence::usage_entry>> by_request;
  int64_t ledger_tokens = 0;
  for (auto& r : *rows) {
    by_request[r.request_id].push_back(r);
    ledger_tokens += r.prompt_tokens + r.completion_tokens;
  }
  tally t1;
  std::map<std::string, std::vector<std::string>> conv_texts; // conversation -> message texts
  for (auto& cid : conv_ids) {
    auto msgs = store->list_messages(tid, cid, 0, 100000);
    REQUIRE(msgs.ok());
    for (auto& m : *msgs)
      conv_texts[cid].push_back(m.role + ":" + json::parse(m.content_json)["content"].dump());
  }
  // A request cut off by the kill may have no answer, so its ledger rows (if any) are known
  // only as rows no completed request claims: parley's ids are unique per request, so each of
  // them is one request's, and their number is at most the number of incomplete requests.
  std::set<std::string> claimed;
  for (auto& log : logs)
    for (auto& s : log) {
      if (!s.completed)
        continue;
      if (s.parley_id.size() == 32 && claimed.insert(s.parley_id).second)
        continue;
      ++t1.violations; // a completed answer without its own id
    }
  for (auto& [id, of_request] : by_request)
    if (claimed.count(id) == 0) {
      ++t1.rows_of_incomplete;
      if (of_request.size() != 1 || of_request[0].attempt != 1)
        ++t1.violations;
    }
  for (auto& log : logs)
    for (auto& s : log) {
      auto it = by_request.find(s.parley_id);
      std::size_t n = it == by_request.end() ? 0 : it->second.size();
      if (s.completed) {
        ++t1.completed;
        // The echo model is one upstream attempt: exactly one row, attempt 1, ok.
        if (n == 1 && it->second[0].attempt == 1 && it->second[0].outcome == "ok")
          ++t1.completed_one_row;
        else
          ++t1.violations;
        if (!s.conversation_id.empty()) {
          auto& texts = conv_texts[s.conversation_id];
          auto quoted = json(s.text).dump();
          bool user = std::find(texts.begin(), texts.end(), "user:" + quoted) != texts.end();
          bool reply = std::find(texts.begin(), texts.end(), "assistant:" + quoted) != texts.end();
          if (!user || !reply)
            ++t1.violations;
        }
      } else {
        ++t1.incomplete;
      }
    }
  // The rollup derives from the ledger: the same totals.
  auto sums = store->query_usage(tid, 0, std::numeric_limits<int64_t>::max());
  REQUIRE(sums.ok());
  int64_t rollup_tokens = 0, rollup_requests = 0;
  for (auto& s : *sums) {
    rollup_tokens += s.prompt_tokens + s.completion_tokens;
    rollup_requests += s.requests;
  }
  std::printf("kill -9 under load (%s): %d requests\n"
              "  completed   %5d | exactly one ledger row: %5d\n"
              "  incomplete  %5d | ledger rows of incomplete requests: %5d\n"
              "  ledger rows %5zu | rollup requests %5lld | ledger tokens %lld = rollup %lld\n",
              backend.c_str(), t1.completed + t1.incomplete, t1.completed, t1.completed_one_row,
              t1.incomplete, t1.rows_of_incomplete, rows->size(),
              static_cast<long long>(rollup_requests), static_cast<long long>(ledger_tokens),
              static_cast<long long>(rollup_tokens));
  CHECK(t1.completed >= 100);
  CHECK(t1.incomplete >= 1); // the kill did cut requests off
  CHECK(t1.rows_of_incomplete <= t1.incomplete);
  CHECK(t1.completed_one_row == t1.completed);
  CHECK(t1.violations == 0);
  CHECK(rollup_requests == static_cast<int64_t>(rows->size()));
  CHECK(rollup_tokens == ledger_tokens);
}

} // namespace

TEST_CASE("after kill -9 under load on SQLite every completed request has exactly one ledger row",
          "[chat][ledger][integration]") {
  temp_dir keep; // the store outlives the node
  auto db = keep.path() + "/ledger.db";
  run_crash("sqlite", "[store]\nsqlite_path = \"" + db + "\"\n", {}, [&] {
    return parley::persistence::open_sqlite_store(db, parley::config::store_settings{});
  });
}

TEST_CASE("after kill -9 under load on PostgreSQL every completed request has exactly one ledger row",
          "[chat][ledger][pg][integration]") {
  pg_schema schema;
  run_crash("postgres", "[store]\nbackend = \"postgres\"\n",
            {{"PARLEY_STORE_POSTGRES_DSN", schema.scoped_dsn()}}, [&] {
              parley::config::store_settings st;
              st.postgres_dsn = schema.scoped_dsn();
              return parley::persistence::open_postgres_store(st);
            });
}
