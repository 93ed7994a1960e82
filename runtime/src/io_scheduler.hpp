#pragma once

#include "parley/net/io_pool.hpp"

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>

namespace parley::runtime {

/// Runs CAF's actors on the io threads instead of CAF's own worker threads.
///
/// An actor made runnable by an io thread (a request's relay asking its tenant, the tenant
/// answering, an upstream call's tokens) is resumed on that same thread: the message never
/// leaves the core, and nobody sleeps or wakes. Work that becomes runnable elsewhere (the
/// store's workers, the timer thread) goes to the io contexts round robin. CAF's timers
/// (delayed sends, request timeouts) keep their own clock thread.
///
/// After the io threads have stopped for good (set_inline), actors still runnable at shutdown
/// are resumed on whichever thread makes them runnable, one at a time.
class io_scheduler_control {
public:
  virtual ~io_scheduler_control() = default;
  /// From now on, run actors on the calling threads: the io threads are gone.
  virtual void set_inline() = 0;
};

/// Installs the scheduler into `cfg` (before the actor system is built from it). `io` must
/// outlive the actor system.
void install_io_scheduler(caf::actor_system_config& cfg, net::io_pool& io);

/// The installed scheduler of `sys`, or nullptr when it runs CAF's own.
io_scheduler_control* io_scheduler_of(caf::actor_system& sys);

} // namespace parley::runtime
