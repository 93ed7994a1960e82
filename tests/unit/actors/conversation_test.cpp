// The conversation actor's turn protocol, driven deterministically: CAF's test coordinator runs
// every actor on the test thread, a gate in front of the store decides when each commit
// completes, and a scripted provider emits each upstream event when the test says so.
//
// Two kinds of work finish on threads of their own: the history load (store_executor) and the
// group commit (turn_writer). Their completions reach actors by anon_send; the coordinator below
// hands the resulting jobs over to the test thread, which waits for them on a condition with a
// deadline. Everything else (timers included) happens only when the test steps it.
#include "parley/actors/spawn.hpp"
#include "parley/persistence/executor.hpp"
#include "parley/persistence/turn_writer.hpp"
#include "support/wait.hpp"

#include <caf/all.hpp>
#include <caf/scheduler/test_coordinator.hpp>
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>

using namespace parley::actors;
namespace persistence = parley::persistence;
using namespace std::chrono_literals;

namespace {

// -- the scheduler -----------------------------------------------------------------------------

/// CAF's test coordinator, made safe for jobs that become ready on other threads: those wait in
/// a locked hand-off queue until the test thread pumps them into the coordinator's own queue.
/// Every hand-off (and every poke()) advances an epoch the test thread can wait on.
class handoff_coordinator final : public caf::scheduler::test_coordinator {
public:
  explicit handoff_coordinator(caf::actor_system& sys)
    : test_coordinator(sys), owner_(std::this_thread::get_id()) {}

  static caf::actor_system::module* make(caf::actor_system& sys) {
    return new handoff_coordinator(sys);
  }

  /// Moves the jobs handed over by other threads into `jobs`. Test thread only.
  void pump() {
    std::deque<caf::resumable*> ready;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ready.swap(inbox_);
    }
    for (auto* job : ready)
      test_coordinator::enqueue(job);
  }

  /// Something happened on another thread (a hand-off, or a poke). Any thread.
  void poke() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++epoch_;
    }
    cv_.notify_all();
  }

  uint64_t epoch() const {
    std::lock_guard<std::mutex> lock(mu_);
    return epoch_;
  }

  /// Waits until the epoch moved past `seen`; false at the deadline.
  bool wait_past(uint64_t seen, std::chrono::steady_clock::time_point deadline) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_until(lock, deadline, [&] { return epoch_ != seen; });
  }

protected:
  void enqueue(caf::resumable* job) override {
    if (std::this_thread::get_id() == owner_)
      return test_coordinator::enqueue(job);
    {
      std::lock_guard<std::mutex> lock(mu_);
      inbox_.push_back(job);
      ++epoch_;
    }
    cv_.notify_all();
  }

private:
  std::thread::id owner_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<caf::resumable*> inbox_;
  uint64_t epoch_ = 0;
};

// -- the store ---------------------------------------------------------------------------------

/// An in-memory store with a gate in front of its commits (write_turns, which the turn writer
/// calls on its own thread). While held, the n-th commit to arrive waits until the test has
/// released n; the test sees each arrival. Only what conversations and turns use is
/// implemented; everything else answers internal.
class gated_store final : public persistence::store {
public:
  explicit gated_store(std::function<void()> on_event) : on_event_(std::move(on_event)) {}

  void add_conversation(const std::string& tenant_id, const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    persistence::conversation_record c;
    c.id = id;
    c.tenant_id = tenant_id;
    conversations_[id] = c;
  }

  /// From now on each commit waits for release() (those already through stay through).
  void hold() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = true;
    allowed_ = arrived_;
  }
  /// Lets the next `n` held commits through (already waiting or still to come).
  void release(int n = 1) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      allowed_ += n;
    }
    cv_.notify_all();
  }
  /// Lets every commit through, now and later.
  void open() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      held_ = false;
    }
    cv_.notify_all();
  }
  /// Commits that reached the gate so far.
  int arrived() const {
    std::lock_guard<std::mutex> lock(mu_);
    return arrived_;
  }
  /// History loads (get_conversation calls) so far.
  int loads() const {
    std::lock_guard<std::mutex> lock(mu_);
    return loads_;
  }
  /// Rows in the usage ledger, and the tokens (prompt plus completion) they charge.
  std::size_t ledger_rows() const {
    std::lock_guard<std::mutex> lock(mu_);
    return usage_.size();
  }
  int64_t ledger_tokens() const {
    std::lock_guard<std::mutex> lock(mu_);
    int64_t n = 0;
    for (auto& u : usage_)
      n += u.prompt_tokens + u.completion_tokens;
    return n;
  }
  std::vector<persistence::message_record> messages(const std::string& id) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = messages_.find(id);
    return it == messages_.end() ? std::vector<persistence::message_record>{} : it->second;
  }

  // -- store: what conversations and turns use --------------------------------------------

  persistence::status write_turns(const std::vector<persistence::turn_write>& batch) override {
    int ticket;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ticket = ++arrived_;
    }
    on_event_();
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !held_ || ticket <= allowed_; });
    // Seqs must be dense and next, as the real stores check; nothing is written otherwise.
    std::map<std::string, int64_t> next;
    for (auto& w : batch) {
      for (auto& m : w.messages) {
        if (!conversations_.count(m.conversation_id))
          return persistence::status(persistence::persistence_errc::not_found);
        auto n = next.emplace(m.conversation_id,
                              static_cast<int64_t>(messages_[m.conversation_id].size()) + 1)
                   .first;
        if (m.seq != n->second++)
          return persistence::status(persistence::persistence_errc::conflict);
      }
    }
    for (auto& w : batch) {
      for (auto& m : w.messages)
        messages_[m.conversation_id].push_back(m);
      usage_.insert(usage_.end(), w.usage.begin(), w.usage.end());
    }
    return persistence::ok_status();
  }

  persistence::result<persistence::conversation_record>
  get_conversation(const std::string& tenant_id, const std::string& id) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++loads_;
    auto it = conversations_.find(id);
    if (it == conversations_.end() || it->second.tenant_id != tenant_id)
      return persistence::persistence_errc::not_found;
    return it->second;
  }

  persistence::result<std::vector<persistence::message_record>>
  list_messages(const std::string&, const std::string& conversation_id, int64_t after_seq,
                int limit) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<persistence::message_record> out;
    for (auto& m : messages_[conversation_id])
      if (m.seq > after_seq && static_cast<int>(out.size()) < limit)
        out.push_back(m);
    return out;
  }

  persistence::status record_usage(const std::vector<persistence::usage_entry>& entries) override {
    std::lock_guard<std::mutex> lock(mu_);
    usage_.insert(usage_.end(), entries.begin(), entries.end());
    return persistence::ok_status();
  }

  persistence::result<std::vector<persistence::usage_row>>
  query_usage(const std::string&, persistence::millis, persistence::millis) override {
    return std::vector<persistence::usage_row>{};
  }

  // -- store: not used here -------------------------------------------------------------

  template <class T>
  using result = persistence::result<T>;
  template <class T>
  using page = persistence::page<T>;
  using millis = persistence::millis;
  using page_request = persistence::page_request;
  using tenant_record = persistence::tenant_record;
  using key_record = persistence::api_key_record;
  using conversation_record = persistence::conversation_record;
  using audit_record = persistence::audit_record;

  static persistence::store_error unused() {
    return {persistence::persistence_errc::internal, "not implemented by the test store"};
  }
  result<tenant_record> create_tenant(const tenant_record&) override { return unused(); }
  result<tenant_record> get_tenant(const std::string&) override { return unused(); }
  result<page<tenant_record>> list_tenants(const page_request&, bool) override {
    return unused();
  }
  result<tenant_record> update_tenant(const std::string&, const persistence::tenant_update&,
                                      millis) override {
    return unused();
  }
  result<key_record> create_key(const key_record&) override { return unused(); }
  result<key_record> get_key(const std::string&) override { return unused(); }
  result<page<key_record>> list_keys(const std::string&, const page_request&) override {
    return unused();
  }
  result<key_record> revoke_key(const std::string&, const std::string&, millis) override {
    return unused();
  }
  result<key_record> rotate_key(const std::string&, const std::string&, const std::string&,
                                std::optional<millis>, millis) override {
    return unused();
  }
  persistence::status touch_keys(const std::vector<std::pair<std::string, millis>>&) override {
    return unused();
  }
  result<conversation_record> create_conversation(const conversation_record&) override {
    return unused();
  }
  result<page<conversation_record>> list_conversations(const std::string&,
                                                       const page_request&) override {
    return unused();
  }
  persistence::status delete_conversation(const std::string&, const std::string&) override {
    return unused();
  }
  persistence::status append_messages(const std::vector<persistence::message_record>&) override {
    return unused();
  }
  result<std::vector<persistence::usage_entry>> list_usage_entries(const std::string&, millis,
                                                                   millis, int) override {
    return unused();
  }
  persistence::status append_audit(const audit_record&) override { return unused(); }
  result<page<audit_record>> list_audit(const persistence::audit_filter&,
                                        const page_request&) override {
    return unused();
  }
  const char* backend() const noexcept override { return "test"; }
  result<std::vector<int>> migrate() override { return std::vector<int>{}; }
  result<std::vector<int>> pending_migrations() override { return std::vector<int>{}; }
  persistence::status ping() override { return persistence::ok_status(); }
  int pool_in_use() const noexcept override { return 0; }
  int pool_size() const noexcept override { return 1; }

private:
  std::function<void()> on_event_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool held_ = false;
  int arrived_ = 0;
  int allowed_ = 0;
  int loads_ = 0;
  std::map<std::string, persistence::conversation_record> conversations_;
  std::map<std::string, std::vector<persistence::message_record>> messages_;
  std::vector<persistence::usage_entry> usage_;
};

// -- the provider ------------------------------------------------------------------------------

/// One upstream call as the scripted provider saw it; the test plays its events through
/// `listener` and sees whether it was cancelled.
struct scripted_call final : call_handle {
  upstream_call call;
  std::shared_ptr<call_listener> listener;
  std::atomic<bool> cancelled{false};
  void cancel() override { cancelled = true; }

  /// The texts of the prompt, in order.
  std::vector<std::string> prompt() const {
    std::vector<std::string> out;
    for (auto& m : call.messages)
      out.push_back(m.text);
    return out;
  }
  /// Streams `words` and ends the call.
  void answer(const std::vector<std::string>& words) {
    for (auto& w : words)
      listener->on_delta(w);
    chat_done d;
    d.finish_reason = "stop";
    listener->on_done(d);
  }
};

/// A provider that only records its calls: nothing happens upstream until the test says so.
class scripted_provider final : public provider_port {
public:
  std::shared_ptr<call_handle> start(upstream_call call,
                                     std::shared_ptr<call_listener> listener) override {
    if (throw_next_start.exchange(false))
      throw std::runtime_error("scripted provider: start failed");
    auto c = std::make_shared<scripted_call>();
    c->call = std::move(call);
    c->listener = std::move(listener);
    std::lock_guard<std::mutex> lock(mu_);
    calls_.push_back(c);
    return c;
  }
  std::size_t count() const {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_.size();
  }
  std::shared_ptr<scripted_call> at(std::size_t i) const {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_.at(i);
  }
  /// Drops the calls (and the turn engines they hold as listeners).
  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    calls_.clear();
  }

  /// The next start() throws (inside the actor that calls it: a crash), then starts work again.
  std::atomic<bool> throw_next_start{false};

private:
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<scripted_call>> calls_;
};

// -- the client --------------------------------------------------------------------------------

/// What a test relay saw. Written by the relay on the test thread, read by the test.
struct relay_log {
  std::string request_id;
  bool admitted = false;
  turn_control_actor producer;
  caf::error refused;
  std::vector<std::string> deltas;
  bool done = false;
  caf::optional<chat_failure> failed;
  bool producer_down = false; ///< our turn ended without a word: its tenant died (a 500)
  bool finished() const { return done || failed || producer_down || refused; }
  conversation_actor conversation() const { return caf::actor_cast<conversation_actor>(producer); }
};

/// A relay as net's is: asks the tenant to admit its turn, watches the producer (and the tenant
/// once a conversation producer stopped), receives the turn's events; `cancel` is its client
/// going away (it tells the producer and stops).
using test_relay_actor = turn_sink_actor::extend<caf::reacts_to<cancel_atom, std::string>>;

struct test_relay_state {
  std::shared_ptr<relay_log> log;
  std::string request_id;
  static inline const char* name = "test.relay";
};

test_relay_actor::behavior_type
test_relay(test_relay_actor::stateful_pointer<test_relay_state> self, tenant_actor tenant,
           chat_request req, std::shared_ptr<relay_log> log) {
  self->state.log = log;
  self->state.request_id = req.request_id;
  // As net's relay does: the tenant tells us how our turn ended, also when a conversation
  // producer stopped first (it settles the turns that actor took with it), so then we watch the
  // tenant; only the tenant's down is an end without a word.
  self->set_down_handler([=](caf::down_msg& dm) {
    if (log->done || log->failed)
      return;
    if (dm.source == log->producer.address() && dm.source != tenant.address()) {
      // A conversation actor stopped: its tenant tells us how our turn ended; watch the tenant.
      self->monitor(tenant);
      return;
    }
    if (dm.source == tenant.address())
      log->producer_down = true;
  });
  self->request(tenant, caf::infinite, chat_atom::value, std::move(req),
                caf::actor_cast<turn_sink_actor>(self))
    .then(
      [=](turn_control_actor producer, const rate_snapshot&) {
        log->admitted = true;
        log->producer = producer;
        self->monitor(producer);
      },
      [=](caf::error& e) { log->refused = e; });
  return {
    [=](delta_atom, std::string& text) { log->deltas.push_back(std::move(text)); },
    [=](served_atom, std::string&) {},
    [=](done_atom, chat_done&) {
      log->done = true;
      self->quit();
    },
    [=](failed_atom, chat_failure& f) {
      log->failed = f;
      self->quit();
    },
    [=](cancel_atom, std::string&) {
      if (log->producer)
        self->send(log->producer, cancel_atom::value, self->state.request_id);
      self->quit();
    },
  };
}

// -- the fixture -------------------------------------------------------------------------------

constexpr const char* tenant_id = "ten_conv";
constexpr const char* conv_id = "conv_1";

std::string user_json(const std::string& text) {
  return R"({"role":"user","content":")" + text + R"("})";
}

/// A tenant (through the real tenant manager) with one conversation, `conv_1`, on the gated
/// store, the real turn writer and a scripted provider serving model `m`. Declaration order is
/// destruction order in reverse: the actor system goes first, after teardown() stopped
/// everything that could still send to it.
struct conversation_fixture {
  actor_counters actors;
  admission_counters admissions;
  tenant_load_board board;
  handoff_coordinator* sched = nullptr;
  gated_store store{[this] {
    if (sched)
      sched->poke();
  }};
  persistence::store_executor executor{1, 64};
  persistence::turn_writer writer{store};
  std::shared_ptr<scripted_provider> provider = std::make_shared<scripted_provider>();
  std::shared_ptr<chat_services> svc = std::make_shared<chat_services>();
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  tenant_manager_actor manager;
  tenant_actor tenant;
  std::vector<caf::actor> relays;
  int next_request = 1;
  std::string tenant_config; ///< the tenant's config (JSON) that every client's request carries

  conversation_fixture() {
    store.add_conversation(tenant_id, conv_id);
    svc->store = &store;
    svc->executor = &executor;
    svc->writer = &writer;
    route r;
    r.model = "m";
    r.upstream_model = "m-upstream";
    r.provider = provider;
    svc->routes = std::make_shared<route_table>(std::vector<route>{r});
    svc->conversation_idle = 5min;
    svc->counters = &admissions;
    svc->actors = &actors;
    svc->load = &board;
    cfg.set("scheduler.policy", caf::atom("testing"));
    cfg.module_factories.push_back(&handoff_coordinator::make);
    register_types(cfg);
    sys = std::make_unique<caf::actor_system>(cfg);
    sched = &dynamic_cast<handoff_coordinator&>(sys->scheduler());
    manager = spawn_tenant_manager(*sys, nullptr, svc);
    {
      caf::scoped_actor self{*sys};
      self->send(manager, tenant_atom::value, std::string(tenant_id));
      sched->run();
      self->receive([&](tenant_actor& t) { tenant = t; },
                    [&](caf::error& e) { FAIL(sys->render(e)); });
    }
  }

  ~conversation_fixture() { teardown(); }

  /// Runs actors on the test thread until `done()` holds, waiting for work that finishes on
  /// other threads (history loads, commits); false if it does not hold within the deadline.
  template <class Pred>
  bool run_until(Pred done, std::chrono::milliseconds limit = 5s) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
      auto seen = sched->epoch();
      sched->pump();
      sched->run();
      if (done())
        return true;
      if (!sched->wait_past(seen, deadline))
        return done();
    }
  }

  /// A client sends a turn with `text` (spawned, not yet run).
  std::shared_ptr<relay_log> client(const std::string& text,
                                    const std::string& conversation = conv_id,
                                    int64_t max_tokens = 0) {
    chat_request req;
    req.request_id = "req_" + std::to_string(next_request++);
    req.tenant_config = tenant_config;
    req.max_tokens = max_tokens;
    req.tenant_id = tenant_id;
    req.model = "m";
    req.messages.push_back(to_chat_message(user_json(text)));
    req.conversation_id = conversation;
    req.extra_json = "{}";
    req.stream = true;
    auto log = std::make_shared<relay_log>();
    log->request_id = req.request_id;
    auto relay = sys->spawn(test_relay, tenant, std::move(req), log);
    relays.push_back(caf::actor_cast<caf::actor>(relay));
    return log;
  }

  caf::actor relay(std::size_t i) const { return relays.at(i); }

  /// The tenant's turns in flight (admitted, not yet ended).
  int64_t in_flight() const {
    for (auto& [id, n] : board.top(16))
      if (id == tenant_id)
        return n;
    return -1;
  }

  /// Runs exactly the next job of `who`, which must be ready.
  template <class Handle>
  void step(const Handle& who) {
    REQUIRE(sched->prioritize(who));
    sched->run_once();
  }

  /// Runs ready jobs (not those of `except`) until only its are left.
  template <class Handle>
  void run_all_but(const Handle& except) {
    auto* skip = dynamic_cast<caf::resumable*>(caf::actor_cast<caf::abstract_actor*>(except));
    sched->run_jobs_filtered([skip](caf::resumable* r) { return r != skip; });
  }

  /// Whether `who` has a job ready to run.
  template <class Handle>
  bool ready(const Handle& who) const {
    auto* job = dynamic_cast<caf::resumable*>(caf::actor_cast<caf::abstract_actor*>(who));
    return std::find(sched->jobs.begin(), sched->jobs.end(), job) != sched->jobs.end();
  }

  /// run_until, but `except` does not run.
  template <class Handle, class Pred>
  bool run_all_but_until(const Handle& except, Pred done, std::chrono::milliseconds limit = 5s) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
      auto seen = sched->epoch();
      sched->pump();
      run_all_but(except);
      if (done())
        return true;
      if (!sched->wait_past(seen, deadline))
        return done();
    }
  }

  std::vector<std::string> stored_texts() const {
    std::vector<std::string> out;
    for (auto& m : store.messages(conv_id))
      out.push_back(to_chat_message(m.content_json).text);
    return out;
  }

  void teardown() {
    store.open();
    writer.stop();
    executor.stop();
    caf::anon_send_exit(manager, caf::exit_reason::user_shutdown);
    for (auto& r : relays)
      caf::anon_send_exit(r, caf::exit_reason::kill);
    bool stopped = run_until([&] { return sys->registry().running() == 0; });
    if (!stopped)
      sys->await_actors_before_shutdown(false); // never hang the suite; the test fails anyway
    provider->clear();
    relays.clear();
    tenant = nullptr;
    manager = nullptr;
    sys.reset();
  }
};

bool contains(const std::vector<std::string>& v, const std::string& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

/// Whether any of `v` has `x` in it.
bool mentions(const std::vector<std::string>& v, const std::string& x) {
  return std::any_of(v.begin(), v.end(),
                     [&](const std::string& s) { return s.find(x) != std::string::npos; });
}

} // namespace

TEST_CASE("a conversation turn commits the user message before its upstream call and the reply "
          "before the client sees the end",
          "[actors][unit]") {
  conversation_fixture f;
  f.store.hold();
  auto c1 = f.client("hello");
  REQUIRE(f.run_until([&] { return f.store.arrived() == 1; }));
  CHECK(f.provider->count() == 0); // its user message is not committed yet
  f.store.release();
  REQUIRE(f.run_until([&] { return f.provider->count() == 1; }));
  CHECK(f.stored_texts() == std::vector<std::string>{"hello"});
  CHECK(contains(f.provider->at(0)->prompt(), "hello"));

  f.provider->at(0)->answer({"hi", " there"});
  REQUIRE(f.run_until([&] { return f.store.arrived() == 2; }));
  f.sched->run();
  CHECK(c1->deltas == std::vector<std::string>{"hi", " there"});
  CHECK_FALSE(c1->done); // the reply is being committed
  f.store.release();
  REQUIRE(f.run_until([&] { return c1->finished(); }));
  CHECK(c1->done);
  CHECK(f.stored_texts() == std::vector<std::string>{"hello", "hi there"});
  REQUIRE(f.run_until([&] { return f.in_flight() == 0; }));
}

TEST_CASE("a conversation drops store acknowledgements and turn ends that carry another turn's id",
          "[actors][unit]") {
  conversation_fixture f;
  f.store.hold();
  auto c1 = f.client("one");
  REQUIRE(f.run_until([&] { return f.store.arrived() == 1; }));
  auto conv = c1->conversation();
  REQUIRE(conv);
  auto c2 = f.client("two"); // queued behind turn 1
  REQUIRE(f.run_until([&] { return c2->admitted; }));

  // Turn 1 (id 1) is saving its user message: an ack or an end for turn 2 changes nothing.
  caf::anon_send(conv, saved_atom::value, uint64_t{2}, persistence::persistence_errc::ok);
  turn_outcome stray;
  stray.turn_id = 2;
  stray.request_id = "req_2";
  caf::anon_send(conv, ended_atom::value, stray);
  f.sched->run();
  CHECK(f.provider->count() == 0);
  CHECK(f.in_flight() == 2);

  f.store.release();
  REQUIRE(f.run_until([&] { return f.provider->count() == 1; }));
  // Turn 1 is calling: a repeated ack for it does not start a second call; an end for turn 2,
  // even one claiming a committed reply, ends nothing and adds nothing to the history.
  caf::anon_send(conv, saved_atom::value, uint64_t{1}, persistence::persistence_errc::ok);
  stray.completed = true;
  stray.reply = to_chat_message(std::string(R"({"role":"assistant","content":"stray"})"));
  stray.reply_seq = 2;
  caf::anon_send(conv, ended_atom::value, stray);
  f.sched->run();
  CHECK(f.provider->count() == 1);
  CHECK_FALSE(f.provider->at(0)->cancelled);
  CHECK(f.in_flight() == 2);
  CHECK_FALSE(c2->finished());

  // A late failing ack for turn 1 while it calls is dropped too (no reload, no failure).
  caf::anon_send(conv, saved_atom::value, uint64_t{1}, persistence::persistence_errc::unavailable);
  f.sched->run();
  CHECK_FALSE(c1->finished());

  f.store.open();
  f.provider->at(0)->answer({"ok1"});
  REQUIRE(f.run_until([&] { return c1->finished() && f.provider->count() == 2; }));
  CHECK(c1->done);
  auto prompt2 = f.provider->at(1)->prompt();
  CHECK(contains(prompt2, "ok1"));
  CHECK_FALSE(mentions(prompt2, "stray"));
  f.provider->at(1)->answer({"ok2"});
  REQUIRE(f.run_until([&] { return c2->finished() && f.in_flight() == 0; }));
  CHECK(c2->done);
  CHECK(f.stored_texts() == std::vector<std::string>{"one", "ok1", "two", "ok2"});
}

TEST_CASE("ending a conversation turn cancels its provider call", "[actors][unit]") {
  conversation_fixture f;
  auto c1 = f.client("hello");
  REQUIRE(f.run_until([&] { return f.provider->count() == 1; }));
  auto call = f.provider->at(0);

  SECTION("the client goes away") {
    caf::anon_send(f.relay(0), cancel_atom::value, std::string("client"));
    REQUIRE(f.run_until([&] { return f.in_flight() == 0; }));
    CHECK(call->cancelled);
    // The conversation goes on: the next turn is served on the same history.
    auto c2 = f.client("again");
    REQUIRE(f.run_until([&] { return f.provider->count() == 2; }));
    CHECK(contains(f.provider->at(1)->prompt(), "hello"));
    f.provider->at(1)->answer({"fine"});
    REQUIRE(f.run_until([&] { return c2->finished(); }));
    CHECK(c2->done);
  }
  SECTION("the conversation is deleted while it calls") {
    caf::anon_send(f.tenant, forget_atom::value, std::string(conv_id));
    REQUIRE(f.run_until([&] { return f.actors.conversations.load() == 0; }));
    CHECK(call->cancelled);
  }
  SECTION("the tenant stops while the conversation calls") {
    caf::anon_send_exit(f.tenant, caf::exit_reason::user_shutdown);
    REQUIRE(f.run_until([&] { return f.actors.conversations.load() == 0; }));
    CHECK(call->cancelled);
  }
}

TEST_CASE("a client gone while its user message is being committed does not break the next turn",
          "[actors][unit]") {
  conversation_fixture f;
  f.store.hold();
  auto c1 = f.client("first");
  REQUIRE(f.run_until([&] { return f.store.arrived() == 1; }));

  bool told = false;
  SECTION("its relay cancels") {
    caf::anon_send(f.relay(0), cancel_atom::value, std::string("client"));
    told = true;
    f.sched->run();
    CHECK_FALSE(c1->finished()); // its commit is still held: nothing ended yet
  }
  SECTION("its relay dies without a word") {
    caf::anon_send_exit(f.relay(0), caf::exit_reason::kill);
    f.sched->run();
    CHECK_FALSE(c1->finished());
  }
  auto c2 = f.client("second");
  REQUIRE(f.run_until([&] { return c2->admitted; }));

  // The commit of turn 1 goes through: it advances the history, then turn 1 ends.
  f.store.open();
  if (told) {
    // It ends without an upstream call: the next call is turn 2's.
    REQUIRE(f.run_until([&] { return f.provider->count() == 1; }));
  } else {
    // Nobody told the conversation: turn 1 runs to its end, read by nobody.
    REQUIRE(f.run_until([&] { return f.provider->count() == 1; }));
    CHECK(f.provider->at(0)->prompt() == std::vector<std::string>{"first"});
    f.provider->at(0)->answer({"unread"});
    REQUIRE(f.run_until([&] { return f.provider->count() == 2; }));
  }
  auto call2 = f.provider->at(f.provider->count() - 1);
  auto prompt2 = call2->prompt();
  CHECK(prompt2.back() == "second");
  CHECK(contains(prompt2, "first")); // turn 1's message was committed: it is history
  call2->answer({"answer"});
  REQUIRE(f.run_until([&] { return c2->finished() && f.in_flight() == 0; }));
  CHECK(c2->done);
  CHECK_FALSE(c2->failed);
  if (told)
    CHECK(f.stored_texts() == std::vector<std::string>{"first", "second", "answer"});
  else
    CHECK(f.stored_texts() == std::vector<std::string>{"first", "unread", "second", "answer"});
}

TEST_CASE("a queued conversation turn starts its upstream call only after its own user message "
          "is committed",
          "[actors][unit]") {
  conversation_fixture f;
  f.store.hold();
  auto c1 = f.client("one");
  REQUIRE(f.run_until([&] { return f.store.arrived() == 1; }));
  auto c2 = f.client("two");
  REQUIRE(f.run_until([&] { return c2->admitted; }));
  f.store.release(); // turn 1's user message
  REQUIRE(f.run_until([&] { return f.provider->count() == 1; }));
  f.provider->at(0)->answer({"ok1"});
  REQUIRE(f.run_until([&] { return f.store.arrived() == 2; }));
  f.store.release(); // turn 1's reply
  REQUIRE(f.run_until([&] { return c1->finished() && f.store.arrived() == 3; }));
  CHECK(c1->done);
  // Turn 2's user message is at the gate: everything else that can run has run.
  f.sched->run();
  CHECK(f.provider->count() == 1);
  CHECK(f.stored_texts() == std::vector<std::string>{"one", "ok1"});
  f.store.release();
  REQUIRE(f.run_until([&] { return f.provider->count() == 2; }));
  CHECK(f.stored_texts() == std::vector<std::string>{"one", "ok1", "two"});
  f.store.open();
  f.provider->at(1)->answer({"ok2"});
  REQUIRE(f.run_until([&] { return c2->finished() && f.in_flight() == 0; }));
  CHECK(c2->done);
}

TEST_CASE("late events of a cancelled conversation call are not applied to the next turn",
          "[actors][unit]") {
  conversation_fixture f;
  auto c1 = f.client("one");
  REQUIRE(f.run_until([&] { return f.provider->count() == 1; }));
  auto call1 = f.provider->at(0);
  call1->listener->on_delta("early");
  auto c2 = f.client("two");
  REQUIRE(f.run_until([&] { return c2->admitted; }));
  caf::anon_send(f.relay(0), cancel_atom::value, std::string("client"));
  REQUIRE(f.run_until([&] { return f.provider->count() == 2; }));
  CHECK(call1->cancelled);
  auto call2 = f.provider->at(1);

  // The cancelled call goes on talking (events already in flight): nobody hears it.
  call1->listener->on_delta("late");
  chat_done d;
  d.finish_reason = "stop";
  call1->listener->on_done(d);
  call2->answer({"fresh"});
  REQUIRE(f.run_until([&] { return c2->finished() && f.in_flight() == 0; }));
  CHECK(c2->done);
  CHECK(c2->deltas == std::vector<std::string>{"fresh"});
  CHECK_FALSE(mentions(c1->deltas, "late"));
  // Turn 1's partial answer was never committed; turn 2's was.
  CHECK(f.stored_texts() == std::vector<std::string>{"one", "two", "fresh"});

  auto c3 = f.client("three");
  REQUIRE(f.run_until([&] { return f.provider->count() == 3; }));
  auto prompt3 = f.provider->at(2)->prompt();
  CHECK_FALSE(mentions(prompt3, "late"));
  CHECK_FALSE(mentions(prompt3, "early"));
  CHECK(contains(prompt3, "fresh"));
  f.provider->at(2)->answer({"end"});
  REQUIRE(f.run_until([&] { return c3->finished(); }));
}

TEST_CASE("an idle conversation passivates after its idle timeout and a later turn reloads its "
          "history",
          "[actors][unit]") {
  conversation_fixture f;
  auto c1 = f.client("remember me");
  REQUIRE(f.run_until([&] { return f.provider->count() == 1; }));
  f.provider->at(0)->answer({"noted"});
  REQUIRE(f.run_until([&] { return c1->finished() && f.in_flight() == 0; }));
  auto first = c1->conversation();
  CHECK(f.actors.conversations.load() == 1);
  CHECK(f.store.loads() == 1);

  REQUIRE(f.sched->trigger_timeouts() > 0); // the idle timer
  REQUIRE(f.run_until([&] { return f.actors.conversations.load() == 0; }));
  CHECK(f.actors.conversation_passivations.load() == 1);

  auto c2 = f.client("what did I say");
  REQUIRE(f.run_until([&] { return f.provider->count() == 2; }));
  CHECK(c2->conversation() != first); // a fresh actor...
  CHECK(f.store.loads() == 2);        // ...that loaded the history again
  auto prompt = f.provider->at(1)->prompt();
  CHECK(prompt == std::vector<std::string>{"remember me", "noted", "what did I say"});
  f.provider->at(1)->answer({"you said"});
  REQUIRE(f.run_until([&] { return c2->finished() && f.in_flight() == 0; }));
  CHECK(c2->done);
  CHECK(f.stored_texts() ==
        std::vector<std::string>{"remember me", "noted", "what did I say", "you said"});
}

TEST_CASE("a turn sent to a conversation right behind its idle timeout is served and not lost",
          "[actors][unit]") {
  conversation_fixture f;
  auto c1 = f.client("before");
  REQUIRE(f.run_until([&] { return f.provider->count() == 1; }));
  f.provider->at(0)->answer({"idle soon"});
  REQUIRE(f.run_until([&] { return c1->finished() && f.in_flight() == 0; }));
  auto conv = c1->conversation();

  // The idle timer fires: its message waits in the conversation's mailbox. Before the
  // conversation runs, the tenant admits a turn and sends it right behind.
  REQUIRE(f.sched->trigger_timeouts() > 0);
  auto c2 = f.client("after");
  f.run_all_but(conv);
  REQUIRE(c2->admitted);
  CHECK(c2->conversation() == conv);
  CHECK(f.in_flight() == 1);

  // The conversation runs: it must serve the turn, not passivate with it in its mailbox.
  REQUIRE(f.run_until([&] { return f.provider->count() == 2 || c2->finished(); }));
  CHECK_FALSE(c2->producer_down);
  if (c2->producer_down) {
    // The race: the turn died in the passivated actor's mailbox (the relay answers 500) and
    // its admission is never settled.
    f.sched->run();
    CHECK(f.in_flight() == 0);
  }
  REQUIRE(f.provider->count() == 2);
  CHECK(f.provider->at(1)->prompt() == std::vector<std::string>{"before", "idle soon", "after"});
  f.provider->at(1)->answer({"served"});
  REQUIRE(f.run_until([&] { return c2->finished() && f.in_flight() == 0; }));
  CHECK(c2->done);
  CHECK(f.actors.conversation_passivations.load() == 0);
  CHECK(f.actors.conversations.load() == 1);

  // Idle again, it passivates at its next timeout; the turn after that reactivates it.
  REQUIRE(f.sched->trigger_timeouts() > 0);
  REQUIRE(f.run_until([&] { return f.actors.conversations.load() == 0; }));
  CHECK(f.actors.conversation_passivations.load() == 1);
  auto c3 = f.client("later");
  REQUIRE(f.run_until([&] { return f.provider->count() == 3; }));
  CHECK(c3->conversation() != conv);
  f.provider->at(2)->answer({"back"});
  REQUIRE(f.run_until([&] { return c3->finished() && f.in_flight() == 0; }));
  CHECK(c3->done);
}

TEST_CASE("a turn that reaches the tenant after it let an idle conversation go is served by a "
          "fresh actor",
          "[actors][unit]") {
  conversation_fixture f;
  auto c1 = f.client("before");
  REQUIRE(f.run_until([&] { return f.provider->count() == 1; }));
  f.provider->at(0)->answer({"idle soon"});
  REQUIRE(f.run_until([&] { return c1->finished() && f.in_flight() == 0; }));
  auto conv = c1->conversation();

  REQUIRE(f.sched->trigger_timeouts() > 0);
  f.step(conv);     // the idle timeout: the conversation lets its tenant know it is going
  f.step(f.tenant); // the tenant forgets it
  // A turn arrives before the old actor has quit: a fresh actor gets it; the old one, still
  // draining its mailbox, never serves a turn again.
  auto c2 = f.client("after");
  REQUIRE(f.run_until([&] { return f.provider->count() == 2 || c2->finished(); }));
  REQUIRE(f.provider->count() == 2);
  CHECK(c2->conversation() != conv);
  CHECK(f.provider->at(1)->prompt() == std::vector<std::string>{"before", "idle soon", "after"});
  f.provider->at(1)->answer({"served"});
  REQUIRE(f.run_until([&] { return c2->finished() && f.in_flight() == 0; }));
  CHECK(c2->done);
  CHECK(f.actors.conversation_passivations.load() == 1);
  CHECK(f.actors.conversations.load() == 1);
  CHECK(f.stored_texts() == std::vector<std::string>{"before", "idle soon", "after", "served"});
}

// Review (79968c1): the relay asks its tenant with caf::infinite. A request the tenant has
// already taken from its mailbox and parked (waiting_for_budget) is never answered when the
// tenant stops: CAF 0.17 bounces only what is still queued, and a dropped response_promise
// sends nothing. With no timeout the relay (and its HTTP client) waits forever.
TEST_CASE("a relay whose admission is parked for the daily budget is answered when "
          "its tenant stops",
          "[actors][unit]") {
  conversation_fixture f;
  // Hold the store executor's only worker, so that the tenant's budget load stays queued.
  std::mutex gate_mu;
  std::condition_variable gate_cv;
  bool gate_open = false;
  REQUIRE(f.executor.try_post([&] {
    std::unique_lock<std::mutex> lock(gate_mu);
    gate_cv.wait(lock, [&] { return gate_open; });
  }));
  chat_request req;
  req.request_id = "req_budget";
  req.tenant_id = tenant_id;
  req.model = "m";
  req.messages.push_back(to_chat_message(user_json("hello")));
  req.extra_json = "{}";
  req.stream = true;
  req.tenant_config = R"({"limits":{"tokens_per_day":100000}})";
  auto log = std::make_shared<relay_log>();
  auto relay = f.sys->spawn(test_relay, f.tenant, std::move(req), log);
  f.relays.push_back(caf::actor_cast<caf::actor>(relay));
  f.sched->run(); // the relay asks; the tenant parks the request and queues the budget load
  CHECK_FALSE(log->finished());

  // The tenant stops (a crash, or the node's shutdown).
  caf::anon_send_exit(f.tenant, caf::exit_reason::unhandled_exception);
  f.sched->run();
  f.sched->trigger_timeouts(); // there is none: the request has no timeout
  bool answered = f.run_until([&] { return log->finished(); }, 2s);
  {
    std::lock_guard<std::mutex> lock(gate_mu);
    gate_open = true;
  }
  gate_cv.notify_all();
  CHECK(answered); // fails on 79968c1: nothing ever answers this relay
}

// A conversation turn's end travels conversation -> tenant -> relay, while the relay watches the
// conversation (its producer). If the conversation actor stops right after it forwarded a
// completed, committed turn's end (its conversation deleted, a crash in its next turn) and the
// relay runs before the tenant has told it, the relay sees its producer down first: it must not
// answer 500 "ended unexpectedly" for an answer that was committed and charged.
TEST_CASE("a committed conversation turn is not reported as failed when its "
          "conversation stops right after forwarding the end",
          "[actors][unit]") {
  conversation_fixture f;
  auto c1 = f.client("hello");
  REQUIRE(f.run_until([&] { return f.provider->count() == 1; }));
  auto conv = c1->conversation();
  REQUIRE(conv);
  f.provider->at(0)->answer({"hi"});
  auto* tenant_job =
    dynamic_cast<caf::resumable*>(caf::actor_cast<caf::abstract_actor*>(f.tenant));
  auto tenant_ready = [&] {
    return std::find(f.sched->jobs.begin(), f.sched->jobs.end(), tenant_job) !=
           f.sched->jobs.end();
  };
  // Everything but the tenant runs: the reply is committed, the conversation forwards the end.
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!(f.store.arrived() == 2 && tenant_ready())) {
    auto seen = f.sched->epoch();
    f.sched->pump();
    f.run_all_but(f.tenant);
    if (f.store.arrived() == 2 && tenant_ready())
      break;
    REQUIRE(f.sched->wait_past(seen, deadline));
  }
  CHECK(c1->deltas == std::vector<std::string>{"hi"});
  CHECK(f.stored_texts() == std::vector<std::string>{"hello", "hi"}); // committed
  // The conversation stops now (e.g. DELETE /v1/conversations/conv_1 reached the tenant
  // just before the end did); the relay runs before the busy tenant.
  caf::anon_send_exit(conv, caf::exit_reason::user_shutdown);
  f.run_all_but(f.tenant);
  f.sched->run();
  CHECK(c1->done);
  CHECK_FALSE(c1->producer_down);
}

// -- a conversation actor that stops with turns unended ----------------------------------------
//
// The tenant admitted each of these turns (a slot, a reservation, an estimate) and settles each
// exactly once: at its end, or at the down message of its conversation actor when that actor
// stops first; their clients hear a clean failure from the tenant, never a 500.

namespace {

/// The kind of failure a client was told ("" if it was not told a failure).
std::string failure_of(const relay_log& c) {
  return c.failed ? to_string(c.failed->kind) : "";
}

} // namespace

TEST_CASE("deleting a conversation with a turn running and one queued settles both and tells "
          "their clients the conversation is gone",
          "[actors][unit]") {
  conversation_fixture f;
  f.tenant_config = R"({"limits":{"max_concurrent":2}})";
  f.store.add_conversation(tenant_id, "conv_2");
  auto c1 = f.client("one");
  REQUIRE(f.run_until([&] { return f.provider->count() == 1; }));
  auto call1 = f.provider->at(0);
  call1->listener->on_delta("partial");
  auto c2 = f.client("two"); // queued behind turn 1
  REQUIRE(f.run_until([&] { return c2->admitted; }));
  CHECK(f.in_flight() == 2);
  auto full = f.client("full", "conv_2");
  REQUIRE(f.run_until([&] { return full->finished(); }));
  CHECK(full->refused == chat_error_kind::rate_limited);

  caf::anon_send(f.tenant, forget_atom::value, std::string(conv_id));
  REQUIRE(f.run_until([&] { return c1->finished() && c2->finished(); }));
  CHECK(call1->cancelled);
  CHECK(c1->deltas == std::vector<std::string>{"partial"});
  for (auto& c : {c1, c2}) {
    CHECK_FALSE(c->producer_down);
    CHECK(failure_of(*c) == "not_found");
  }
  REQUIRE(f.run_until([&] { return f.in_flight() == 0; }));

  // The slots are free again: the tenant admits up to its limit, and no further.
  auto c3 = f.client("three", "conv_2");
  auto c4 = f.client("four", "conv_2");
  REQUIRE(f.run_until([&] { return c3->admitted && c4->admitted; }));
  auto over = f.client("over", "conv_2");
  REQUIRE(f.run_until([&] { return over->finished(); }));
  CHECK(over->refused == chat_error_kind::rate_limited);
  REQUIRE(f.run_until([&] { return f.provider->count() == 2; }));
  f.provider->at(1)->answer({"three done"});
  REQUIRE(f.run_until([&] { return f.provider->count() == 3; }));
  f.provider->at(2)->answer({"four done"});
  REQUIRE(f.run_until([&] { return c3->finished() && c4->finished() && f.in_flight() == 0; }));
  CHECK(c3->done);
  CHECK(c4->done);
}

TEST_CASE("a conversation actor that crashes mid-turn settles its turns, charging each what its "
          "ledger rows hold, and tells their clients",
          "[actors][unit]") {
  constexpr int64_t budget = 200; // tokens per day
  conversation_fixture f;
  f.tenant_config = R"({"limits":{"max_concurrent":2,"tokens_per_day":200}})";
  f.store.add_conversation(tenant_id, "conv_2");
  std::vector<std::shared_ptr<relay_log>> lost; // the turns the crash took

  SECTION("it is stopped with an error while its turn calls the upstream") {
    auto c1 = f.client("one", conv_id, 20);
    REQUIRE(f.run_until([&] { return f.provider->count() == 1; }));
    auto call1 = f.provider->at(0);
    call1->listener->on_delta("a");
    call1->listener->on_delta("b");
    auto c2 = f.client("two", conv_id, 20); // queued behind turn 1
    REQUIRE(f.run_until([&] { return c2->admitted; }));
    CHECK(f.in_flight() == 2);
    caf::anon_send_exit(c1->conversation(), caf::exit_reason::unhandled_exception);
    REQUIRE(f.run_until([&] { return c1->finished() && c2->finished(); }));
    CHECK(call1->cancelled);
    CHECK(c1->deltas == std::vector<std::string>{"a", "b"});
    // Turn 1 was charged for what its client received: one ledger row, committed by its engine.
    REQUIRE(f.run_until([&] { return f.store.ledger_rows() == 1; }));
    CHECK(f.store.ledger_tokens() > 0);
    lost = {c1, c2};
  }
  SECTION("it throws while it starts a turn's upstream call, with the next turn in its mailbox") {
    f.store.hold();
    auto c1 = f.client("one", conv_id, 20);
    REQUIRE(f.run_until([&] { return f.store.arrived() == 1; }));
    auto conv = c1->conversation();
    f.provider->throw_next_start = true;
    f.store.release(); // turn 1's user message: the acknowledgement waits in the mailbox...
    REQUIRE(f.run_all_but_until(conv, [&] { return f.ready(conv); }));
    auto c2 = f.client("two", conv_id, 20); // ...and turn 2 right behind it
    f.run_all_but(conv);
    REQUIRE(c2->admitted);
    CHECK(f.in_flight() == 2);
    f.store.open();
    REQUIRE(f.run_until([&] { return c1->finished() && c2->finished(); }));
    CHECK(f.provider->count() == 0);
    CHECK(f.store.ledger_rows() == 0); // no upstream attempt: nothing charged
    lost = {c1, c2};
  }

  for (auto& c : lost) {
    CHECK_FALSE(c->producer_down);
    CHECK(failure_of(*c) == "unavailable");
  }
  REQUIRE(f.run_until([&] { return f.in_flight() == 0; }));
  // The budget counts exactly what the ledger holds, and nothing stays reserved: a turn that
  // asks for more than is left is granted (and capped at) exactly the rest.
  auto calls = f.provider->count();
  auto c3 = f.client("three", "conv_2");
  REQUIRE(f.run_until([&] { return f.provider->count() == calls + 1; }));
  auto call3 = f.provider->at(calls);
  auto prompt3 = to_chat_message(user_json("three")).tokens;
  CHECK(call3->call.max_tokens == budget - f.store.ledger_tokens() - prompt3);
  call3->answer({"fine"});
  REQUIRE(f.run_until([&] { return c3->finished() && f.in_flight() == 0; }));
  CHECK(c3->done);
}

TEST_CASE("a turn end that races the down message of its conversation actor is settled once",
          "[actors][unit]") {
  conversation_fixture f;
  f.store.add_conversation(tenant_id, "conv_2");
  // A turn elsewhere holds a slot throughout, so that a second settlement would show.
  auto other = f.client("elsewhere", "conv_2");
  REQUIRE(f.run_until([&] { return f.provider->count() == 1; }));
  auto c1 = f.client("one");
  REQUIRE(f.run_until([&] { return f.provider->count() == 2; }));
  auto c2 = f.client("two"); // queued behind turn 1
  REQUIRE(f.run_until([&] { return c2->admitted; }));
  auto conv = c1->conversation();
  CHECK(f.in_flight() == 3);

  SECTION("the end is on its way to the tenant when the conversation stops") {
    // Turn 1 ends: the conversation reports it to the tenant, which has not read it yet, and
    // starts turn 2 (its user message waits at the gate). Then the conversation crashes.
    f.store.hold();
    f.store.release(); // turn 1's reply
    f.provider->at(1)->answer({"ok1"});
    REQUIRE(f.run_all_but_until(f.tenant, [&] { return f.store.arrived() == 4; }));
    caf::anon_send_exit(conv, caf::exit_reason::unhandled_exception);
    f.run_all_but(f.tenant);
    f.store.open();
    REQUIRE(f.run_until([&] { return c1->finished() && c2->finished(); }));
    CHECK(c1->done); // its reply is durable: the end it was told
    // Turn 2's user message was at the gate when the actor stopped: the store still commits
    // it, on its own thread (nobody is told, so no actor runs for it).
    auto committed = std::vector<std::string>{"one", "ok1", "two"};
    CHECK(parley::test::wait_until(parley::test::deadline_in(5s),
                                   [&] { return f.stored_texts() == committed; }));
    CHECK(f.stored_texts() == committed);
    CHECK_FALSE(c2->producer_down);
    CHECK(failure_of(*c2) == "unavailable");
    CHECK(f.in_flight() == 1);
  }
  SECTION("an end for a turn of the stopped conversation arrives after its down message") {
    caf::anon_send_exit(conv, caf::exit_reason::unhandled_exception);
    REQUIRE(f.run_until([&] { return c1->finished() && c2->finished(); }));
    for (auto& c : {c1, c2}) {
      CHECK_FALSE(c->producer_down);
      CHECK(failure_of(*c) == "unavailable");
    }
    CHECK(f.in_flight() == 1);
    turn_outcome late;
    late.request_id = c1->request_id;
    late.turn_id = 1;
    late.tokens = 7;
    caf::anon_send(f.tenant, ended_atom::value, late);
    f.sched->run();
    CHECK(f.in_flight() == 1);
  }

  f.provider->at(0)->answer({"still here"});
  REQUIRE(f.run_until([&] { return other->finished() && f.in_flight() == 0; }));
  CHECK(other->done);
}

TEST_CASE("a turn whose request id is already in flight at its tenant is refused and the first "
          "one is unaffected",
          "[actors][unit]") {
  conversation_fixture f;
  f.store.add_conversation(tenant_id, "conv_2");
  auto c1 = f.client("one");
  REQUIRE(f.run_until([&] { return f.provider->count() == 1; }));
  f.next_request = 1; // a second turn under c1's id (net never makes one: the id is parley's own)
  auto twin = f.client("twin", "conv_2");
  REQUIRE(f.run_until([&] { return twin->finished(); }));
  CHECK(twin->request_id == c1->request_id);
  CHECK(twin->refused == chat_error_kind::invalid_request);
  CHECK(f.in_flight() == 1);
  f.provider->at(0)->answer({"only once"});
  REQUIRE(f.run_until([&] { return c1->finished() && f.in_flight() == 0; }));
  CHECK(c1->done);
  // Once it has ended, the id may be used again.
  f.next_request = 1;
  auto again = f.client("again", "conv_2");
  CHECK(again->request_id == c1->request_id);
  REQUIRE(f.run_until([&] { return f.provider->count() == 2; }));
  f.provider->at(1)->answer({"fine"});
  REQUIRE(f.run_until([&] { return again->finished() && f.in_flight() == 0; }));
  CHECK(again->done);
}

TEST_CASE("a tenant actor keeps the newest config version when a request brings an older one",
          "[actors][unit]") {
  conversation_fixture f;
  // Nodes read the tenant at different times: limits at version 5, then a request from a node
  // whose cache still holds version 4, then version 6 with the config of version 4 again.
  auto limits = [&](const std::string& config, int64_t version) {
    caf::scoped_actor self{*f.sys};
    self->send(f.tenant, limits_atom::value, config, version);
    f.sched->run();
    int64_t limit = -1;
    self->receive([&](const rate_snapshot& s) { limit = s.limit_requests; },
                  [&](caf::error& e) { FAIL(f.sys->render(e)); });
    return limit;
  };
  const std::string v4 = R"({"limits":{"requests_per_minute":40}})";
  const std::string v5 = R"({"limits":{"requests_per_minute":50}})";
  CHECK(limits(v4, 4) == 40);
  CHECK(limits(v5, 5) == 50);
  CHECK(limits(v4, 4) == 50);  // older: ignored
  CHECK(limits("", 9) == 50);  // no config: nothing to apply
  CHECK(limits(v4, 6) == 40);  // newer, whatever it says
  CHECK(limits(v5, 5) == 40);

  // A turn whose request brings an older config (version 0 here) leaves the actor's alone.
  f.tenant_config = v5;
  auto c = f.client("hello");
  REQUIRE(f.run_until([&] { return f.provider->count() == 1; }));
  CHECK(limits(v5, 5) == 40);
  f.provider->at(0)->answer({"hi"});
  REQUIRE(f.run_until([&] { return c->finished() && f.in_flight() == 0; }));
  CHECK(c->done);
}
