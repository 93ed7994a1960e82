#include "parley/persistence/message_writer.hpp"

namespace parley::persistence {

message_writer::message_writer(conversation_store& store, std::size_t max_batch,
                               std::size_t max_queued)
  : store_(store), max_batch_(max_batch), max_queued_(max_queued), thread_([this] { run(); }) {}

message_writer::~message_writer() { stop(); }

bool message_writer::append(std::vector<message_record> records, std::function<void(status)> done) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ || queue_.size() >= max_queued_)
      return false;
    queue_.push_back({std::move(records), std::move(done)});
  }
  cv_.notify_one();
  return true;
}

void message_writer::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable())
    thread_.join();
}

uint64_t message_writer::batches() const {
  std::lock_guard<std::mutex> lock(mu_);
  return batches_;
}

void message_writer::run() {
  for (;;) {
    std::vector<entry> batch;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty())
        return; // stopping, and everything queued was written
      while (!queue_.empty() && batch.size() < max_batch_) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    std::vector<message_record> all;
    for (auto& e : batch)
      all.insert(all.end(), e.records.begin(), e.records.end());
    auto r = store_.append_messages(all);
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++batches_;
    }
    if (r.ok() || batch.size() == 1) {
      for (auto& e : batch)
        e.done(r);
      continue;
    }
    // The combined transaction failed as a whole: give each caller its own outcome.
    for (auto& e : batch) {
      auto one = store_.append_messages(e.records);
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++batches_;
      }
      e.done(one);
    }
  }
}

} // namespace parley::persistence
