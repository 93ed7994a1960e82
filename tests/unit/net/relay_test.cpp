// The chat relay (net/src/handlers/chat.cpp) against a tenant and a conversation played by the
// test, on CAF's test coordinator: the exchange writes into a fake session, and the test steps
// the actors and the session's io_context on the test thread.
//
// What is checked: a relay that has stopped leaves no monitor behind in the actors it watched.
// CAF 0.17 keeps a monitor in the monitored actor until it is removed -- the monitoring actor
// stopping does not remove it -- and the monitor holds a weak reference that keeps the stopped
// relay's memory allocated. A tenant actor serves request after request, so a relay that did
// not remove its monitors grew the tenant by about 1 KB per request. The probe: detaching the
// relay's monitor from the watched actor answers how many there were (0 once it is gone).
#include "parley/actors/chat.hpp"
#include "parley/actors/protocol.hpp"
#include "parley/actors/spawn.hpp"
#include "parley/net/chat_api.hpp"
#include "parley/net/router.hpp"
#include "parley/net/tenant_locator.hpp"
#include "parley/persistence/executor.hpp"
#include "parley/persistence/open.hpp"
#include "server/http_session.hpp"
#include "support/process.hpp"

#include <caf/all.hpp>
#include <caf/default_attachable.hpp>
#include <caf/scheduler/test_coordinator.hpp>
#include <catch2/catch.hpp>

#include <boost/asio/io_context.hpp>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

using namespace parley;
using namespace parley::net;

namespace {

constexpr const char* tenant_id = "ten_relay";

/// The monitors `observer` holds on `observed` (removing them: call once, at the end).
std::size_t monitors_left(const caf::actor& observed, const caf::actor_addr& observer) {
  auto* a = caf::actor_cast<caf::abstract_actor*>(observed);
  return a->detach(caf::default_attachable::observe_token{observer, caf::default_attachable::monitor});
}

/// A connection that records what the exchange writes. Strand: the test's io_context, run
/// on the test thread only.
class fake_session final : public http_session {
public:
  explicit fake_session(asio::io_context& io) : io_(io) {}
  void start() override {}
  void drain() override {}
  void shut_down() override {}
  void write_response(const std::shared_ptr<exchange>&, response res) override {
    status = static_cast<int>(res.result_int());
    body = res.body();
    answered = true;
  }
  void begin_stream(const std::shared_ptr<exchange>&, response header) override {
    status = static_cast<int>(header.result_int());
  }
  void stream_chunk(std::string data) override { body += data; }
  void end_stream() override { answered = true; }
  void watch_client(const std::shared_ptr<exchange>&) override {}
  void abandon(const std::string& id, const std::string& client_id) override {
    abandoned = true;
    abandoned_ids = {id, client_id};
  }
  void drop_left() override {}
  asio::any_io_executor executor() override { return io_.get_executor(); }

  int status = 0;
  std::string body;
  bool answered = false;
  bool abandoned = false;
  std::pair<std::string, std::string> abandoned_ids;

private:
  asio::io_context& io_;
};

/// What the test's tenant saw: the relay of each chat request, in order.
struct tenant_log {
  std::vector<actors::turn_sink_actor> relays;
};

/// A tenant actor as far as a relay sees one: it admits every chat request, naming `producer`
/// (itself when null: a stateless turn), and then does what the test tells it. Test thread.
caf::behavior fake_tenant(caf::event_based_actor* self, std::shared_ptr<tenant_log> log,
                          caf::actor producer) {
  return {
    [=](actors::chat_atom, actors::chat_request&, actors::turn_sink_actor& relay) {
      log->relays.push_back(relay);
      auto p = producer ? producer : caf::actor_cast<caf::actor>(self);
      return caf::make_message(caf::actor_cast<actors::turn_control_actor>(p),
                               actors::rate_snapshot{});
    },
    [=](actors::cancel_atom, const std::string&) {},
  };
}

/// A conversation actor as far as a relay sees one: it takes cancels.
caf::behavior fake_conversation(caf::event_based_actor*) {
  return {[](actors::cancel_atom, const std::string&) {}};
}

struct relay_fixture {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  caf::scheduler::test_coordinator* sched = nullptr;
  asio::io_context io;
  parley::test::temp_dir dir;
  std::unique_ptr<persistence::store> store;
  persistence::store_executor executor{1, 16};
  std::shared_ptr<tenant_locator> tenants;
  std::shared_ptr<std::atomic<int64_t>> in_flight = std::make_shared<std::atomic<int64_t>>(0);
  router routes;

  relay_fixture() {
    cfg.set("scheduler.policy", caf::atom("testing"));
    actors::register_types(cfg);
    sys = std::make_unique<caf::actor_system>(cfg);
    sched = &dynamic_cast<caf::scheduler::test_coordinator&>(sys->scheduler());
    store = persistence::open_sqlite_store(dir.path() + "/relay.db", config::store_settings{});
    // Nobody is asked for a tenant that is not cached: every relay finds ours in the cache.
    tenants = std::make_shared<tenant_locator>(actors::tenant_directory_actor{});
    add_chat_routes(routes, chat_deps{*sys, tenants, *store, executor, in_flight, 100, nullptr});
  }

  ~relay_fixture() {
    run();
    executor.stop();
    if (sys->registry().running() != 0)
      sys->await_actors_before_shutdown(false); // never hang the suite; the test fails anyway
  }

  /// Runs the actors and the session's strand until neither has anything left to do.
  void run() {
    for (;;) {
      auto ran = sched->run();
      io.restart();
      ran += io.poll();
      if (ran == 0)
        return;
    }
  }

  /// A client posts a chat completion (the tenant `t` serves its tenant id).
  std::shared_ptr<fake_session> post(const caf::actor& t, bool stream = false) {
    tenants->remember(tenant_id, t.address());
    auto session = std::make_shared<fake_session>(io);
    request req{http::verb::post, "/v1/chat/completions", 11};
    req.body() = std::string(R"({"model":"m","messages":[{"role":"user","content":"hi"}],"stream":)") +
                 (stream ? "true" : "false") + "}";
    req.prepare_payload();
    auto ex = std::make_shared<exchange>(session, std::move(req), nullptr);
    ex->ctx().request_id = "req_" + std::to_string(++next_request);
    ex->ctx().tenant_id = tenant_id;
    auto m = routes.match(http::verb::post, "/v1/chat/completions");
    REQUIRE(m.found);
    m.found->fn(ex);
    return session;
  }

  int next_request = 0;
};

actors::chat_done done_of(const std::string& text) {
  actors::chat_done d;
  d.finish_reason = "stop";
  d.completion_tokens = 1;
  d.model = text;
  return d;
}

} // namespace

TEST_CASE("CAF keeps a monitor in the monitored actor after the monitoring actor stopped",
          "[net][unit]") {
  // The premise of the tests below, and their probe: without a demonitor the monitor stays.
  relay_fixture f;
  auto watched = f.sys->spawn(fake_conversation);
  auto watcher = f.sys->spawn([watched](caf::event_based_actor* self) -> caf::behavior {
    self->monitor(watched);
    return {[=](caf::ok_atom) { self->quit(); }};
  });
  bool stopped = false;
  watcher->attach_functor([&stopped] { stopped = true; });
  f.run();
  caf::anon_send(watcher, caf::ok_atom::value);
  f.run();
  CHECK(stopped);
  CHECK(monitors_left(watched, watcher.address()) == 1);
  caf::actor_addr watcher_addr = watcher.address();
  CHECK(monitors_left(watched, watcher_addr) == 0); // the probe removes what it counts
  caf::anon_send_exit(watched, caf::exit_reason::user_shutdown);
}

TEST_CASE("a relay that has stopped leaves no monitor in its tenant or its conversation",
          "[net][unit]") {
  relay_fixture f;
  auto log = std::make_shared<tenant_log>();
  auto conv = f.sys->spawn(fake_conversation);
  bool conversation_turn = false;
  caf::actor tenant;
  std::shared_ptr<fake_session> client;
  auto admit = [&](caf::actor producer, bool stream = false) {
    conversation_turn = static_cast<bool>(producer);
    tenant = f.sys->spawn(fake_tenant, log, producer);
    client = f.post(tenant, stream);
    f.run();
    REQUIRE(log->relays.size() == 1);
    CHECK(*f.in_flight == 1); // admitted, and waiting for the turn's events
    CHECK_FALSE(client->answered);
  };
  auto relay = [&] { return caf::actor_cast<caf::actor>(log->relays.at(0)); };

  SECTION("a stateless turn completes") {
    admit(nullptr);
    caf::anon_send(relay(), actors::done_atom::value, done_of("m"));
    f.run();
    CHECK(client->status == 200);
  }
  SECTION("a streamed stateless turn fails") {
    admit(nullptr, true);
    caf::anon_send(relay(), actors::delta_atom::value, std::string("par"));
    caf::anon_send(relay(), actors::failed_atom::value,
                   actors::chat_failure{actors::chat_error_kind::upstream_error, "gone", 502});
    f.run();
    CHECK(client->status == 200);
    CHECK(client->body.find("upstream_error") != std::string::npos);
  }
  SECTION("a conversation turn completes, its conversation living on") {
    admit(conv);
    caf::anon_send(relay(), actors::done_atom::value, done_of("m"));
    f.run();
    CHECK(client->status == 200);
  }
  SECTION("the conversation stops first and the tenant tells the relay the turn failed") {
    admit(conv);
    caf::anon_send_exit(conv, caf::exit_reason::user_shutdown);
    f.run(); // the relay now watches the tenant
    CHECK_FALSE(client->answered);
    caf::anon_send(relay(), actors::failed_atom::value,
                   actors::chat_failure{actors::chat_error_kind::not_found, "deleted", 0});
    f.run();
    CHECK(client->status == 404);
  }
  SECTION("the client goes away") {
    admit(nullptr);
    caf::anon_send(relay(), actors::cancel_atom::value, std::string("client"));
    f.run();
  }
  SECTION("the node's grace period ends") {
    admit(conv);
    caf::anon_send(relay(), caf::atom_constant<caf::atom("shutdown")>::value);
    f.run();
    CHECK(client->status == 503);
  }
  SECTION("the relay is killed") {
    admit(conv);
    caf::anon_send_exit(relay(), caf::exit_reason::kill);
    f.run();
    CHECK(client->abandoned);
  }

  CHECK(*f.in_flight == 0); // the relay has stopped
  caf::actor_addr relay_addr = log->relays.at(0).address();
  CHECK(monitors_left(tenant, relay_addr) == 0);
  if (conversation_turn)
    CHECK(monitors_left(conv, relay_addr) == 0);
  caf::anon_send_exit(tenant, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(conv, caf::exit_reason::user_shutdown);
}

TEST_CASE("a tenant serving many requests holds no monitor of the relays that have stopped",
          "[net][unit]") {
  relay_fixture f;
  auto log = std::make_shared<tenant_log>();
  auto tenant = f.sys->spawn(fake_tenant, log, caf::actor{});
  constexpr int requests = 200;
  std::vector<std::shared_ptr<fake_session>> clients;
  for (int i = 0; i < requests; ++i) {
    clients.push_back(f.post(tenant));
    f.run();
    caf::anon_send(caf::actor_cast<caf::actor>(log->relays.back()), actors::done_atom::value,
                   done_of("m"));
    f.run();
  }
  REQUIRE(log->relays.size() == requests);
  CHECK(*f.in_flight == 0);
  std::size_t left = 0;
  for (auto& r : log->relays) {
    left += monitors_left(tenant, r.address());
  }
  CHECK(left == 0);
  for (auto& c : clients)
    CHECK(c->status == 200);
  caf::anon_send_exit(tenant, caf::exit_reason::user_shutdown);
}

TEST_CASE("an exchange dropped without an answer hands its session both request ids",
          "[net][unit]") {
  asio::io_context io;
  auto session = std::make_shared<fake_session>(io);
  {
    auto ex = std::make_shared<exchange>(session, request{}, nullptr);
    ex->ctx().request_id = "0194a1b2c3d4e5f60718293a4b5c6d7e";
    ex->ctx().client_request_id = "order-17";
  } // dropped: a bug somewhere, the session must still answer (and echo the client's id)
  io.run();
  CHECK(session->abandoned);
  CHECK(session->abandoned_ids.first == "0194a1b2c3d4e5f60718293a4b5c6d7e");
  CHECK(session->abandoned_ids.second == "order-17");
}
