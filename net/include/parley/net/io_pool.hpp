#pragma once

#include "parley/net/http.hpp"

#include <atomic>
#include <cstddef>
#include <memory>
#include <vector>

namespace parley::net {

/// The process's io_contexts: one per io thread, each run by exactly one thread, so that a
/// connection, the actors it talks to and its upstream call can all stay on one core.
///
/// Whoever starts work picks a context with pick(): the calling thread's own when it runs one
/// of this pool's contexts (no hand-off to another thread), else the next one round robin.
/// Runtime owns the pool and its threads; each thread calls bind(i) before running at(i).
class io_pool {
public:
  static constexpr std::size_t npos = static_cast<std::size_t>(-1);

  /// `n` contexts, each meant for one thread.
  explicit io_pool(std::size_t n);
  /// One context that the caller owns and runs (tests, tools).
  explicit io_pool(asio::io_context& shared);
  io_pool(const io_pool&) = delete;
  io_pool& operator=(const io_pool&) = delete;

  std::size_t size() const noexcept { return ctx_.size(); }
  asio::io_context& at(std::size_t i) const noexcept { return *ctx_[i]; }

  /// The index of the context the calling thread runs, or npos.
  std::size_t current() const noexcept;
  /// current() when the calling thread runs one of ours, else the next context round robin.
  std::size_t pick() noexcept;
  asio::io_context& pick_context() noexcept { return at(pick()); }

  /// Marks the calling thread as the one running context `i` (call before at(i).run()).
  void bind(std::size_t i) noexcept;
  /// Clears the calling thread's mark (after its run() returned).
  void unbind() noexcept;

private:
  std::vector<std::unique_ptr<asio::io_context>> owned_;
  std::vector<asio::io_context*> ctx_;
  std::atomic<std::size_t> next_{0};
};

} // namespace parley::net
