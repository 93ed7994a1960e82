#pragma once

#include <chrono>
#include <thread>

/// Waiting on a condition with a deadline, instead of sleeping and hoping that something
/// happened. Test thread only: the predicate runs on the calling thread and may use anything
/// the test may (HTTP calls, metrics, logs). Let the caller assert on the answer
/// (`REQUIRE(wait_until(...))`), so that a failure names the condition that did not come.
namespace parley::test {

using steady_clock = std::chrono::steady_clock;

/// The deadline `timeout` from now.
inline steady_clock::time_point deadline_in(std::chrono::milliseconds timeout) {
  return steady_clock::now() + timeout;
}

/// Calls `pred` every `poll` until it returns true or `deadline` passes; returns whether it
/// held. The sleep between calls is the poll interval of this bounded wait, not a
/// synchronization: under load the wait only gets longer, never wrong. `pred` is asked once
/// more at the deadline, so a condition that holds by then is never missed.
template <class Predicate>
bool wait_until(steady_clock::time_point deadline, Predicate&& pred,
                std::chrono::milliseconds poll = std::chrono::milliseconds(20)) {
  while (steady_clock::now() < deadline) {
    if (pred())
      return true;
    std::this_thread::sleep_for(poll);
  }
  return static_cast<bool>(pred());
}

} // namespace parley::test
