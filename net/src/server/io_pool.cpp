#include "parley/net/io_pool.hpp"

namespace parley::net {
namespace {

// The pool and context index the calling thread runs (one pool per thread at most).
thread_local const io_pool* t_pool = nullptr;
thread_local std::size_t t_index = io_pool::npos;

} // namespace

io_pool::io_pool(std::size_t n) {
  if (n == 0)
    n = 1;
  for (std::size_t i = 0; i < n; ++i) {
    // Concurrency hint 1: one thread runs each context, so work posted from that thread goes
    // to the thread's own queue (no wake-up of another thread). Asio keeps its locking:
    // other threads (the store's workers, the timer thread) post to these contexts too.
    owned_.push_back(std::make_unique<asio::io_context>(1));
    ctx_.push_back(owned_.back().get());
  }
}

io_pool::io_pool(asio::io_context& shared) { ctx_.push_back(&shared); }

std::size_t io_pool::current() const noexcept { return t_pool == this ? t_index : npos; }

std::size_t io_pool::pick() noexcept {
  if (t_pool == this)
    return t_index;
  return ctx_.size() == 1 ? 0 : next_.fetch_add(1, std::memory_order_relaxed) % ctx_.size();
}

void io_pool::bind(std::size_t i) noexcept {
  t_pool = this;
  t_index = i;
}

void io_pool::unbind() noexcept {
  if (t_pool == this) {
    t_pool = nullptr;
    t_index = npos;
  }
}

} // namespace parley::net
