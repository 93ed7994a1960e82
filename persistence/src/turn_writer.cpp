#include "parley/persistence/turn_writer.hpp"

namespace parley::persistence {

namespace {
/// The write itself was refused (its messages do not fit): retrying it alone tells which.
bool refused(const status& s) {
  auto c = s.code();
  return c == persistence_errc::conflict || c == persistence_errc::not_found ||
         c == persistence_errc::invalid;
}
} // namespace

turn_writer::turn_writer(store& s, std::size_t max_batch, std::size_t max_queued,
                         std::size_t max_parked, std::chrono::milliseconds retry_every)
  : store_(s), max_batch_(max_batch), max_queued_(max_queued), max_parked_(max_parked),
    retry_every_(retry_every), thread_([this] { run(); }) {}

turn_writer::~turn_writer() { stop(); }

bool turn_writer::submit(turn_write w, std::function<void(status)> done) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ || queue_.size() >= max_queued_)
      return false;
    queue_.push_back({std::move(w), std::move(done)});
  }
  cv_.notify_one();
  return true;
}

void turn_writer::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable())
    thread_.join();
}

turn_writer::counters turn_writer::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void turn_writer::run() {
  for (;;) {
    std::vector<entry> batch;
    bool stopping = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      auto ready = [this] { return stopping_ || !queue_.empty(); };
      if (parked_.empty())
        cv_.wait(lock, ready);
      else
        cv_.wait_for(lock, retry_every_, ready);
      while (!queue_.empty() && batch.size() < max_batch_) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      stopping = stopping_ && queue_.empty();
    }
    if (!parked_.empty() &&
        (stopping || std::chrono::steady_clock::now() - last_retry_ >= retry_every_))
      retry_parked();
    if (!batch.empty())
      commit(batch);
    if (stopping && batch.empty())
      return; // everything queued was written (parked rows had their last try)
  }
}

void turn_writer::commit(std::vector<entry>& batch) {
  std::vector<turn_write> writes;
  writes.reserve(batch.size());
  for (auto& e : batch)
    writes.push_back(e.write);
  auto r = store_.write_turns(writes);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.batches;
  }
  if (r.ok() || !refused(r)) {
    if (!r.ok())
      for (auto& e : batch)
        park(std::move(e.write.usage));
    for (auto& e : batch)
      e.done(r);
    return;
  }
  // One caller's messages broke the combined transaction: give each caller its own outcome.
  for (auto& e : batch) {
    auto one = batch.size() == 1 ? r : store_.write_turns({e.write});
    if (batch.size() > 1) {
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.batches;
    }
    if (!one.ok() && !e.write.usage.empty()) {
      // The attempts happened whatever became of the messages: record them on their own.
      auto u = refused(one) ? store_.record_usage(e.write.usage) : one;
      if (!u.ok())
        park(std::move(e.write.usage));
    }
    e.done(one);
  }
}

void turn_writer::park(std::vector<usage_entry>&& rows) {
  if (rows.empty())
    return;
  parked_.insert(parked_.end(), std::make_move_iterator(rows.begin()),
                 std::make_move_iterator(rows.end()));
  uint64_t dropped = 0;
  if (parked_.size() > max_parked_) {
    dropped = parked_.size() - max_parked_;
    parked_.erase(parked_.begin(), parked_.begin() + static_cast<std::ptrdiff_t>(dropped));
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_.parked = parked_.size();
  stats_.parked_dropped += dropped;
}

void turn_writer::retry_parked() {
  last_retry_ = std::chrono::steady_clock::now();
  if (!store_.record_usage(parked_).ok())
    return;
  parked_.clear();
  std::lock_guard<std::mutex> lock(mu_);
  stats_.parked = 0;
}

} // namespace parley::persistence
