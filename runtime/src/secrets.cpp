#include "parley/runtime/secrets.hpp"

#include "parley/tenants/api_key.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace parley::runtime {

std::string load_or_create_secret(const std::string& path) {
  namespace fs = std::filesystem;
  fs::path p(path);
  if (p.has_parent_path())
    fs::create_directories(p.parent_path());
  // O_EXCL: two processes starting at once cannot both write a different secret.
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0) {
    auto secret = tenants::random_token(32);
    auto line = secret + "\n";
    bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) &&
              ::fsync(fd) == 0;
    ::close(fd);
    if (!ok)
      throw std::runtime_error("cannot write secret file " + path + ": " + std::strerror(errno));
    return secret;
  }
  if (errno != EEXIST)
    throw std::runtime_error("cannot create secret file " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0)
    throw std::runtime_error("secret file " + path +
                             " is readable by group or others; chmod 600 it");
  std::ifstream in(path);
  std::string secret;
  std::getline(in, secret);
  if (!in && !in.eof())
    throw std::runtime_error("cannot read secret file " + path);
  if (secret.size() < 32)
    throw std::runtime_error("secret file " + path + " holds fewer than 32 characters");
  return secret;
}

} // namespace parley::runtime
