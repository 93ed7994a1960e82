#include "parley/persistence/executor.hpp"

#include <chrono>

namespace parley::persistence {

store_executor::store_executor(int threads, std::size_t max_queued) : max_queued_(max_queued) {
  if (threads < 1)
    threads = 1;
  workers_.reserve(static_cast<std::size_t>(threads));
  for (int i = 0; i < threads; ++i)
    workers_.emplace_back([this] { run(); });
}

store_executor::~store_executor() { stop(); }

bool store_executor::try_post(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ || jobs_.size() >= max_queued_)
      return false;
    jobs_.push_back(std::move(job));
  }
  cv_.notify_one();
  return true;
}

void store_executor::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && workers_.empty())
      return;
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_)
    if (t.joinable())
      t.join();
  workers_.clear();
}

std::size_t store_executor::queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return jobs_.size();
}

void store_executor::run() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      // Drain what was queued before stop(): callers are owed their completions.
      if (jobs_.empty())
        return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    if (timing_) {
      auto t0 = std::chrono::steady_clock::now();
      job();
      timing_->observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    } else {
      job();
    }
  }
}

} // namespace parley::persistence
