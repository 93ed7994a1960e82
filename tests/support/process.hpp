#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

/// Child processes and scratch directories for tests.
namespace parley::test {

/// A fresh directory under $TMPDIR, removed (recursively) on destruction.
class temp_dir {
public:
  temp_dir();
  ~temp_dir();
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const std::string& path() const noexcept { return path_; }
  /// Writes `content` to path()/name and returns the full path.
  std::string write(const std::string& name, const std::string& content) const;

private:
  std::string path_;
};

/// A child process whose stdout and stderr go to a file. Killed (SIGKILL) on destruction if
/// still running, so a failing test never leaves a server behind.
class child_process {
public:
  child_process(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
                const std::string& output_file);
  ~child_process();
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  int pid() const noexcept { return pid_; }
  void signal(int signo);
  /// Waits up to `timeout` for the exit; returns the exit status (128+N if killed by signal N).
  std::optional<int> wait_exit(std::chrono::milliseconds timeout);
  /// Everything the process printed so far.
  std::string output() const;
  /// Waits until output() contains `needle` (or the process exits / timeout); returns success.
  bool wait_for_output(const std::string& needle, std::chrono::milliseconds timeout);

private:
  int pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
  std::string output_file_;
};

/// Starts `parley serve` with `config_toml` (written into dir) plus the given environment,
/// waits for its "listening" log line and returns the bound port via `port`.
std::unique_ptr<child_process> start_parley(const temp_dir& dir, const std::string& config_toml,
                                            uint16_t& port,
                                            std::map<std::string, std::string> env = {});

/// Starts the scripted fake upstream (tests/fake_upstream) on a free loopback port.
std::unique_ptr<child_process> start_fake_upstream(const temp_dir& dir, uint16_t& port);

} // namespace parley::test
