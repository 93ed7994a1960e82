// A tenant actor that crashes under load is restarted by its manager on the next request,
// and its limits are rebuilt: the daily budget's spending is read back from the usage
// ledger's rollup, so the crash does not hand the tenant a fresh budget.
#include "support/admin_client.hpp"
#include "support/wait.hpp"

#include "parley/actors/protocol.hpp"

#include <caf/all.hpp>
#include <catch2/catch.hpp>

#include <atomic>
#include <map>
#include <mutex>
#include <thread>

using namespace parley::test;
namespace http = boost::beast::http;

namespace {

void fast(parley::config::settings& s) { s.chat.echo_tokens_per_second = 0; }

/// The tenant's actor, found the way the handlers find it (directory, then manager).
parley::actors::tenant_actor tenant_actor_of(parley::runtime::app& app, const std::string& tenant_id) {
  caf::scoped_actor self{app.actor_system()};
  parley::actors::tenant_actor found;
  self->request(app.tenant_directory(), std::chrono::seconds(5), parley::actors::locate_atom::value, tenant_id)
    .receive(
      [&](parley::actors::tenant_manager_actor manager) {
        self->request(manager, std::chrono::seconds(5), parley::actors::tenant_atom::value, tenant_id)
          .receive([&](parley::actors::tenant_actor t) { found = t; }, [](caf::error&) {});
      },
      [](caf::error&) {});
  return found;
}

} // namespace

TEST_CASE("a tenant actor that crashes under load is restarted and its daily budget is rebuilt from the ledger",
          "[limits][supervision][integration]") {
  server_fixture srv(fast);
  const int64_t budget = 3000;
  auto t = create_tenant(srv.port(), "crashy",
                         {{"config", {{"limits", {{"tokens_per_day", budget}, {"requests_per_minute", 0},
                                                  {"tokens_per_minute", 0}, {"max_concurrent", 0}}}}}});
  std::string tid = t["id"];
  std::string key = create_key(srv.port(), tid)["key"];

  // Eight clients send small completions until the budget runs out; they only count.
  std::mutex mu;
  std::map<int, int> statuses;
  std::map<std::string, int> codes;
  std::atomic<int> ok{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int i = 0; i < 8; ++i)
    clients.emplace_back([&, i] {
      auto c = std::make_unique<http_client>(srv.port());
      json body{{"model", "parley-echo"}, {"max_tokens", 5},
                {"messages", {{{"role", "user"}, {"content", "client " + std::to_string(i) + " says hello"}}}}};
      while (!stop) {
        http_reply r;
        try {
          r = c->post("/v1/chat/completions", body.dump(), bearer(key));
        } catch (const std::exception&) {
          c = std::make_unique<http_client>(srv.port()); // the crash closed the connection
          continue;
        }
        std::string code;
        if (r.status != 200) {
          auto j = json::parse(r.body, nullptr, false);
          if (j.is_object() && j.contains("error"))
            code = j["error"]["code"].is_string() ? j["error"]["code"].get<std::string>() : "";
        } else {
          ++ok;
        }
        std::lock_guard<std::mutex> lock(mu);
        ++statuses[r.status];
        ++codes[code];
        if (code == "insufficient_quota")
          stop = true; // the budget ran out
      }
    });
  // If an assertion below ends the test early, the clients still stop and are joined (a
  // joinable std::thread would terminate the run). `stop` is left as it is otherwise: the
  // clients must stop on their own, because the budget ran out.
  struct join_clients {
    std::vector<std::thread>& clients;
    std::atomic<bool>& stop;
    bool early = true;
    ~join_clients() {
      if (early)
        stop = true;
      for (auto& c : clients)
        if (c.joinable())
          c.join();
    }
  } joiner{clients, stop};

  // Crash the tenant actor once the load is under way (an exit with a crash's reason: its
  // manager sees a non-normal down, exactly as after an exception in a handler).
  REQUIRE(wait_until(deadline_in(std::chrono::seconds(20)), [&] { return ok >= 60; },
                     std::chrono::milliseconds(2)));
  int before_crash = ok;
  auto victim = tenant_actor_of(srv.app(), tid);
  REQUIRE(victim);
  caf::anon_send_exit(victim, caf::exit_reason::unhandled_exception);

  joiner.early = false;
  for (auto& c : clients)
    c.join();
  REQUIRE(stop); // the clients stopped because the budget ran out, not because of an error

  // Restarted exactly once, by the next request.
  CHECK(metric(srv.port(), "parley_actor_restarts_total{kind=\"tenant\"}") == 1);
  auto after = tenant_actor_of(srv.app(), tid);
  REQUIRE(after);
  CHECK(after.address() != victim.address());

  // Nothing but successes, the budget's 429s, and clean errors for the few requests the crash
  // cut off (500 internal_error, or 503 while the tenant restarted).
  int cut_off = 0;
  for (auto& [status, n] : statuses) {
    INFO("status " << status << " x" << n);
    CHECK((status == 200 || status == 429 || status == 500 || status == 503));
    if (status == 500 || status == 503)
      cut_off += n;
  }
  CHECK(cut_off <= 8); // at most the requests in flight at the crash

  // The budget was rebuilt from the ledger: the tenant did not get a second budget. Each call
  // reserves at most its prompt (about 9) plus max_tokens (5); the calls in flight at the
  // crash (at most 8) may have been settled after the reload.
  auto rows = json::parse(fetch(srv.port(), http::verb::get, "/admin/v1/tenants/" + tid + "/usage", "",
                                {{"Authorization", std::string("Bearer ") + server_fixture::admin_key}})
                            .body);
  int64_t spent = 0;
  for (auto& r : rows["data"])
    spent += r["prompt_tokens"].get<int64_t>() + r["completion_tokens"].get<int64_t>();
  INFO("spent " << spent << " of " << budget << ", " << before_crash << " completions before the crash, "
                << ok << " in all");
  CHECK(spent <= budget + 8 * 20);
  CHECK(spent >= budget - 20); // and it was really spent down to its end
  CHECK(before_crash * 10 < budget); // the crash came well before the end of the budget
}
