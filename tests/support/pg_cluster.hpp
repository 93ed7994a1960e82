#pragma once

#include "support/process.hpp"

#include <cstdint>
#include <string>

/// A throwaway PostgreSQL 15 cluster that a test owns and may stop and start again: initdb in
/// a fresh directory, a free loopback port, fsync off. Run as the `postgres` user when the
/// test runs as root (initdb refuses root), as scripts/test does. Stopped (immediate) and its
/// directory removed on destruction, also when the test fails.
///
/// Thread safety: one test thread owns it. Throws std::runtime_error when PostgreSQL's
/// binaries are missing or a command fails: a [pg] test never passes without a real cluster.
namespace parley::test {

class pg_cluster {
public:
  /// initdb, start, and create the database `parley`.
  pg_cluster();
  ~pg_cluster();
  pg_cluster(const pg_cluster&) = delete;
  pg_cluster& operator=(const pg_cluster&) = delete;

  /// Where PostgreSQL 15's binaries are looked for.
  static constexpr const char* bin_dir = "/usr/lib/postgresql/15/bin";

  /// `pg_ctl stop -m immediate`: every backend dies at once, as in a crash.
  void stop_immediate();
  /// Starts the cluster again on the same port and data (waits until it accepts connections).
  void start();
  bool running() const noexcept { return running_; }

  uint16_t port() const noexcept { return port_; }
  /// postgresql://postgres@127.0.0.1:PORT/parley
  std::string dsn() const;
  /// The server's log so far (for failure messages).
  std::string log() const;

private:
  /// Stops the cluster if it runs and removes its directory.
  void remove() noexcept;
  /// Runs a PostgreSQL tool (as `postgres` when root) and waits up to `bound` for it.
  void run(const std::vector<std::string>& argv, std::chrono::seconds bound, const std::string& what);

  temp_dir scratch_; ///< the tools' own output files (root-owned)
  std::string dir_;  ///< the cluster's directory (owned by postgres when root)
  uint16_t port_ = 0;
  bool running_ = false;
};

} // namespace parley::test
