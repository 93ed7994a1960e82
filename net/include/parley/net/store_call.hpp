#pragma once

#include "parley/net/exchange.hpp"
#include "parley/persistence/executor.hpp"

#include <utility>

namespace parley::net {

/// Runs `job` (blocking store work) on the persistence workers, then `then(result)` on the
/// same worker thread; `then` must stay cheap and non-blocking (build JSON, respond, resume).
/// When the workers' queue is full the request is answered 503 overloaded at once instead of
/// queueing without bound.
template <class Job, class Then>
void store_call(const exchange_ptr& ex, persistence::store_executor& exec, Job job, Then then) {
  bool queued = exec.try_post([ex, job = std::move(job), then = std::move(then)]() mutable {
    // Nothing may escape into the worker thread: that would terminate the process.
    try {
      then(job());
    } catch (...) {
      ex->respond_error({api_errc::internal, "", ""});
    }
  });
  if (!queued)
    ex->respond_error({api_errc::overloaded, "The server is overloaded; retry later.", ""});
}

} // namespace parley::net
