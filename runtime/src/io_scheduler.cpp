#include "io_scheduler.hpp"

#include <caf/abstract_actor.hpp>
#include <caf/detail/thread_safe_actor_clock.hpp>
#include <caf/execution_unit.hpp>
#include <caf/resumable.hpp>
#include <caf/scheduler/abstract_coordinator.hpp>

#include <boost/asio/post.hpp>

#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace parley::runtime {
namespace {

namespace asio = boost::asio;

/// Which pool each config's actor system runs on: CAF builds modules from plain function
/// pointers, so the pool is found through the config the system was built from.
std::mutex g_configs_mu;
std::map<const caf::actor_system_config*, net::io_pool*> g_configs;

class io_coordinator;

/// CAF's thread-safe clock, minus a wake-up per actor: CAF cancels an actor's timeouts when it
/// terminates, and the thread-safe clock hands every call to its thread (a futex wake each).
/// Most actors here (a relay per request) never set a timeout; for them there is nothing to
/// cancel, so nothing is handed over.
class io_clock final : public caf::detail::thread_safe_actor_clock {
public:
  using super = caf::detail::thread_safe_actor_clock;

  void set_ordinary_timeout(time_point t, caf::abstract_actor* self, caf::atom_value type,
                            uint64_t id) override {
    note(self);
    super::set_ordinary_timeout(t, self, type, id);
  }
  void set_request_timeout(time_point t, caf::abstract_actor* self, caf::message_id id) override {
    note(self);
    super::set_request_timeout(t, self, id);
  }
  void set_multi_timeout(time_point t, caf::abstract_actor* self, caf::atom_value type,
                         uint64_t id) override {
    note(self);
    super::set_multi_timeout(t, self, type, id);
  }
  void cancel_ordinary_timeout(caf::abstract_actor* self, caf::atom_value type) override {
    if (has(self))
      super::cancel_ordinary_timeout(self, type);
  }
  void cancel_request_timeout(caf::abstract_actor* self, caf::message_id id) override {
    if (has(self))
      super::cancel_request_timeout(self, id);
  }
  void cancel_timeouts(caf::abstract_actor* self) override {
    if (forget(self))
      super::cancel_timeouts(self);
  }

private:
  void note(caf::abstract_actor* self) {
    std::lock_guard<std::mutex> lock(mu_);
    ++timed_[self->id()];
  }
  bool has(caf::abstract_actor* self) {
    std::lock_guard<std::mutex> lock(mu_);
    return timed_.count(self->id()) > 0;
  }
  bool forget(caf::abstract_actor* self) {
    std::lock_guard<std::mutex> lock(mu_);
    return timed_.erase(self->id()) > 0;
  }

  std::mutex mu_;
  std::unordered_map<caf::actor_id, uint32_t> timed_; ///< actors that ever set a timeout
};

/// The execution unit of one io thread: an actor that makes another runnable while running
/// on this thread schedules it on this thread too.
class io_unit final : public caf::execution_unit {
public:
  io_unit(caf::actor_system* sys, io_coordinator* c, std::size_t i)
    : execution_unit(sys), coord_(c), index_(i) {}
  void exec_later(caf::resumable* job) override;

private:
  io_coordinator* coord_;
  std::size_t index_;
};

class io_coordinator final : public caf::scheduler::abstract_coordinator,
                             public io_scheduler_control {
public:
  using super = caf::scheduler::abstract_coordinator;

  io_coordinator(caf::actor_system& sys, net::io_pool& io) : super(sys), io_(io) {}

  void init(caf::actor_system_config& cfg) override {
    super::init(cfg);
    for (std::size_t i = 0; i < io_.size(); ++i)
      units_.push_back(std::make_unique<io_unit>(&system(), this, i));
    inline_unit_ = std::make_unique<io_unit>(&system(), this, net::io_pool::npos);
  }

  void start() override {
    clock_thread_ = std::thread{[this] { clock_.run_dispatch_loop(); }};
    super::start();
  }

  void stop() override {
    stop_actors();
    clock_.cancel_dispatch_loop();
    if (clock_thread_.joinable())
      clock_thread_.join();
  }

  caf::actor_clock& clock() noexcept override { return clock_; }

  void enqueue(caf::resumable* job) override { enqueue_on(job, io_.pick()); }

  /// Runs `job` on io context `i` (the calling thread's own when it is that io thread).
  void enqueue_on(caf::resumable* job, std::size_t i) {
    posting_.fetch_add(1, std::memory_order_acq_rel);
    if (inline_.load(std::memory_order_acquire) || i == net::io_pool::npos) {
      posting_.fetch_sub(1, std::memory_order_acq_rel);
      return run_inline(job);
    }
    asio::post(io_.at(i), [this, job, i] { resume(job, i); });
    posting_.fetch_sub(1, std::memory_order_acq_rel);
  }

  /// Waits out posts that began before the switch, so that once it returns every job is
  /// either queued on a context (the caller polls them) or runs inline.
  void set_inline() override {
    inline_.store(true, std::memory_order_release);
    while (posting_.load(std::memory_order_acquire) != 0)
      std::this_thread::yield();
  }

private:
  void resume(caf::resumable* job, std::size_t i) {
    switch (job->resume(units_[i].get(), max_throughput())) {
      case caf::resumable::resume_later:
        enqueue_on(job, i); // its turn again after what else this thread has to do
        break;
      case caf::resumable::done:
      case caf::resumable::awaiting_message:
        intrusive_ptr_release(job);
        break;
      case caf::resumable::shutdown_execution_unit:
        break;
    }
  }

  /// After the io threads: one runner at a time drains what becomes runnable.
  void run_inline(caf::resumable* job) {
    std::unique_lock<std::mutex> lock(inline_mu_);
    inline_queue_.push_back(job);
    if (inline_running_)
      return;
    inline_running_ = true;
    while (!inline_queue_.empty()) {
      auto* next = inline_queue_.front();
      inline_queue_.pop_front();
      lock.unlock();
      auto r = next->resume(inline_unit_.get(), max_throughput());
      lock.lock();
      if (r == caf::resumable::resume_later)
        inline_queue_.push_back(next);
      else if (r != caf::resumable::shutdown_execution_unit)
        intrusive_ptr_release(next);
    }
    inline_running_ = false;
  }

  net::io_pool& io_;
  std::vector<std::unique_ptr<io_unit>> units_;
  std::unique_ptr<io_unit> inline_unit_;
  std::atomic<bool> inline_{false};
  std::atomic<int> posting_{0}; ///< enqueue_on calls between their inline_ check and their post
  std::mutex inline_mu_;
  std::deque<caf::resumable*> inline_queue_;
  bool inline_running_ = false;
  io_clock clock_;
  std::thread clock_thread_;
};

void io_unit::exec_later(caf::resumable* job) { coord_->enqueue_on(job, index_); }

caf::actor_system::module* make_io_coordinator(caf::actor_system& sys) {
  net::io_pool* io = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_configs_mu);
    auto it = g_configs.find(&sys.config());
    if (it != g_configs.end()) {
      io = it->second;
      g_configs.erase(it); // one system per config
    }
  }
  if (!io)
    throw std::logic_error("install_io_scheduler: no io pool for this actor system's config");
  return new io_coordinator(sys, *io);
}

} // namespace

void install_io_scheduler(caf::actor_system_config& cfg, net::io_pool& io) {
  {
    std::lock_guard<std::mutex> lock(g_configs_mu);
    g_configs[&cfg] = &io;
  }
  cfg.module_factories.push_back(&make_io_coordinator);
}

io_scheduler_control* io_scheduler_of(caf::actor_system& sys) {
  return dynamic_cast<io_scheduler_control*>(&sys.scheduler());
}

} // namespace parley::runtime
