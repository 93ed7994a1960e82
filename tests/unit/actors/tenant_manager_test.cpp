#include "parley/actors/spawn.hpp"

#include <caf/all.hpp>
#include <catch2/catch.hpp>

using namespace parley::actors;

namespace {
/// A deterministic actor system: messages run only when the test says so (CAF's test
/// coordinator), so every step below is observed in order without sleeping.
struct deterministic {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  caf::scheduler::test_coordinator* sched = nullptr;
  deterministic() {
    cfg.set("scheduler.policy", caf::atom("testing"));
    register_types(cfg);
    sys = std::make_unique<caf::actor_system>(cfg);
    sched = &dynamic_cast<caf::scheduler::test_coordinator&>(sys->scheduler());
  }
};
} // namespace

TEST_CASE("the tenant manager spawns one tenant actor per tenant and reuses it",
          "[actors][unit]") {
  deterministic d;
  auto mgr = spawn_tenant_manager(*d.sys, nullptr);
  caf::scoped_actor self{*d.sys};
  auto ask = [&](const std::string& tenant) {
    tenant_actor out;
    self->send(mgr, tenant_atom::value, tenant);
    d.sched->run();
    self->receive([&](tenant_actor& t) { out = t; },
                  [&](caf::error& e) { FAIL(d.sys->render(e)); });
    return out;
  };
  auto a1 = ask("ten_a");
  auto a2 = ask("ten_a");
  auto b = ask("ten_b");
  CHECK(a1 == a2);
  CHECK(a1 != b);

  self->send(a1, caf::get_atom::value);
  d.sched->run();
  self->receive([&](const std::string& id) { CHECK(id == "ten_a"); },
                [&](caf::error& e) { FAIL(d.sys->render(e)); });

  self->send(mgr, stats_atom::value);
  d.sched->run();
  self->receive(
    [&](const manager_stats& s) {
      CHECK(s.active_tenants == 2);
      CHECK(s.spawned == 2);
    },
    [&](caf::error& e) { FAIL(d.sys->render(e)); });

  // A tenant actor that stops is forgotten; the next request spawns a fresh one.
  caf::anon_send_exit(b, caf::exit_reason::user_shutdown);
  d.sched->run();
  auto b2 = ask("ten_b");
  CHECK(b2 != b);
  self->send(mgr, stats_atom::value);
  d.sched->run();
  self->receive([&](const manager_stats& s) { CHECK(s.spawned == 3); },
                [&](caf::error& e) { FAIL(d.sys->render(e)); });
  caf::anon_send_exit(mgr, caf::exit_reason::user_shutdown);
  d.sched->run();
}

TEST_CASE("the tenant directory answers with this node's manager", "[actors][unit]") {
  deterministic d;
  auto mgr = spawn_tenant_manager(*d.sys, nullptr);
  auto dir = spawn_tenant_directory(*d.sys, mgr);
  caf::scoped_actor self{*d.sys};
  self->send(dir, locate_atom::value, std::string("ten_x"));
  d.sched->run();
  self->receive([&](const tenant_manager_actor& m) { CHECK(m == mgr); },
                [&](caf::error& e) { FAIL(d.sys->render(e)); });
  caf::anon_send_exit(dir, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(mgr, caf::exit_reason::user_shutdown);
  d.sched->run();
}

TEST_CASE("actor error codes render with their names", "[actors][unit]") {
  deterministic d;
  caf::error e = caf::make_error(actor_errc::overloaded);
  CHECK(d.sys->render(e).find("overloaded") != std::string::npos);
  CHECK(e == actor_errc::overloaded);
}

TEST_CASE("a tenant that keeps crashing is restarted within its budget, then isolated",
          "[actors][unit]") {
  deterministic d;
  auto mgr = spawn_tenant_manager(*d.sys, nullptr);
  caf::scoped_actor self{*d.sys};
  // A request (not a send): an error answer comes back as the response.
  auto ask = [&](const std::string& tenant, caf::error* err = nullptr) {
    tenant_actor out;
    auto h = self->request(mgr, caf::infinite, tenant_atom::value, tenant);
    d.sched->run();
    std::move(h).receive([&](tenant_actor& t) { out = t; },
                         [&](caf::error& e) {
                           if (err)
                             *err = e;
                         });
    return out;
  };
  // A crash as an exception in a handler ends an actor: with sec::runtime_error.
  auto crash = [&](const tenant_actor& t) {
    caf::anon_send(caf::actor_cast<caf::actor>(t), caf::exit_msg{t.address(), caf::make_error(caf::sec::runtime_error)});
    d.sched->run();
  };
  auto other = ask("ten_calm");
  // Five crashes are restarted on the next request...
  for (int i = 0; i < 5; ++i) {
    caf::error e;
    auto t = ask("ten_crashy", &e);
    INFO("round " << i << ": " << d.sys->render(e));
    REQUIRE(t);
    crash(t);
  }
  auto sixth = ask("ten_crashy");
  REQUIRE(sixth);
  // ...the sixth within the window spends the budget: the tenant is isolated.
  crash(sixth);
  caf::error err;
  CHECK_FALSE(ask("ten_crashy", &err));
  CHECK(err == actor_errc::tenant_isolated);
  // Other tenants are unharmed.
  CHECK(ask("ten_calm") == other);
  self->send(mgr, stats_atom::value);
  d.sched->run();
  self->receive([&](const manager_stats& s) { CHECK(s.restarts == 5); },
                [&](caf::error& e) { FAIL(d.sys->render(e)); });
  caf::anon_send_exit(mgr, caf::exit_reason::user_shutdown);
  d.sched->run();
}
