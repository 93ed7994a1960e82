// The resilient route: one call = one resilient_call that picks a deployment (breaker
// admission, load balancing), starts an attempt through that deployment's client, and on a
// failure before the first token either retries (backoff with full jitter, Retry-After,
// retry budget), moves to the next fallback model, or reports the failure. Once a token has
// reached the listener, nothing is retried: the failure ends the stream.
#include "parley/net/resilience.hpp"

#include <boost/asio/steady_timer.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <mutex>
#include <random>

namespace parley::net {

using actors::chat_error_kind;
using actors::chat_failure;
using actors::failure_cause;
using clock_type = std::chrono::steady_clock;

namespace {

int64_t second_of(steady_time t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

/// Advances a per-second ring of counters to `now`, clearing the seconds it skips.
template <class Ring>
void roll(Ring& ring, int64_t& head, steady_time now) {
  auto sec = second_of(now);
  if (sec <= head)
    return;
  auto n = static_cast<int64_t>(ring.size());
  if (sec - head >= n) {
    for (auto& b : ring)
      b = {0, 0};
  } else {
    for (auto s = head + 1; s <= sec; ++s)
      ring[static_cast<std::size_t>(s % n)] = {0, 0};
  }
  head = sec;
}

std::minstd_rand& rng() {
  thread_local std::minstd_rand r{std::random_device{}()};
  return r;
}

int64_t micros_since(steady_time t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - t).count();
}

bool is_timeout(failure_cause c) {
  return c == failure_cause::connect_timeout || c == failure_cause::tls_timeout ||
         c == failure_cause::first_byte_timeout || c == failure_cause::idle_timeout ||
         c == failure_cause::total_timeout;
}

/// Does this failure say something about the upstream's health? (A 400 does not.)
bool counts_against_upstream(const chat_failure& f) {
  if (f.cause == failure_cause::status)
    return f.upstream_status >= 500 || f.upstream_status == 429 || f.upstream_status == 408;
  return f.cause != failure_cause::none && f.cause != failure_cause::breaker_open &&
         f.cause != failure_cause::budget;
}

} // namespace

// -- circuit breaker -------------------------------------------------------------------

circuit_breaker::circuit_breaker(breaker_policy p)
  : p_(p), window_(static_cast<std::size_t>(std::max(1, p.window_seconds))) {
  for (auto& b : window_)
    b = {0, 0};
}

void circuit_breaker::roll_locked(steady_time now) { roll(window_, window_head_, now); }

void circuit_breaker::open_locked(steady_time now) {
  state_ = state::open;
  open_until_ = now + std::chrono::milliseconds(p_.open_ms);
  consecutive_ = 0;
  probes_ = 0;
  for (auto& b : window_)
    b = {0, 0};
  ++opened_;
}

circuit_breaker::admission circuit_breaker::admit(steady_time now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (state_ == state::closed)
    return admission::allow;
  if (state_ == state::open) {
    if (now < open_until_)
      return admission::deny;
    state_ = state::half_open;
    probes_ = 0;
  }
  if (probes_ < std::max(1, p_.half_open_probes)) {
    ++probes_;
    return admission::probe;
  }
  return admission::deny;
}

void circuit_breaker::on_success(bool probe, steady_time now) {
  std::lock_guard<std::mutex> lock(mu_);
  roll_locked(now);
  window_[static_cast<std::size_t>(window_head_ % static_cast<int64_t>(window_.size()))][0]++;
  consecutive_ = 0;
  if (probe && state_ == state::half_open) {
    state_ = state::closed;
    probes_ = 0;
    for (auto& b : window_)
      b = {0, 0};
  }
}

void circuit_breaker::on_failure(bool probe, steady_time now) {
  std::lock_guard<std::mutex> lock(mu_);
  roll_locked(now);
  auto& b = window_[static_cast<std::size_t>(window_head_ % static_cast<int64_t>(window_.size()))];
  b[0]++;
  b[1]++;
  ++consecutive_;
  if (state_ == state::half_open) {
    if (probe)
      open_locked(now);
    return;
  }
  if (state_ != state::closed)
    return;
  if (p_.consecutive_failures > 0 && consecutive_ >= p_.consecutive_failures)
    return open_locked(now);
  if (p_.failure_ratio > 0) {
    uint64_t req = 0, fail = 0;
    for (auto& w : window_) {
      req += w[0];
      fail += w[1];
    }
    if (req >= static_cast<uint64_t>(std::max(1, p_.min_requests)) &&
        static_cast<double>(fail) >= p_.failure_ratio * static_cast<double>(req))
      open_locked(now);
  }
}

void circuit_breaker::abandon(bool probe) {
  std::lock_guard<std::mutex> lock(mu_);
  if (probe && state_ == state::half_open && probes_ > 0)
    --probes_;
}

circuit_breaker::state circuit_breaker::current(steady_time now) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (state_ == state::open && now >= open_until_)
    return state::half_open; // the next call is a probe
  return state_;
}

uint64_t circuit_breaker::times_opened() const {
  std::lock_guard<std::mutex> lock(mu_);
  return opened_;
}

const char* to_string(circuit_breaker::state s) {
  switch (s) {
    case circuit_breaker::state::closed: return "closed";
    case circuit_breaker::state::half_open: return "half_open";
    case circuit_breaker::state::open: return "open";
  }
  return "closed";
}

// -- retry budget ----------------------------------------------------------------------

retry_budget::retry_budget(double ratio, int min_per_second, int window_seconds)
  : ratio_(ratio), min_per_second_(min_per_second),
    window_(static_cast<std::size_t>(std::max(1, window_seconds))) {
  for (auto& b : window_)
    b = {0, 0};
}

void retry_budget::roll_locked(steady_time now) { roll(window_, head_, now); }

void retry_budget::on_request(steady_time now) {
  std::lock_guard<std::mutex> lock(mu_);
  roll_locked(now);
  window_[static_cast<std::size_t>(head_ % static_cast<int64_t>(window_.size()))][0]++;
}

bool retry_budget::try_retry(steady_time now) {
  std::lock_guard<std::mutex> lock(mu_);
  roll_locked(now);
  uint64_t req = 0, ret = 0;
  for (auto& w : window_) {
    req += w[0];
    ret += w[1];
  }
  double allowed = ratio_ * static_cast<double>(req) +
                   static_cast<double>(min_per_second_) * static_cast<double>(window_.size());
  if (static_cast<double>(ret + 1) > allowed)
    return false;
  window_[static_cast<std::size_t>(head_ % static_cast<int64_t>(window_.size()))][1]++;
  return true;
}

// -- deployments and classes -------------------------------------------------------------

deployment::deployment(std::string r, std::string n, std::string um,
                       std::shared_ptr<actors::provider_port> c, int w, breaker_policy bp,
                       const retry_policy& rp)
  : route(std::move(r)), name(std::move(n)), upstream_model(std::move(um)), client(std::move(c)),
    weight(std::max(1, w)), breaker(bp), budget(rp.budget_ratio, rp.budget_min_per_second) {}

failure_class parse_failure_class(const std::string& s) {
  if (s == "connect") return failure_class::connect;
  if (s == "rate_limited") return failure_class::rate_limited;
  if (s == "server_error") return failure_class::server_error;
  if (s == "timeout") return failure_class::timeout;
  if (s == "breaker_open") return failure_class::breaker_open;
  return failure_class::none;
}

failure_class classify(const chat_failure& f) {
  switch (f.cause) {
    case failure_cause::connect:
    case failure_cause::reset:
      return failure_class::connect;
    case failure_cause::connect_timeout:
    case failure_cause::tls_timeout:
    case failure_cause::first_byte_timeout:
    case failure_cause::idle_timeout:
    case failure_cause::total_timeout:
      return failure_class::timeout;
    case failure_cause::breaker_open:
      return failure_class::breaker_open;
    case failure_cause::broken:
      return failure_class::server_error;
    case failure_cause::status:
      if (f.upstream_status == 429) return failure_class::rate_limited;
      if (f.upstream_status == 504 || f.upstream_status == 408) return failure_class::timeout;
      if (f.upstream_status >= 500) return failure_class::server_error;
      return failure_class::none;
    default:
      return failure_class::none;
  }
}

// -- the call --------------------------------------------------------------------------

namespace {

class resilient_call;

/// Receives one attempt's events and hands them to the call with the attempt's number, so
/// that late events of an abandoned attempt are recognised and dropped.
class attempt_listener final : public actors::call_listener {
public:
  attempt_listener(std::shared_ptr<resilient_call> c, int n) : call_(std::move(c)), n_(n) {}
  void on_delta(std::string content) override;
  void on_done(actors::chat_done d) override;
  void on_failed(chat_failure f) override;

private:
  std::shared_ptr<resilient_call> call_;
  int n_;
};

class resilient_call final : public actors::call_handle,
                             public std::enable_shared_from_this<resilient_call> {
public:
  resilient_call(std::shared_ptr<resilient_route> primary, actors::upstream_call call,
                 std::shared_ptr<actors::call_listener> sink)
    : resilient_call(primary, std::move(call), std::move(sink), primary->ioc()) {}

  /// Both timers on one context: the calling io thread's.
  resilient_call(std::shared_ptr<resilient_route> primary, actors::upstream_call call,
                 std::shared_ptr<actors::call_listener> sink, asio::io_context& ioc)
    : call_(std::move(call)), sink_(std::move(sink)), backoff_timer_(ioc), total_timer_(ioc) {
    candidates_.push_back(primary);
    for (auto& fb : primary->fallbacks())
      if (allowed(fb->model()))
        candidates_.push_back(fb);
  }

  void begin() {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    started_ = clock_type::now();
    auto total = candidates_.front()->policy().total_timeout_ms;
    if (!call_.client_streaming && total > 0) {
      deadline_ = started_ + std::chrono::milliseconds(total);
      total_timer_.expires_at(deadline_);
      total_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
        if (!ec)
          self->on_total_timeout();
      });
    }
    try_candidate();
  }

  void cancel() override {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    if (finished_)
      return;
    finished_ = true;
    if (current_)
      current_->cancel();
    settle_abandoned();
    stop_timers();
    sink_.reset();
  }

  void on_delta(int n, std::string content) {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    if (finished_ || n != attempt_)
      return;
    if (!committed_) {
      committed_ = true;
      ttft_us_ = micros_since(started_);
      note_latency(micros_since(attempt_started_));
      announce_fallback();
    }
    sink_->on_delta(std::move(content));
  }

  void on_done(int n, actors::chat_done d) {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    if (finished_ || n != attempt_)
      return;
    auto now = clock_type::now();
    if (!committed_)
      note_latency(micros_since(attempt_started_));
    settle(true, now);
    dep_->counters.ok.fetch_add(1, std::memory_order_relaxed);
    announce_fallback();
    if (cand_ > 0)
      candidates_.front()->count_fallback(fallback_index());
    auto& model = candidates_[cand_]->model();
    if (!model.empty())
      d.model = model;
    d.attempts = attempt_;
    d.upstream_us = micros_since(started_);
    d.ttft_us = ttft_us_;
    finished_ = true;
    stop_timers();
    auto sink = std::move(sink_);
    current_.reset();
    sink->on_done(std::move(d));
  }

  void on_failed(int n, chat_failure f) {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    if (finished_ || n != attempt_)
      return;
    auto now = clock_type::now();
    bool against = counts_against_upstream(f);
    // A failure weighs as a slow answer in the latency average (at least 250 ms), so that
    // least_outstanding does not favour a deployment that fails fast.
    if (against)
      note_latency(std::max<int64_t>(micros_since(attempt_started_), 250'000));
    settle(!against, now);
    count_outcome(f);
    current_.reset();
    if (committed_)
      return finish_fail(std::move(f)); // the client has tokens: end the stream, no retry
    // The attempt is over whatever comes next (a retry, a fallback or the call's failure).
    sink_->on_attempt_failed(n, f);
    auto& route = *candidates_[cand_];
    auto& rp = route.policy().retry;
    bool retryable = f.cause == failure_cause::connect || f.cause == failure_cause::reset ||
                     f.cause == failure_cause::connect_timeout ||
                     f.cause == failure_cause::tls_timeout ||
                     (f.cause == failure_cause::status &&
                      std::find(rp.statuses.begin(), rp.statuses.end(), f.upstream_status) !=
                        rp.statuses.end());
    if (retryable && tries_on_candidate_ < rp.max_attempts &&
        (f.retry_after_ms <= 0 || f.retry_after_ms <= rp.retry_after_max_ms)) {
      // Full jitter: uniform in [0, min(cap, base * 2^(n-1))]; the upstream's Retry-After
      // is a floor.
      int64_t cap = std::min<int64_t>(rp.backoff_max_ms,
                                      int64_t(rp.backoff_base_ms) << std::min(tries_on_candidate_ - 1, 20));
      int64_t delay = cap > 0 ? std::uniform_int_distribution<int64_t>(0, cap)(rng()) : 0;
      delay = std::max(delay, f.retry_after_ms);
      bool in_time = deadline_ == steady_time{} ||
                     now + std::chrono::milliseconds(delay) < deadline_;
      if (in_time) {
        if (dep_->budget.try_retry(now)) {
          dep_->counters.retries.fetch_add(1, std::memory_order_relaxed);
          last_failure_ = std::move(f);
          backoff_timer_.expires_after(std::chrono::milliseconds(delay));
          backoff_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
            if (!ec)
              self->retry();
          });
          return;
        }
        dep_->counters.budget_exhausted.fetch_add(1, std::memory_order_relaxed);
      }
    }
    next_candidate_or_fail(std::move(f));
  }

private:
  bool allowed(const std::string& model) const {
    if (call_.allowed_models.empty())
      return true;
    for (auto& m : call_.allowed_models)
      if (m == "*" || m == model)
        return true;
    return false;
  }

  std::size_t fallback_index() const {
    auto& fbs = candidates_.front()->fallbacks();
    for (std::size_t i = 0; i < fbs.size(); ++i)
      if (fbs[i] == candidates_[cand_])
        return i;
    return 0;
  }

  void announce_fallback() {
    if (cand_ > 0 && !announced_ && !candidates_[cand_]->model().empty()) {
      announced_ = true;
      sink_->on_served(candidates_[cand_]->model());
    }
  }

  void note_latency(int64_t us) {
    auto old = dep_->ewma_us.load(std::memory_order_relaxed);
    dep_->ewma_us.store(old == 0 ? us : (old * 4 + us) / 5, std::memory_order_relaxed);
  }

  void count_outcome(const chat_failure& f) {
    auto& c = dep_->counters;
    if (is_timeout(f.cause) || (f.cause == failure_cause::status &&
                                (f.upstream_status == 504 || f.upstream_status == 408)))
      c.timeout.fetch_add(1, std::memory_order_relaxed);
    else if (f.cause == failure_cause::status && f.upstream_status == 429)
      c.rate_limited.fetch_add(1, std::memory_order_relaxed);
    else
      c.error.fetch_add(1, std::memory_order_relaxed);
    int phase = -1;
    switch (f.cause) {
      case failure_cause::connect_timeout: phase = deployment_counters::connect; break;
      case failure_cause::tls_timeout: phase = deployment_counters::tls; break;
      case failure_cause::first_byte_timeout: phase = deployment_counters::first_byte; break;
      case failure_cause::idle_timeout: phase = deployment_counters::idle; break;
      default: break;
    }
    if (phase >= 0)
      c.timeouts[static_cast<std::size_t>(phase)].fetch_add(1, std::memory_order_relaxed);
  }

  /// Ends the running attempt's bookkeeping: in-flight count and breaker.
  void settle(bool healthy, steady_time now) {
    if (!in_attempt_)
      return;
    in_attempt_ = false;
    dep_->outstanding.fetch_sub(1, std::memory_order_relaxed);
    if (healthy)
      dep_->breaker.on_success(probe_, now);
    else
      dep_->breaker.on_failure(probe_, now);
  }

  void settle_abandoned() {
    if (!in_attempt_)
      return;
    in_attempt_ = false;
    dep_->outstanding.fetch_sub(1, std::memory_order_relaxed);
    dep_->breaker.abandon(probe_);
  }

  void stop_timers() {
    backoff_timer_.cancel();
    total_timer_.cancel();
  }

  void retry() {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    if (finished_)
      return;
    try_candidate();
  }

  void next_candidate_or_fail(chat_failure f) {
    auto cls = classify(f);
    auto& on = candidates_.front()->policy().fallback_on;
    if (cls != failure_class::none && cand_ + 1 < candidates_.size() &&
        std::find(on.begin(), on.end(), cls) != on.end()) {
      ++cand_;
      tries_on_candidate_ = 0;
      tried_.clear();
      last_failure_ = std::move(f);
      return try_candidate();
    }
    finish_fail(std::move(f));
  }

  /// Starts an attempt on the current candidate, or moves on when its breakers are all open.
  void try_candidate() {
    auto& route = candidates_[cand_];
    bool probe = false;
    auto dep = route->pick(tried_, probe);
    if (!dep) {
      for (auto& d : route->deployments())
        d->counters.breaker_open.fetch_add(1, std::memory_order_relaxed);
      chat_failure f{chat_error_kind::overloaded,
                     "The upstream of model `" +
                       (route->model().empty() ? call_.client_model : route->model()) +
                       "` is failing; its circuit breaker is open. Retry later.",
                     0, 0, failure_cause::breaker_open};
      // After a retry, report what actually went wrong upstream.
      if (tries_on_candidate_ > 0 && last_failure_.cause != failure_cause::none)
        f = last_failure_;
      return next_candidate_or_fail(std::move(f));
    }
    start_attempt(std::move(dep), probe);
  }

  void start_attempt(std::shared_ptr<deployment> dep, bool probe) {
    auto now = clock_type::now();
    ++attempt_;
    ++tries_on_candidate_;
    tried_.push_back(dep.get());
    dep_ = std::move(dep);
    probe_ = probe;
    in_attempt_ = true;
    attempt_started_ = now;
    dep_->outstanding.fetch_add(1, std::memory_order_relaxed);
    if (tries_on_candidate_ == 1)
      dep_->budget.on_request(now);
    actors::upstream_call c = call_; // kept whole for a retry
    c.model = dep_->upstream_model.empty() ? call_.model : dep_->upstream_model;
    if (!candidates_[cand_]->model().empty())
      c.client_model = candidates_[cand_]->model();
    sink_->on_attempt(attempt_, dep_->name, candidates_[cand_]->model());
    auto l = std::make_shared<attempt_listener>(shared_from_this(), attempt_);
    current_ = dep_->client->start(std::move(c), std::move(l));
  }

  void on_total_timeout() {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    // Only non-streaming calls have this deadline: their tokens have not reached the client
    // yet, so it applies after the first token too.
    if (finished_)
      return;
    if (current_)
      current_->cancel();
    if (in_attempt_) {
      dep_->counters.timeout.fetch_add(1, std::memory_order_relaxed);
      dep_->counters.timeouts[deployment_counters::total].fetch_add(1, std::memory_order_relaxed);
    }
    settle_abandoned();
    current_.reset();
    finish_fail({chat_error_kind::upstream_timeout,
                 "The upstream did not complete the request within " +
                   std::to_string(candidates_.front()->policy().total_timeout_ms) + " ms.",
                 0, 0, failure_cause::total_timeout});
  }

  void finish_fail(chat_failure f) {
    finished_ = true;
    stop_timers();
    f.attempts = attempt_;
    f.upstream_us = micros_since(started_);
    auto sink = std::move(sink_);
    current_.reset();
    if (sink)
      sink->on_failed(std::move(f));
  }

  std::recursive_mutex mu_;
  actors::upstream_call call_;
  std::shared_ptr<actors::call_listener> sink_;
  std::vector<std::shared_ptr<resilient_route>> candidates_;
  std::size_t cand_ = 0;
  int tries_on_candidate_ = 0;
  std::vector<const deployment*> tried_;
  std::shared_ptr<deployment> dep_;
  bool probe_ = false;
  bool in_attempt_ = false;
  std::shared_ptr<actors::call_handle> current_;
  int attempt_ = 0;
  bool committed_ = false;
  bool announced_ = false;
  bool finished_ = false;
  steady_time started_{}, attempt_started_{}, deadline_{};
  int64_t ttft_us_ = 0;
  chat_failure last_failure_;
  asio::steady_timer backoff_timer_;
  asio::steady_timer total_timer_;
};

void attempt_listener::on_delta(std::string content) { call_->on_delta(n_, std::move(content)); }
void attempt_listener::on_done(actors::chat_done d) { call_->on_done(n_, std::move(d)); }
void attempt_listener::on_failed(chat_failure f) { call_->on_failed(n_, std::move(f)); }

} // namespace

// -- the route -------------------------------------------------------------------------

resilient_route::resilient_route(asio::io_context& ioc, std::string model, route_policy policy,
                                 std::vector<std::shared_ptr<deployment>> deployments,
                                 log::logger_ptr logger)
  : resilient_route(std::make_unique<io_pool>(ioc), std::move(model), std::move(policy),
                    std::move(deployments), std::move(logger)) {}

resilient_route::resilient_route(std::unique_ptr<io_pool> own, std::string model,
                                 route_policy policy,
                                 std::vector<std::shared_ptr<deployment>> deployments,
                                 log::logger_ptr logger)
  : resilient_route(*own, std::move(model), std::move(policy), std::move(deployments),
                    std::move(logger)) {
  own_io_ = std::move(own);
}

resilient_route::resilient_route(io_pool& io, std::string model, route_policy policy,
                                 std::vector<std::shared_ptr<deployment>> deployments,
                                 log::logger_ptr logger)
  : io_(&io), model_(std::move(model)), policy_(std::move(policy)),
    deployments_(std::move(deployments)), logger_(std::move(logger)) {
  if (deployments_.empty())
    throw std::invalid_argument("a route needs at least one deployment");
}

void resilient_route::set_fallbacks(std::vector<std::shared_ptr<resilient_route>> fallbacks) {
  fallbacks_ = std::move(fallbacks);
  fallback_counts_ = std::make_unique<std::atomic<uint64_t>[]>(fallbacks_.size());
  for (std::size_t i = 0; i < fallbacks_.size(); ++i)
    fallback_counts_[i].store(0);
}

uint64_t resilient_route::fallbacks_served(std::size_t i) const {
  return i < fallbacks_.size() ? fallback_counts_[i].load(std::memory_order_relaxed) : 0;
}

void resilient_route::count_fallback(std::size_t i) {
  if (i < fallbacks_.size())
    fallback_counts_[i].fetch_add(1, std::memory_order_relaxed);
}

std::shared_ptr<deployment> resilient_route::pick(const std::vector<const deployment*>& tried,
                                                  bool& probe) {
  auto now = clock_type::now();
  auto admit = [&](const std::shared_ptr<deployment>& d) {
    auto a = d->breaker.admit(now);
    probe = a == circuit_breaker::admission::probe;
    return a != circuit_breaker::admission::deny;
  };
  if (deployments_.size() == 1)
    return admit(deployments_[0]) ? deployments_[0] : nullptr;
  // Candidates: those not tried by this call yet, else all (Envoy's previous-hosts rule).
  std::vector<std::size_t> idx;
  for (std::size_t i = 0; i < deployments_.size(); ++i)
    if (std::find(tried.begin(), tried.end(), deployments_[i].get()) == tried.end())
      idx.push_back(i);
  if (idx.empty())
    for (std::size_t i = 0; i < deployments_.size(); ++i)
      idx.push_back(i);
  auto weighted_one = [&]() -> std::size_t {
    int64_t total = 0;
    for (auto i : idx)
      total += deployments_[i]->weight;
    auto r = std::uniform_int_distribution<int64_t>(0, total - 1)(rng());
    for (std::size_t k = 0; k < idx.size(); ++k) {
      r -= deployments_[idx[k]]->weight;
      if (r < 0)
        return k;
    }
    return idx.size() - 1;
  };
  auto score = [&](std::size_t i) {
    auto& d = *deployments_[i];
    double lat = static_cast<double>(std::max<int64_t>(d.ewma_us.load(std::memory_order_relaxed), 1));
    return static_cast<double>(d.outstanding.load(std::memory_order_relaxed) + 1) * lat /
           static_cast<double>(d.weight);
  };
  while (!idx.empty()) {
    std::size_t k;
    if (policy_.lb == "weighted" || idx.size() == 1) {
      k = weighted_one();
    } else {
      // Power of two choices by (in-flight + 1) x smoothed latency / weight.
      auto a = weighted_one();
      auto b = weighted_one();
      if (a == b)
        b = (a + 1) % idx.size();
      k = score(idx[a]) <= score(idx[b]) ? a : b;
    }
    auto& d = deployments_[idx[k]];
    if (admit(d))
      return d;
    idx.erase(idx.begin() + static_cast<std::ptrdiff_t>(k));
  }
  return nullptr;
}

std::shared_ptr<actors::call_handle>
resilient_route::start(actors::upstream_call call, std::shared_ptr<actors::call_listener> listener) {
  auto c = std::make_shared<resilient_call>(shared_from_this(), std::move(call), std::move(listener));
  c->begin();
  return c;
}

nlohmann::json upstream_status(const std::vector<std::shared_ptr<resilient_route>>& routes) {
  auto now = clock_type::now();
  auto out = nlohmann::json::array();
  for (auto& r : routes)
    for (auto& d : r->deployments()) {
      auto& c = d->counters;
      out.push_back({{"route", r->model().empty() ? "*" : r->model()},
                     {"deployment", d->name},
                     {"breaker", to_string(d->breaker.current(now))},
                     {"breaker_opened", d->breaker.times_opened()},
                     {"in_flight", d->outstanding.load(std::memory_order_relaxed)},
                     {"ok", c.ok.load(std::memory_order_relaxed)},
                     {"errors", c.error.load(std::memory_order_relaxed)},
                     {"timeouts", c.timeout.load(std::memory_order_relaxed)},
                     {"rate_limited", c.rate_limited.load(std::memory_order_relaxed)},
                     {"retries", c.retries.load(std::memory_order_relaxed)}});
    }
  return out;
}

} // namespace parley::net
