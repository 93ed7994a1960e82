#include "support/pg_cluster.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <pqxx/pqxx>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace parley::test {
namespace {

/// A loopback port nobody listens on now (bound once by the kernel's choice, then released).
uint16_t free_loopback_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = 0;
  ::inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  socklen_t len = sizeof a;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0)
      ::close(fd);
    throw std::runtime_error("no free loopback port for PostgreSQL");
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

bool is_root() { return ::geteuid() == 0; }

} // namespace

pg_cluster::pg_cluster() {
  for (auto* tool : {"initdb", "pg_ctl", "postgres"})
    if (!std::filesystem::exists(std::string(bin_dir) + "/" + tool))
      throw std::runtime_error(std::string("PostgreSQL 15 is not installed: no ") + bin_dir + "/" + tool +
                               " (run scripts/setup)");
  auto base = (std::filesystem::temp_directory_path() / "parley-pg-XXXXXX").string();
  if (!::mkdtemp(base.data()))
    throw std::runtime_error("mkdtemp failed");
  dir_ = base;
  try {
    std::filesystem::permissions(dir_, std::filesystem::perms(0755));
    if (is_root()) {
      auto* pw = ::getpwnam("postgres");
      if (!pw || ::chown(dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0)
        throw std::runtime_error("running as root needs a `postgres` user to own " + dir_);
    }
    port_ = free_loopback_port();
    run({std::string(bin_dir) + "/initdb", "-D", dir_ + "/data", "-U", "postgres", "--auth=trust", "-E", "UTF8",
         "--no-instructions"},
        std::chrono::seconds(120), "initdb");
    start();
    pqxx::connection c("postgresql://postgres@127.0.0.1:" + std::to_string(port_) + "/postgres");
    pqxx::nontransaction n(c);
    n.exec("CREATE DATABASE parley");
  } catch (...) {
    remove(); // no destructor runs for a constructor that throws
    throw;
  }
}

pg_cluster::~pg_cluster() { remove(); }

void pg_cluster::remove() noexcept {
  if (dir_.empty())
    return;
  try {
    if (std::filesystem::exists(dir_ + "/data/postmaster.pid"))
      run({std::string(bin_dir) + "/pg_ctl", "-D", dir_ + "/data", "-m", "immediate", "-w", "stop"},
          std::chrono::seconds(60), "pg_ctl stop");
  } catch (...) {
    // Still remove the directory: a postmaster whose lock file is gone shuts itself down.
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

void pg_cluster::stop_immediate() {
  run({std::string(bin_dir) + "/pg_ctl", "-D", dir_ + "/data", "-m", "immediate", "-w", "stop"},
      std::chrono::seconds(60), "pg_ctl stop");
  running_ = false;
}

void pg_cluster::start() {
  // fsync off: a test cluster need not survive a power cut (an immediate stop it survives).
  run({std::string(bin_dir) + "/pg_ctl", "-D", dir_ + "/data", "-l", dir_ + "/postgres.log", "-w", "-t", "60",
       "start", "-o",
       "-p " + std::to_string(port_) + " -k " + dir_ +
         " -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"},
      std::chrono::seconds(90), "pg_ctl start");
  running_ = true;
}

std::string pg_cluster::dsn() const {
  return "postgresql://postgres@127.0.0.1:" + std::to_string(port_) + "/parley";
}

std::string pg_cluster::log() const {
  std::ifstream in(dir_ + "/postgres.log");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void pg_cluster::run(const std::vector<std::string>& argv, std::chrono::seconds bound, const std::string& what) {
  std::vector<std::string> cmd;
  if (is_root())
    cmd = {"/usr/sbin/runuser", "-u", "postgres", "--"};
  cmd.insert(cmd.end(), argv.begin(), argv.end());
  auto out = scratch_.path() + "/" + what.substr(what.find(' ') + 1) + ".out";
  child_process p(cmd, {}, out);
  auto rc = p.wait_exit(bound);
  if (!rc || *rc != 0)
    throw std::runtime_error(what + (rc ? " failed with status " + std::to_string(*rc) : " timed out") +
                             ":\n" + p.output() + "\n" + log());
}

} // namespace parley::test
