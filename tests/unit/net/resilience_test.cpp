// Unit tests of net/resilience: the circuit breaker and the retry budget with explicit clock
// values, failure classification, and the resilient route over in-process scripted providers
// (no network; an io_context on a thread runs the route's timers).
#include "parley/net/resilience.hpp"
#include "support/wait.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

using namespace parley::net;
using parley::actors::call_handle;
using parley::actors::call_listener;
using parley::actors::chat_done;
using parley::actors::chat_error_kind;
using parley::actors::chat_failure;
using parley::actors::failure_cause;
using parley::actors::provider_port;
using parley::actors::upstream_call;
using parley::test::deadline_in;
using parley::test::wait_until;
using std::chrono::milliseconds;
using std::chrono::seconds;

namespace {

namespace asio = boost::asio;
using admission = circuit_breaker::admission;
using bstate = circuit_breaker::state;

/// A fixed origin for explicit clock values (far from the epoch, like a real steady clock).
const steady_time t0 = steady_time{} + std::chrono::hours(1000);

chat_failure status_failure(int status, int64_t retry_after_ms = 0) {
  return chat_failure{status == 429 || status == 503 ? chat_error_kind::overloaded : chat_error_kind::upstream_error,
                      "status " + std::to_string(status), status, retry_after_ms, failure_cause::status};
}

chat_failure cause_failure(failure_cause c) {
  return chat_failure{chat_error_kind::upstream_error, "failed", 0, 0, c};
}

// ---- an in-process provider that answers from a script -----------------------------------------

/// One scripted answer: after `delay_ms`, the deltas, then a failure or (without one) done.
struct outcome {
  std::vector<std::string> deltas{"ok"};
  std::optional<chat_failure> failure;
  int delay_ms = 0;
  bool hang = false; ///< never answers; only cancel() ends it
};

outcome fails(chat_failure f, std::vector<std::string> deltas = {}) {
  outcome o;
  o.deltas = std::move(deltas);
  o.failure = std::move(f);
  return o;
}

outcome hangs() {
  outcome o;
  o.hang = true;
  return o;
}

/// Shared order of calls over several providers ("name:model").
struct call_log {
  std::mutex mu;
  std::vector<std::string> entries;
  void add(std::string e) {
    std::lock_guard<std::mutex> lock(mu);
    entries.push_back(std::move(e));
  }
  std::vector<std::string> get() {
    std::lock_guard<std::mutex> lock(mu);
    return entries;
  }
};

class scripted_provider final : public provider_port {
public:
  scripted_provider(asio::io_context& ioc, std::string name, std::shared_ptr<call_log> log = nullptr)
    : ioc_(ioc), name_(std::move(name)), log_(std::move(log)) {}

  /// Answers in order; when the script is empty, `otherwise` answers.
  void script(std::vector<outcome> s) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& o : s)
      script_.push_back(std::move(o));
  }
  outcome otherwise;

  std::atomic<int> calls{0};
  std::atomic<int> cancels{0};
  std::vector<upstream_call> seen() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }

  std::shared_ptr<call_handle> start(upstream_call call, std::shared_ptr<call_listener> listener) override {
    outcome o;
    {
      std::lock_guard<std::mutex> lock(mu_);
      seen_.push_back(call);
      if (!script_.empty()) {
        o = std::move(script_.front());
        script_.pop_front();
      } else {
        o = otherwise;
      }
    }
    ++calls;
    if (log_)
      log_->add(name_ + ":" + call.model);
    auto h = std::make_shared<handle>(ioc_, this, std::move(listener));
    if (!o.hang) {
      h->timer.expires_after(milliseconds(o.delay_ms));
      h->timer.async_wait([h, o](const boost::system::error_code& ec) {
        if (ec || h->cancelled)
          return;
        for (auto& d : o.deltas)
          h->listener->on_delta(d);
        if (o.failure) {
          h->listener->on_failed(*o.failure);
        } else {
          chat_done d;
          d.finish_reason = "stop";
          d.completion_tokens = static_cast<int64_t>(o.deltas.size());
          h->listener->on_done(d);
        }
      });
    }
    return h;
  }

private:
  struct handle final : call_handle {
    handle(asio::io_context& ioc, scripted_provider* p, std::shared_ptr<call_listener> l)
      : timer(ioc), owner(p), listener(std::move(l)) {}
    void cancel() override {
      if (!cancelled.exchange(true))
        ++owner->cancels;
    }
    asio::steady_timer timer;
    scripted_provider* owner;
    std::shared_ptr<call_listener> listener;
    std::atomic<bool> cancelled{false};
  };

  asio::io_context& ioc_;
  std::string name_;
  std::shared_ptr<call_log> log_;
  std::mutex mu_;
  std::deque<outcome> script_;
  std::vector<upstream_call> seen_;
};

/// Records what a call reports, in order.
class recorder final : public call_listener {
public:
  void on_delta(std::string content) override { add("delta:" + content); }
  void on_served(const std::string& model) override { add("served:" + model); }
  void on_done(chat_done d) override {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back("done");
    done_ = std::move(d);
    ended_at_ = std::chrono::steady_clock::now();
    cv_.notify_all();
  }
  void on_failed(chat_failure f) override {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back("failed");
    failed_ = std::move(f);
    ended_at_ = std::chrono::steady_clock::now();
    cv_.notify_all();
  }

  /// Waits for on_done or on_failed.
  bool wait(milliseconds timeout = milliseconds(5000)) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return done_ || failed_; });
  }
  bool ended() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_ || failed_;
  }
  std::vector<std::string> events() {
    std::lock_guard<std::mutex> lock(mu_);
    return events_;
  }
  std::optional<chat_done> done() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }
  std::optional<chat_failure> failed() {
    std::lock_guard<std::mutex> lock(mu_);
    return failed_;
  }
  std::chrono::steady_clock::time_point ended_at() {
    std::lock_guard<std::mutex> lock(mu_);
    return ended_at_;
  }

private:
  void add(std::string e) {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back(std::move(e));
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> events_;
  std::optional<chat_done> done_;
  std::optional<chat_failure> failed_;
  std::chrono::steady_clock::time_point ended_at_{};
};

/// An io_context running on its own thread for the routes' timers and the providers' answers.
/// Declare it before the routes so that it outlives them.
struct io_thread {
  asio::io_context ioc;
  asio::executor_work_guard<asio::io_context::executor_type> guard{ioc.get_executor()};
  std::thread thread{[this] { ioc.run(); }};
  ~io_thread() {
    guard.reset();
    ioc.stop();
    thread.join();
  }

  /// Waits (up to `when` + 5 s) until a timer on this io_context that expires at `when` has
  /// fired. Timers fire in the order of their expiry on the one io thread, so by then every
  /// handler due before `when` (a backoff, a retry) has run there: proof that the io thread,
  /// not just the test thread's clock, got past that moment. Test thread only.
  bool reached(std::chrono::steady_clock::time_point when) {
    auto fired = std::make_shared<std::promise<void>>();
    auto done = fired->get_future();
    auto timer = std::make_shared<asio::steady_timer>(ioc, when);
    timer->async_wait([timer, fired](const boost::system::error_code&) { fired->set_value(); });
    return done.wait_until(when + seconds(5)) == std::future_status::ready;
  }
};

/// A breaker that never opens (the tests that are not about breakers).
breaker_policy no_breaker() {
  breaker_policy b;
  b.consecutive_failures = 0;
  b.failure_ratio = 0;
  return b;
}

/// Short backoffs and a budget out of the way.
route_policy quick_policy() {
  route_policy p;
  p.retry.max_attempts = 3;
  p.retry.backoff_base_ms = 1;
  p.retry.backoff_max_ms = 5;
  p.retry.budget_ratio = 1.0;
  p.retry.budget_min_per_second = 1000;
  return p;
}

std::shared_ptr<resilient_route> make_route(asio::io_context& ioc, std::string model, route_policy policy,
                                            std::vector<std::pair<std::shared_ptr<provider_port>, int>> deps,
                                            breaker_policy bp = no_breaker()) {
  std::vector<std::shared_ptr<deployment>> out;
  int i = 0;
  for (auto& [client, weight] : deps)
    out.push_back(std::make_shared<deployment>(model, "dep" + std::to_string(i++), model + "-upstream", client,
                                               weight, bp, policy.retry));
  return std::make_shared<resilient_route>(ioc, std::move(model), std::move(policy), std::move(out), nullptr);
}

upstream_call make_call(std::string model, bool streaming = true, std::vector<std::string> allowed = {}) {
  upstream_call c;
  c.request_id = "req-1";
  c.model = model;
  c.client_model = model;
  c.client_streaming = streaming;
  c.allowed_models = std::move(allowed);
  return c;
}

/// Starts a call on `route` and waits for its end.
std::shared_ptr<recorder> call_and_wait(resilient_route& route, upstream_call c) {
  auto rec = std::make_shared<recorder>();
  route.start(std::move(c), rec);
  REQUIRE(rec->wait());
  return rec;
}

/// A breaker that opens after `failures` failures in a row only (no ratio trigger).
breaker_policy consecutive_breaker(int failures, int open_ms = breaker_policy{}.open_ms) {
  breaker_policy b;
  b.consecutive_failures = failures;
  b.failure_ratio = 0;
  b.open_ms = open_ms;
  return b;
}

} // namespace

// ================================ circuit breaker ================================================

TEST_CASE("a circuit breaker opens after the configured number of consecutive failures and then denies calls",
          "[resilience][unit]") {
  auto p = consecutive_breaker(3, 1000);
  circuit_breaker b(p);
  auto now = t0;
  for (int i = 0; i < 2; ++i) {
    REQUIRE(b.admit(now) == admission::allow);
    b.on_failure(false, now);
    CHECK(b.current(now) == bstate::closed);
  }
  REQUIRE(b.admit(now) == admission::allow);
  b.on_failure(false, now);
  CHECK(b.current(now) == bstate::open);
  CHECK(b.times_opened() == 1);
  CHECK(b.admit(now) == admission::deny);
  CHECK(b.admit(now + milliseconds(999)) == admission::deny);
  CHECK(b.current(now + milliseconds(999)) == bstate::open);
}

TEST_CASE("a success resets the circuit breaker's count of consecutive failures", "[resilience][unit]") {
  breaker_policy p;
  p.consecutive_failures = 3;
  p.failure_ratio = 0;
  circuit_breaker b(p);
  for (int round = 0; round < 5; ++round) {
    b.on_failure(false, t0);
    b.on_failure(false, t0);
    b.on_success(false, t0);
  }
  CHECK(b.current(t0) == bstate::closed);
  CHECK(b.admit(t0) == admission::allow);
  CHECK(b.times_opened() == 0);
}

TEST_CASE("a circuit breaker opens on the failure ratio in its window, but only with the minimum of requests",
          "[resilience][unit]") {
  breaker_policy p;
  p.consecutive_failures = 0;
  p.failure_ratio = 0.5;
  p.window_seconds = 10;
  p.min_requests = 10;
  SECTION("below the minimum of requests, even all failures keep it closed") {
    circuit_breaker b(p);
    for (int i = 0; i < 9; ++i)
      b.on_failure(false, t0);
    CHECK(b.current(t0) == bstate::closed);
    b.on_failure(false, t0); // the 10th request
    CHECK(b.current(t0) == bstate::open);
  }
  SECTION("it opens when failures reach the ratio") {
    circuit_breaker b(p);
    for (int i = 0; i < 6; ++i)
      b.on_success(false, t0);
    for (int i = 0; i < 5; ++i)
      b.on_failure(false, t0 + milliseconds(100 * i)); // 11 requests, 5 failures: 45 %
    CHECK(b.current(t0 + seconds(1)) == bstate::closed);
    b.on_failure(false, t0 + seconds(1)); // 12 requests, 6 failures: 50 %
    CHECK(b.current(t0 + seconds(1)) == bstate::open);
    CHECK(b.admit(t0 + seconds(1)) == admission::deny);
  }
  SECTION("failures older than the window do not count") {
    circuit_breaker b(p);
    for (int i = 0; i < 9; ++i)
      b.on_failure(false, t0);
    for (int i = 0; i < 9; ++i)
      b.on_success(false, t0 + seconds(11)); // the failures rolled out of the window
    b.on_failure(false, t0 + seconds(11));  // 10 requests in the window, 1 failure
    CHECK(b.current(t0 + seconds(11)) == bstate::closed);
  }
}

TEST_CASE("an open circuit breaker admits exactly half_open_probes probes after open_ms", "[resilience][unit]") {
  auto p = consecutive_breaker(1, 500);
  p.half_open_probes = 2;
  circuit_breaker b(p);
  b.on_failure(false, t0);
  REQUIRE(b.current(t0) == bstate::open);
  CHECK(b.admit(t0 + milliseconds(499)) == admission::deny);
  auto later = t0 + milliseconds(500);
  CHECK(b.current(later) == bstate::half_open);
  CHECK(b.admit(later) == admission::probe);
  CHECK(b.admit(later) == admission::probe);
  CHECK(b.admit(later) == admission::deny);
  CHECK(b.admit(later + milliseconds(100)) == admission::deny);
  CHECK(b.current(later) == bstate::half_open);
}

TEST_CASE("a successful probe closes the circuit breaker and a failed probe opens it again",
          "[resilience][unit]") {
  auto p = consecutive_breaker(2, 500);
  p.half_open_probes = 1;
  circuit_breaker b(p);
  b.on_failure(false, t0);
  b.on_failure(false, t0);
  REQUIRE(b.current(t0) == bstate::open);

  SECTION("a failed probe reopens it for another open_ms") {
    auto t1 = t0 + milliseconds(600);
    REQUIRE(b.admit(t1) == admission::probe);
    b.on_failure(true, t1);
    CHECK(b.current(t1) == bstate::open);
    CHECK(b.times_opened() == 2);
    CHECK(b.admit(t1 + milliseconds(499)) == admission::deny);
    CHECK(b.admit(t1 + milliseconds(500)) == admission::probe);
  }
  SECTION("a successful probe closes it, and it needs the full count of failures to open again") {
    auto t1 = t0 + milliseconds(600);
    REQUIRE(b.admit(t1) == admission::probe);
    b.on_success(true, t1);
    CHECK(b.current(t1) == bstate::closed);
    CHECK(b.admit(t1) == admission::allow);
    CHECK(b.admit(t1) == admission::allow);
    b.on_failure(false, t1);
    CHECK(b.current(t1) == bstate::closed);
    b.on_failure(false, t1);
    CHECK(b.current(t1) == bstate::open);
  }
  SECTION("a late non-probe success while half-open does not close it") {
    auto t1 = t0 + milliseconds(600);
    REQUIRE(b.admit(t1) == admission::probe);
    b.on_success(false, t1);
    CHECK(b.current(t1) == bstate::half_open);
    CHECK(b.admit(t1) == admission::deny);
  }
}

TEST_CASE("an abandoned probe frees its half-open slot", "[resilience][unit]") {
  auto p = consecutive_breaker(1, 100);
  p.half_open_probes = 1;
  circuit_breaker b(p);
  b.on_failure(false, t0);
  auto t1 = t0 + milliseconds(100);
  REQUIRE(b.admit(t1) == admission::probe);
  CHECK(b.admit(t1) == admission::deny);
  b.abandon(true);
  CHECK(b.admit(t1) == admission::probe);
  b.abandon(false); // not a probe: changes nothing
  CHECK(b.admit(t1) == admission::deny);
}

// ================================ retry budget ===================================================

TEST_CASE("a retry budget of 20 % without a minimum allows exactly 20 retries after 100 requests",
          "[resilience][unit]") {
  retry_budget b(0.2, 0);
  CHECK_FALSE(b.try_retry(t0)); // no requests, no minimum: nothing
  for (int i = 0; i < 100; ++i)
    b.on_request(t0 + milliseconds(i));
  int allowed = 0;
  for (int i = 0; i < 50; ++i)
    allowed += b.try_retry(t0 + milliseconds(200)) ? 1 : 0;
  CHECK(allowed == 20);
  // Five more requests earn one more retry.
  for (int i = 0; i < 5; ++i)
    b.on_request(t0 + milliseconds(300));
  CHECK(b.try_retry(t0 + milliseconds(300)));
  CHECK_FALSE(b.try_retry(t0 + milliseconds(300)));
}

TEST_CASE("a retry budget's per-second minimum allows retries without requests", "[resilience][unit]") {
  retry_budget b(0.2, 2, 10); // 2 per second over a 10 s window: 20
  int allowed = 0;
  for (int i = 0; i < 100; ++i)
    allowed += b.try_retry(t0) ? 1 : 0;
  CHECK(allowed == 20);
  // The minimum and the ratio add up: 50 requests earn 10 more.
  for (int i = 0; i < 50; ++i)
    b.on_request(t0);
  allowed = 0;
  for (int i = 0; i < 100; ++i)
    allowed += b.try_retry(t0) ? 1 : 0;
  CHECK(allowed == 10);
}

TEST_CASE("retries and requests older than the retry budget's window no longer count", "[resilience][unit]") {
  SECTION("spent retries expire") {
    retry_budget b(0, 1, 10);
    int allowed = 0;
    for (int i = 0; i < 30; ++i)
      allowed += b.try_retry(t0) ? 1 : 0;
    CHECK(allowed == 10);
    CHECK_FALSE(b.try_retry(t0 + seconds(3))); // still in the window
    CHECK_FALSE(b.try_retry(t0 + seconds(9)));
    allowed = 0;
    for (int i = 0; i < 30; ++i)
      allowed += b.try_retry(t0 + seconds(10)) ? 1 : 0;
    CHECK(allowed == 10);
  }
  SECTION("requests expire too") {
    retry_budget b(0.2, 0, 10);
    for (int i = 0; i < 100; ++i)
      b.on_request(t0);
    CHECK_FALSE(b.try_retry(t0 + seconds(10)));
  }
}

// ================================ classification =================================================

TEST_CASE("upstream failures are classified for fallback decisions", "[resilience][unit]") {
  CHECK(classify(cause_failure(failure_cause::connect)) == failure_class::connect);
  CHECK(classify(cause_failure(failure_cause::reset)) == failure_class::connect);
  CHECK(classify(cause_failure(failure_cause::connect_timeout)) == failure_class::timeout);
  CHECK(classify(cause_failure(failure_cause::tls_timeout)) == failure_class::timeout);
  CHECK(classify(cause_failure(failure_cause::first_byte_timeout)) == failure_class::timeout);
  CHECK(classify(cause_failure(failure_cause::idle_timeout)) == failure_class::timeout);
  CHECK(classify(cause_failure(failure_cause::total_timeout)) == failure_class::timeout);
  CHECK(classify(cause_failure(failure_cause::broken)) == failure_class::server_error);
  CHECK(classify(cause_failure(failure_cause::breaker_open)) == failure_class::breaker_open);
  CHECK(classify(cause_failure(failure_cause::none)) == failure_class::none);
  CHECK(classify(status_failure(429)) == failure_class::rate_limited);
  CHECK(classify(status_failure(500)) == failure_class::server_error);
  CHECK(classify(status_failure(502)) == failure_class::server_error);
  CHECK(classify(status_failure(503)) == failure_class::server_error);
  CHECK(classify(status_failure(504)) == failure_class::timeout);
  CHECK(classify(status_failure(408)) == failure_class::timeout);
  CHECK(classify(status_failure(400)) == failure_class::none);
  CHECK(classify(status_failure(404)) == failure_class::none);
  CHECK(classify(status_failure(401)) == failure_class::none);

  CHECK(parse_failure_class("connect") == failure_class::connect);
  CHECK(parse_failure_class("rate_limited") == failure_class::rate_limited);
  CHECK(parse_failure_class("server_error") == failure_class::server_error);
  CHECK(parse_failure_class("timeout") == failure_class::timeout);
  CHECK(parse_failure_class("breaker_open") == failure_class::breaker_open);
  CHECK(parse_failure_class("Timeout") == failure_class::none);
  CHECK(parse_failure_class("") == failure_class::none);
}

// ================================ resilient route ================================================

TEST_CASE("a resilient route retries retryable failures and then succeeds", "[resilience][unit]") {
  io_thread io;
  auto p = std::make_shared<scripted_provider>(io.ioc, "p");
  p->script({fails(status_failure(503)), fails(cause_failure(failure_cause::reset)),
             outcome{{"hello", " world"}, std::nullopt, 0, false}});
  auto route = make_route(io.ioc, "m", quick_policy(), {{p, 1}});
  auto rec = call_and_wait(*route, make_call("m"));
  REQUIRE(rec->done());
  CHECK(rec->events() == std::vector<std::string>{"delta:hello", "delta: world", "done"});
  CHECK(rec->done()->attempts == 3);
  CHECK(rec->done()->model == "m");
  CHECK(p->calls == 3);
  // Every attempt was sent with the deployment's upstream model name.
  for (auto& c : p->seen())
    CHECK(c.model == "m-upstream");
  auto& d = *route->deployments()[0];
  CHECK(d.counters.retries == 2);
  CHECK(d.counters.ok == 1);
  CHECK(d.outstanding == 0);
}

TEST_CASE("a resilient route gives up after max_attempts and reports the last failure", "[resilience][unit]") {
  io_thread io;
  auto p = std::make_shared<scripted_provider>(io.ioc, "p");
  p->otherwise = fails(status_failure(502));
  auto policy = quick_policy();
  policy.retry.max_attempts = 2;
  auto route = make_route(io.ioc, "m", policy, {{p, 1}});
  auto rec = call_and_wait(*route, make_call("m"));
  REQUIRE(rec->failed());
  CHECK(rec->failed()->upstream_status == 502);
  CHECK(rec->failed()->attempts == 2);
  CHECK(p->calls == 2);
}

TEST_CASE("nothing is retried once the first delta has reached the listener", "[resilience][unit]") {
  io_thread io;
  auto p = std::make_shared<scripted_provider>(io.ioc, "p");
  p->script({fails(cause_failure(failure_cause::reset), {"partial"})});
  auto fb_provider = std::make_shared<scripted_provider>(io.ioc, "fb");
  auto route = make_route(io.ioc, "m", quick_policy(), {{p, 1}});
  auto fb = make_route(io.ioc, "fallback", quick_policy(), {{fb_provider, 1}});
  route->set_fallbacks({fb});
  auto rec = call_and_wait(*route, make_call("m"));
  // A retry is decided (and counted) in the same step that would otherwise report the failure,
  // then starts after a backoff of at most backoff_max_ms on the io thread: once the io thread
  // is past that backoff, a wrong retry or fallback would have reached a provider.
  REQUIRE(io.reached(std::chrono::steady_clock::now() + milliseconds(quick_policy().retry.backoff_max_ms) +
                     milliseconds(50)));
  CHECK(rec->events() == std::vector<std::string>{"delta:partial", "failed"});
  REQUIRE(rec->failed());
  CHECK(rec->failed()->cause == failure_cause::reset);
  CHECK(rec->failed()->attempts == 1);
  CHECK(route->deployments()[0]->counters.retries == 0);
  CHECK(p->calls == 1);
  CHECK(fb_provider->calls == 0);
}

TEST_CASE("fallbacks are tried in order, skipping models the tenant is not allowed", "[resilience][unit]") {
  io_thread io;
  auto log = std::make_shared<call_log>();
  auto pp = std::make_shared<scripted_provider>(io.ioc, "primary", log);
  auto p1 = std::make_shared<scripted_provider>(io.ioc, "fb1", log);
  auto p2 = std::make_shared<scripted_provider>(io.ioc, "fb2", log);
  pp->otherwise = fails(status_failure(503));
  auto policy = quick_policy();
  policy.retry.max_attempts = 1;
  auto primary = make_route(io.ioc, "m", policy, {{pp, 1}});
  auto f1 = make_route(io.ioc, "m1", policy, {{p1, 1}});
  auto f2 = make_route(io.ioc, "m2", policy, {{p2, 1}});
  primary->set_fallbacks({f1, f2});

  SECTION("in order: the first fallback fails too, the second serves") {
    p1->otherwise = fails(cause_failure(failure_cause::connect));
    auto rec = call_and_wait(*primary, make_call("m"));
    REQUIRE(rec->done());
    CHECK(log->get() == std::vector<std::string>{"primary:m-upstream", "fb1:m1-upstream", "fb2:m2-upstream"});
    CHECK(rec->done()->model == "m2");
    CHECK(rec->done()->attempts == 3);
    CHECK(primary->fallbacks_served(0) == 0);
    CHECK(primary->fallbacks_served(1) == 1);
    // The fallback is called with its own name as the client's model.
    CHECK(p2->seen().at(0).client_model == "m2");
  }
  SECTION("a fallback the tenant may not use is skipped") {
    auto rec = call_and_wait(*primary, make_call("m", true, {"m", "m2"}));
    REQUIRE(rec->done());
    CHECK(log->get() == std::vector<std::string>{"primary:m-upstream", "fb2:m2-upstream"});
    CHECK(p1->calls == 0);
    CHECK(rec->done()->model == "m2");
  }
  SECTION("\"*\" allows every fallback") {
    auto rec = call_and_wait(*primary, make_call("m", true, {"*"}));
    REQUIRE(rec->done());
    CHECK(rec->done()->model == "m1");
  }
  SECTION("with no allowed fallback, the primary's failure is reported") {
    auto rec = call_and_wait(*primary, make_call("m", true, {"m"}));
    REQUIRE(rec->failed());
    CHECK(rec->failed()->upstream_status == 503);
    CHECK(p1->calls == 0);
    CHECK(p2->calls == 0);
  }
  SECTION("a failure class not in fallback_on does not fall back") {
    auto only_timeouts = policy;
    only_timeouts.fallback_on = {failure_class::timeout};
    auto strict = make_route(io.ioc, "m", only_timeouts, {{pp, 1}});
    strict->set_fallbacks({f1, f2});
    auto rec = call_and_wait(*strict, make_call("m"));
    REQUIRE(rec->failed());
    CHECK(rec->failed()->upstream_status == 503);
    CHECK(p1->calls == 0);
  }
}

TEST_CASE("a fallback announces its model before its first delta and names itself in chat_done",
          "[resilience][unit]") {
  io_thread io;
  auto pp = std::make_shared<scripted_provider>(io.ioc, "primary");
  auto pf = std::make_shared<scripted_provider>(io.ioc, "fallback");
  pp->otherwise = fails(cause_failure(failure_cause::connect_timeout));
  pf->otherwise = outcome{{"a", "b"}, std::nullopt, 0, false};
  auto policy = quick_policy();
  policy.retry.max_attempts = 2;
  auto primary = make_route(io.ioc, "big", policy, {{pp, 1}});
  auto fb = make_route(io.ioc, "small", policy, {{pf, 1}});
  primary->set_fallbacks({fb});
  auto rec = call_and_wait(*primary, make_call("big"));
  REQUIRE(rec->done());
  CHECK(rec->events() == std::vector<std::string>{"served:small", "delta:a", "delta:b", "done"});
  CHECK(rec->done()->model == "small");
  CHECK(rec->done()->attempts == 3); // two on the primary, one on the fallback
  CHECK(pp->calls == 2);

  // A call the primary serves announces nothing.
  pp->script({outcome{}});
  auto rec2 = call_and_wait(*primary, make_call("big"));
  CHECK(rec2->events() == std::vector<std::string>{"delta:ok", "done"});
  CHECK(rec2->done()->model == "big");
}

TEST_CASE("client errors are neither retried nor moved to a fallback", "[resilience][unit]") {
  io_thread io;
  auto pp = std::make_shared<scripted_provider>(io.ioc, "primary");
  auto pf = std::make_shared<scripted_provider>(io.ioc, "fallback");
  pp->otherwise = fails(chat_failure{chat_error_kind::invalid_request, "bad", 400, 0, failure_cause::status});
  auto bp = consecutive_breaker(2);
  auto primary = make_route(io.ioc, "m", quick_policy(), {{pp, 1}}, bp);
  primary->set_fallbacks({make_route(io.ioc, "f", quick_policy(), {{pf, 1}})});
  for (int i = 0; i < 3; ++i) {
    auto rec = call_and_wait(*primary, make_call("m"));
    REQUIRE(rec->failed());
    CHECK(rec->failed()->kind == chat_error_kind::invalid_request);
    CHECK(rec->failed()->attempts == 1);
  }
  CHECK(pp->calls == 3);
  CHECK(pf->calls == 0);
  // A client error says nothing about the upstream's health: the breaker stays closed.
  CHECK(primary->deployments()[0]->breaker.current(std::chrono::steady_clock::now()) == bstate::closed);
}

TEST_CASE("an open circuit breaker fails a call in well under a millisecond", "[resilience][unit]") {
  io_thread io;
  auto p = std::make_shared<scripted_provider>(io.ioc, "p");
  p->otherwise = fails(status_failure(500));
  auto bp = consecutive_breaker(2, 60000);
  auto policy = quick_policy();
  policy.retry.max_attempts = 1;
  auto route = make_route(io.ioc, "m", policy, {{p, 1}}, bp);
  for (int i = 0; i < 2; ++i) {
    auto rec = call_and_wait(*route, make_call("m"));
  }
  REQUIRE(route->deployments()[0]->breaker.current(std::chrono::steady_clock::now()) == bstate::open);
  std::vector<int64_t> took_us;
  for (int i = 0; i < 21; ++i) {
    auto rec = std::make_shared<recorder>();
    auto before = std::chrono::steady_clock::now();
    route->start(make_call("m"), rec);
    auto after = std::chrono::steady_clock::now();
    // Reported before start() returned, without touching the upstream.
    REQUIRE(rec->ended());
    REQUIRE(rec->failed());
    CHECK(rec->failed()->cause == failure_cause::breaker_open);
    CHECK(rec->failed()->kind == chat_error_kind::overloaded);
    CHECK(rec->failed()->attempts == 0);
    took_us.push_back(std::chrono::duration_cast<std::chrono::microseconds>(after - before).count());
  }
  std::sort(took_us.begin(), took_us.end());
  INFO("start() to failure, microseconds, sorted: " << took_us.front() << " ... " << took_us.back());
  CHECK(took_us[took_us.size() / 2] < 1000); // the median: well under a millisecond
  // Each failure was reported before start() returned (above), so no timer or retry was
  // involved; the slowest call is bounded only loosely, as one preemption of the test thread
  // on a loaded machine may land inside it.
  CHECK(took_us.back() < 250000);
  CHECK(p->calls == 2);
  CHECK(route->deployments()[0]->counters.breaker_open >= 20);
}

TEST_CASE("an open circuit breaker sends calls to the fallback", "[resilience][unit]") {
  io_thread io;
  auto pp = std::make_shared<scripted_provider>(io.ioc, "primary");
  auto pf = std::make_shared<scripted_provider>(io.ioc, "fallback");
  pp->otherwise = fails(status_failure(503));
  auto bp = consecutive_breaker(1, 60000);
  auto policy = quick_policy();
  policy.retry.max_attempts = 1;
  auto primary = make_route(io.ioc, "m", policy, {{pp, 1}}, bp);
  primary->set_fallbacks({make_route(io.ioc, "f", policy, {{pf, 1}})});
  for (int i = 0; i < 5; ++i) {
    auto rec = call_and_wait(*primary, make_call("m"));
    REQUIRE(rec->done());
    CHECK(rec->done()->model == "f");
  }
  CHECK(pp->calls == 1); // only the call that opened the breaker
  CHECK(pf->calls == 5);
}

TEST_CASE("a half-open route probes once, closes on success and serves again", "[resilience][unit]") {
  io_thread io;
  auto p = std::make_shared<scripted_provider>(io.ioc, "p");
  auto bp = consecutive_breaker(1, 100);
  auto policy = quick_policy();
  policy.retry.max_attempts = 1;
  auto route = make_route(io.ioc, "m", policy, {{p, 1}}, bp);
  p->script({fails(status_failure(500))});
  auto first = call_and_wait(*route, make_call("m"));
  auto& breaker = route->deployments()[0]->breaker;
  REQUIRE(breaker.current(std::chrono::steady_clock::now()) == bstate::open);
  // open_ms is a real time: wait until it has passed (bounded), not a guessed sleep.
  REQUIRE(wait_until(deadline_in(seconds(5)),
                     [&] { return breaker.current(std::chrono::steady_clock::now()) == bstate::half_open; }));
  // The probe is slow (long enough that the next line runs while it is in flight, however
  // loaded the machine); meanwhile another call is refused (one probe at a time).
  p->script({outcome{{"probe"}, std::nullopt, 500, false}});
  auto probe = std::make_shared<recorder>();
  route->start(make_call("m"), probe);
  auto refused = std::make_shared<recorder>();
  route->start(make_call("m"), refused);
  REQUIRE(refused->ended());
  CHECK(refused->failed()->cause == failure_cause::breaker_open);
  REQUIRE(probe->wait());
  REQUIRE(probe->done());
  CHECK(route->deployments()[0]->breaker.current(std::chrono::steady_clock::now()) == bstate::closed);
  auto after = call_and_wait(*route, make_call("m"));
  CHECK(after->done());
  CHECK(p->calls == 3);
}

TEST_CASE("weighted balancing spreads calls over deployments by weight", "[resilience][unit]") {
  io_thread io;
  auto a = std::make_shared<scripted_provider>(io.ioc, "a");
  auto b = std::make_shared<scripted_provider>(io.ioc, "b");
  auto policy = quick_policy();
  policy.lb = "weighted";
  auto route = make_route(io.ioc, "m", policy, {{a, 3}, {b, 1}});
  std::vector<std::shared_ptr<recorder>> recs;
  for (int i = 0; i < 2000; ++i) {
    recs.push_back(std::make_shared<recorder>());
    route->start(make_call("m"), recs.back());
  }
  for (auto& r : recs)
    REQUIRE(r->wait());
  CHECK(a->calls + b->calls == 2000);
  // Expected 1500 / 500; the standard deviation is about 19.
  CHECK(a->calls > 1380);
  CHECK(a->calls < 1620);
}

TEST_CASE("least-outstanding balancing prefers the deployment with fewer calls in flight, weighed by latency",
          "[resilience][unit]") {
  io_thread io;
  auto a = std::make_shared<scripted_provider>(io.ioc, "a");
  auto b = std::make_shared<scripted_provider>(io.ioc, "b");
  a->otherwise = hangs();
  b->otherwise = hangs();
  auto route = make_route(io.ioc, "m", quick_policy(), {{a, 1}, {b, 1}});
  auto& da = *route->deployments()[0];
  auto& db = *route->deployments()[1];
  std::vector<std::shared_ptr<call_handle>> calls;
  auto start_some = [&](int n) {
    for (int i = 0; i < n; ++i)
      calls.push_back(route->start(make_call("m"), std::make_shared<recorder>()));
  };
  SECTION("equal latency: calls go where fewer are in flight") {
    da.ewma_us = 1000;
    db.ewma_us = 1000;
    da.outstanding = 8; // as if 8 calls were running on a
    start_some(8);
    CHECK(b->calls == 8);
    CHECK(a->calls == 0);
    CHECK(db.outstanding == 8);
    start_some(2); // 8 vs 8: one to either, then one to the other
    CHECK(b->calls == 9);
    CHECK(a->calls == 1);
  }
  SECTION("with no calls in flight: the faster deployment wins") {
    da.ewma_us = 1000;
    db.ewma_us = 10000;
    start_some(5); // a's score (n + 1) x 1000 stays below b's 10000 up to 9 in flight
    CHECK(a->calls == 5);
    CHECK(b->calls == 0);
  }
  SECTION("a faster deployment stops winning once it has enough calls in flight") {
    da.ewma_us = 1000;
    db.ewma_us = 10000;
    da.outstanding = 20; // 21 x 1000 > 1 x 10000
    start_some(1);
    CHECK(b->calls == 1);
  }
  for (auto& c : calls)
    c->cancel();
  CHECK(db.outstanding == 0); // cancelled calls leave the in-flight count
}

TEST_CASE("a retry prefers a deployment the call has not tried", "[resilience][unit]") {
  io_thread io;
  auto a = std::make_shared<scripted_provider>(io.ioc, "a");
  auto b = std::make_shared<scripted_provider>(io.ioc, "b");
  a->otherwise = fails(status_failure(503));
  b->otherwise = fails(status_failure(503));
  auto policy = quick_policy();
  policy.retry.max_attempts = 2;
  auto route = make_route(io.ioc, "m", policy, {{a, 1}, {b, 1}});
  for (int i = 0; i < 20; ++i) {
    auto rec = call_and_wait(*route, make_call("m"));
    REQUIRE(rec->failed());
    CHECK(rec->failed()->attempts == 2);
  }
  // Every call tried both: each deployment saw exactly one attempt per call.
  CHECK(a->calls == 20);
  CHECK(b->calls == 20);
}

TEST_CASE("a Retry-After above retry_after_max_ms is not retried but a shorter one is waited for",
          "[resilience][unit]") {
  io_thread io;
  auto p = std::make_shared<scripted_provider>(io.ioc, "p");
  auto policy = quick_policy();
  policy.retry.retry_after_max_ms = 1000;
  auto route = make_route(io.ioc, "m", policy, {{p, 1}});
  SECTION("too long: the failure is reported at once") {
    p->script({fails(status_failure(429, 5000))});
    auto rec = std::make_shared<recorder>();
    auto t = std::chrono::steady_clock::now();
    route->start(make_call("m"), rec);
    REQUIRE(rec->wait());
    REQUIRE(rec->failed());
    CHECK(rec->failed()->upstream_status == 429);
    CHECK(rec->failed()->retry_after_ms == 5000);
    CHECK(rec->failed()->attempts == 1);
    CHECK(rec->ended_at() - t < milliseconds(2500)); // not after the 5 s Retry-After
    CHECK(p->calls == 1);
  }
  SECTION("within the cap: the retry waits at least Retry-After") {
    p->script({fails(status_failure(503, 150))});
    auto rec = std::make_shared<recorder>();
    auto t = std::chrono::steady_clock::now();
    route->start(make_call("m"), rec);
    REQUIRE(rec->wait());
    REQUIRE(rec->done());
    CHECK(rec->done()->attempts == 2);
    CHECK(rec->ended_at() - t >= milliseconds(150));
    CHECK(rec->ended_at() - t < milliseconds(1000));
  }
}

TEST_CASE("a spent retry budget returns the failure instead of retrying", "[resilience][unit]") {
  io_thread io;
  auto p = std::make_shared<scripted_provider>(io.ioc, "p");
  p->otherwise = fails(status_failure(503));
  auto policy = quick_policy();
  policy.retry.max_attempts = 3;
  policy.retry.budget_ratio = 0.2;
  policy.retry.budget_min_per_second = 0;
  auto route = make_route(io.ioc, "m", policy, {{p, 1}});
  for (int i = 0; i < 50; ++i) {
    auto rec = call_and_wait(*route, make_call("m"));
    REQUIRE(rec->failed());
  }
  // 50 requests earn 10 retries: without the budget there would be 150 attempts.
  CHECK(p->calls <= 60);
  CHECK(p->calls >= 50);
  auto& c = route->deployments()[0]->counters;
  CHECK(c.retries == static_cast<uint64_t>(p->calls - 50));
  CHECK(c.budget_exhausted > 0);
}

TEST_CASE("a non-streaming call that exceeds total_timeout_ms fails with total_timeout and cancels its attempt",
          "[resilience][unit]") {
  io_thread io;
  auto p = std::make_shared<scripted_provider>(io.ioc, "p");
  p->otherwise = hangs();
  auto policy = quick_policy();
  policy.total_timeout_ms = 200;
  auto route = make_route(io.ioc, "m", policy, {{p, 1}});
  auto rec = std::make_shared<recorder>();
  auto t = std::chrono::steady_clock::now();
  route->start(make_call("m", false), rec);
  REQUIRE(rec->wait());
  REQUIRE(rec->failed());
  CHECK(rec->failed()->cause == failure_cause::total_timeout);
  CHECK(rec->failed()->kind == chat_error_kind::upstream_timeout);
  auto took = rec->ended_at() - t;
  CHECK(took >= milliseconds(200));
  CHECK(took < milliseconds(200 + 500)); // at the deadline, with room for a loaded machine
  CHECK(p->cancels == 1);
  CHECK(route->deployments()[0]->outstanding == 0);
  CHECK(route->deployments()[0]->counters.timeouts[deployment_counters::total] == 1);

  SECTION("a streaming call has no total deadline") {
    p->otherwise = outcome{{"late"}, std::nullopt, 400, false};
    auto rec2 = call_and_wait(*route, make_call("m", true));
    CHECK(rec2->done());
  }
}

TEST_CASE("a non-streaming call whose tokens have begun still ends at total_timeout_ms", "[resilience][unit]") {
  io_thread io;
  // A slow producer: the first token at once, the rest never comes within the deadline.
  struct slow final : provider_port {
    explicit slow(asio::io_context& i) : ioc(i) {}
    asio::io_context& ioc;
    std::atomic<int> cancels{0};
    struct h final : call_handle {
      std::atomic<int>* cancels;
      void cancel() override { ++*cancels; }
    };
    std::shared_ptr<call_handle> start(upstream_call, std::shared_ptr<call_listener> l) override {
      auto handle = std::make_shared<h>();
      handle->cancels = &cancels;
      asio::post(ioc, [l] { l->on_delta("first"); });
      return handle;
    }
  };
  auto p = std::make_shared<slow>(io.ioc);
  auto policy = quick_policy();
  policy.total_timeout_ms = 200;
  auto route = make_route(io.ioc, "m", policy, {{p, 1}});
  auto rec = std::make_shared<recorder>();
  auto t = std::chrono::steady_clock::now();
  route->start(make_call("m", false), rec);
  REQUIRE(rec->wait(milliseconds(2000)));
  REQUIRE(rec->failed());
  CHECK(rec->failed()->cause == failure_cause::total_timeout);
  CHECK(rec->ended_at() - t >= milliseconds(200));
  CHECK(rec->ended_at() - t < milliseconds(200 + 500)); // at the deadline, with room for a loaded machine
  CHECK(p->cancels == 1);
  CHECK(route->deployments()[0]->outstanding == 0);
}

TEST_CASE("cancelling a call during its backoff stops further attempts", "[resilience][unit]") {
  io_thread io;
  auto p = std::make_shared<scripted_provider>(io.ioc, "p");
  // Retry-After: 1 s before the retry, a wide window for the test thread to cancel in.
  const auto retry_after = milliseconds(1000);
  p->otherwise = fails(status_failure(503, retry_after.count()));
  auto route = make_route(io.ioc, "m", quick_policy(), {{p, 1}});
  auto& dep = *route->deployments()[0];
  auto rec = std::make_shared<recorder>();
  auto h = route->start(make_call("m"), rec);
  // The first attempt failed and its retry was decided: the retry is counted under the call's
  // lock, in the same step that arms the backoff timer, and cancel() takes that lock too.
  REQUIRE(wait_until(deadline_in(seconds(5)), [&] { return dep.counters.retries == 1; }));
  // The backoff began no later than now, so its retry was due no later than this.
  auto retry_due = std::chrono::steady_clock::now() + retry_after;
  REQUIRE(p->calls == 1);
  h->cancel();
  // Once the io thread is past the moment the retry was due, it would have been started.
  REQUIRE(io.reached(retry_due + milliseconds(50)));
  CHECK(p->calls == 1);
  CHECK_FALSE(rec->ended()); // a cancelled call reports nothing more
  CHECK(dep.outstanding == 0);
}
