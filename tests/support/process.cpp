#include "support/process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace parley::test {

temp_dir::temp_dir() {
  auto base = std::filesystem::temp_directory_path() / "parley-test-XXXXXX";
  std::string tmpl = base.string();
  if (!::mkdtemp(tmpl.data()))
    throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

temp_dir::~temp_dir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string temp_dir::write(const std::string& name, const std::string& content) const {
  auto p = path_ + "/" + name;
  std::ofstream out(p);
  out << content;
  return p;
}

child_process::child_process(const std::vector<std::string>& argv,
                             const std::map<std::string, std::string>& env,
                             const std::string& output_file)
  : output_file_(output_file) {
  int fd = ::open(output_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    throw std::runtime_error("cannot open " + output_file);
  pid_ = ::fork();
  if (pid_ < 0)
    throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    for (auto& [k, v] : env)
      ::setenv(k.c_str(), v.c_str(), 1);
    std::vector<char*> args;
    for (auto& a : argv)
      args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(fd);
}

child_process::~child_process() {
  if (pid_ > 0 && !reaped_) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status_, 0);
  }
}

void child_process::signal(int signo) { ::kill(pid_, signo); }

std::optional<int> child_process::wait_exit(std::chrono::milliseconds timeout) {
  if (reaped_)
    return WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  do {
    int st = 0;
    auto r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      status_ = st;
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  } while (std::chrono::steady_clock::now() < deadline);
  return std::nullopt;
}

std::string child_process::output() const {
  std::ifstream in(output_file_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool child_process::wait_for_output(const std::string& needle, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  do {
    if (output().find(needle) != std::string::npos)
      return true;
    if (!reaped_) {
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        reaped_ = true;
        status_ = st;
      }
    }
    if (reaped_)
      return output().find(needle) != std::string::npos;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  } while (std::chrono::steady_clock::now() < deadline);
  return false;
}

std::unique_ptr<child_process> start_parley(const temp_dir& dir, const std::string& config_toml,
                                            uint16_t& port,
                                            std::map<std::string, std::string> env) {
  auto config = dir.write("parley.toml", config_toml);
  auto proc = std::make_unique<child_process>(
    std::vector<std::string>{PARLEY_BINARY, "serve", "--config", config}, env,
    dir.path() + "/parley.out");
  if (!proc->wait_for_output("\"msg\":\"listening\"", std::chrono::seconds(20)))
    throw std::runtime_error("parley did not start; output:\n" + proc->output());
  std::smatch m;
  auto out = proc->output();
  static const std::regex port_re("\"msg\":\"listening\".*?\"port\":([0-9]+)");
  if (!std::regex_search(out, m, port_re))
    throw std::runtime_error("no port in output:\n" + out);
  port = static_cast<uint16_t>(std::stoi(m[1].str()));
  return proc;
}

std::unique_ptr<child_process> start_fake_upstream(const temp_dir& dir, uint16_t& port) {
  auto proc = std::make_unique<child_process>(
    std::vector<std::string>{PARLEY_FAKE_UPSTREAM, "--listen", "127.0.0.1:0", "--max-seconds", "300"},
    std::map<std::string, std::string>{}, dir.path() + "/fake-upstream.out");
  if (!proc->wait_for_output("\"listening\"", std::chrono::seconds(10)))
    throw std::runtime_error("fake upstream did not start: " + proc->output());
  static const std::regex re("\"listening\":([0-9]+)");
  std::smatch m;
  auto out = proc->output();
  if (!std::regex_search(out, m, re))
    throw std::runtime_error("no port from fake upstream: " + out);
  port = static_cast<uint16_t>(std::stoi(m[1].str()));
  return proc;
}

} // namespace parley::test
