#include "parley/net/ops.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <mutex>

namespace parley::net {
namespace {

using clock = std::chrono::steady_clock;

/// Readiness evaluated at most once per `ttl`: probes (and anyone else) get the cached answer,
/// so they cannot load the store. Callers that arrive while a check runs wait for its answer.
/// Thread-safe.
class cached_readiness : public std::enable_shared_from_this<cached_readiness> {
public:
  using deps = std::vector<dependency_status>;
  cached_readiness(std::shared_ptr<readiness_source> src, clock::duration ttl)
    : src_(std::move(src)), ttl_(ttl) {}

  void get(std::function<void(const deps&)> done) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (has_ && clock::now() - at_ < ttl_) {
        auto copy = last_;
        lock.unlock();
        return done(copy);
      }
      waiters_.push_back(std::move(done));
      if (running_)
        return;
      running_ = true;
    }
    src_->check([self = shared_from_this()](deps d) {
      std::vector<std::function<void(const deps&)>> waiting;
      {
        std::lock_guard<std::mutex> lock(self->mu_);
        self->last_ = d;
        self->at_ = clock::now();
        self->has_ = true;
        self->running_ = false;
        waiting.swap(self->waiters_);
      }
      for (auto& w : waiting)
        w(d);
    });
  }

  readiness_source& source() { return *src_; }

private:
  std::shared_ptr<readiness_source> src_;
  clock::duration ttl_;
  std::mutex mu_;
  bool has_ = false;
  bool running_ = false;
  clock::time_point at_;
  deps last_;
  std::vector<std::function<void(const deps&)>> waiters_;
};

} // namespace

void add_ops_routes(router& r, std::shared_ptr<readiness_source> readiness, build_info info,
                    std::function<nlohmann::json()> upstreams) {
  r.add(http::verb::get, "/healthz", access::anyone(), [](const exchange_ptr& ex) {
    ex->respond_json(http::status::ok, {{"status", "ok"}});
  });
  auto cached = std::make_shared<cached_readiness>(std::move(readiness), std::chrono::seconds(1));
  r.add(http::verb::get, "/readyz", access::anyone_or_admin(), [cached, upstreams](const exchange_ptr& ex) {
    cached->get([ex, upstreams, cached](const std::vector<dependency_status>& checked) {
      auto deps = cached->source().instant();
      deps.insert(deps.end(), checked.begin(), checked.end());
      bool ready = true;
      for (auto& d : deps)
        ready = ready && d.ok;
      nlohmann::json body = {{"status", ready ? "ready" : "not_ready"}};
      // Anonymous callers (probes) get the status; the dependency list and the upstreams'
      // breaker states are for the admin.
      if (ex->ctx().admin) {
        auto checks = nlohmann::json::array();
        for (auto& d : deps)
          checks.push_back({{"name", d.name}, {"ok", d.ok}, {"detail", d.detail}});
        body["checks"] = std::move(checks);
        if (upstreams)
          body["upstreams"] = upstreams();
      }
      ex->respond_json(ready ? http::status::ok : http::status::service_unavailable, body);
    });
  });
  r.add(http::verb::get, "/version", access::anyone_or_admin(), [info](const exchange_ptr& ex) {
    if (!ex->ctx().admin)
      return ex->respond_json(http::status::ok, {{"status", "ok"}});
    ex->respond_json(http::status::ok, {{"version", info.version},
                                        {"commit", info.commit},
                                        {"build_type", info.build_type}});
  });
}

} // namespace parley::net
