#pragma once

#include "parley/persistence/result.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

namespace parley::persistence::detail {

/// A bounded pool of database connections, opened lazily by `open`. acquire() waits at most
/// the acquire timeout for a free connection (then fails with timeout); a connection the
/// borrower marks broken is closed and a fresh one opened on a later acquire.
/// Thread-safe.
template <class Conn>
class connection_pool {
public:
  using opener = std::function<std::unique_ptr<Conn>()>; // may throw: -> unavailable

  connection_pool(int size, std::chrono::milliseconds acquire_timeout, opener open)
    : size_(size), timeout_(acquire_timeout), open_(std::move(open)) {}

  /// A borrowed connection; returned to the pool on destruction.
  class lease {
  public:
    lease(connection_pool* p, std::unique_ptr<Conn> c) : pool_(p), conn_(std::move(c)) {}
    lease(lease&& o) noexcept : pool_(o.pool_), conn_(std::move(o.conn_)), broken_(o.broken_) {
      o.pool_ = nullptr;
    }
    lease& operator=(lease&&) = delete;
    ~lease() {
      if (pool_)
        pool_->release(std::move(conn_), broken_);
    }
    Conn& operator*() { return *conn_; }
    Conn* operator->() { return conn_.get(); }
    /// The connection is unusable: close it instead of returning it.
    void mark_broken() { broken_ = true; }

  private:
    connection_pool* pool_;
    std::unique_ptr<Conn> conn_;
    bool broken_ = false;
  };

  result<std::shared_ptr<lease>> acquire() {
    std::unique_lock<std::mutex> lock(mu_);
    auto deadline = std::chrono::steady_clock::now() + timeout_;
    while (idle_.empty() && open_count_ >= size_) {
      if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && idle_.empty() &&
          open_count_ >= size_)
        return store_error{persistence_errc::timeout,
                           "connection pool exhausted (" + std::to_string(size_) + " in use)"};
    }
    ++in_use_;
    if (!idle_.empty()) {
      auto c = std::move(idle_.back());
      idle_.pop_back();
      return std::make_shared<lease>(this, std::move(c));
    }
    ++open_count_; // reserve the slot, open outside the lock
    lock.unlock();
    try {
      auto c = open_();
      return std::make_shared<lease>(this, std::move(c));
    } catch (const std::exception& e) {
      lock.lock();
      --open_count_;
      --in_use_;
      cv_.notify_one();
      return store_error{persistence_errc::unavailable, e.what()};
    }
  }

  int in_use() const noexcept { return in_use_.load(); }
  int size() const noexcept { return size_; }

private:
  void release(std::unique_ptr<Conn> c, bool broken) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      --in_use_;
      if (broken || !c)
        --open_count_;
      else
        idle_.push_back(std::move(c));
    }
    cv_.notify_one();
  }

  int size_;
  std::chrono::milliseconds timeout_;
  opener open_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Conn>> idle_;
  int open_count_ = 0;
  std::atomic<int> in_use_{0};
};

} // namespace parley::persistence::detail
