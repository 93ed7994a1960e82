#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

/// A plain TCP connection to 127.0.0.1 for sending bytes no HTTP library would send, with
/// reads that always end (by the peer closing or a deadline), so a server that keeps a
/// connection open makes a test fail instead of hang. Test thread only.
namespace parley::test {

class raw_connection {
public:
  explicit raw_connection(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    ::inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    connected_ = fd_ >= 0 && ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    timeval tv{0, 100000}; // each recv waits at most 100 ms; drain() loops to its deadline
    if (fd_ >= 0)
      ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~raw_connection() {
    if (fd_ >= 0)
      ::close(fd_);
  }
  raw_connection(const raw_connection&) = delete;
  raw_connection& operator=(const raw_connection&) = delete;

  bool connected() const noexcept { return connected_; }

  /// Sends every byte; false when the peer closed or reset first (not an error for tests of
  /// hostile input: the server may stop reading garbage early).
  bool send(const std::string& bytes) {
    std::size_t off = 0;
    while (off < bytes.size()) {
      auto n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return false;
      off += static_cast<std::size_t>(n);
    }
    return true;
  }

  /// No more bytes from us (FIN); the server still answers what it read.
  void half_close() { ::shutdown(fd_, SHUT_WR); }

  /// Closes with RST (SO_LINGER 0): a client that vanishes mid-request.
  void reset() {
    linger l{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    ::close(fd_);
    fd_ = -1;
  }

  /// Reads until the peer closes (EOF or reset: `closed` = true) or `wait` passes.
  std::string drain(std::chrono::milliseconds wait, bool* closed = nullptr) {
    std::string out;
    bool ended = false;
    auto deadline = std::chrono::steady_clock::now() + wait;
    char buf[16384];
    while (!ended) {
      auto n = ::recv(fd_, buf, sizeof buf, 0);
      if (n > 0) {
        out.append(buf, static_cast<std::size_t>(n));
        continue;
      }
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        ended = true;
        break;
      }
      if (std::chrono::steady_clock::now() >= deadline)
        break;
    }
    if (closed)
      *closed = ended;
    return out;
  }

  /// The status of every HTTP response in `raw` (each "HTTP/1.x NNN "; a response may follow
  /// the previous body directly, so not only at line starts).
  static std::vector<int> statuses(const std::string& raw) {
    std::vector<int> out;
    std::size_t pos = 0;
    auto digit = [&](std::size_t i) { return raw[i] >= '0' && raw[i] <= '9'; };
    while ((pos = raw.find("HTTP/1.", pos)) != std::string::npos) {
      if (pos + 13 <= raw.size() && raw[pos + 8] == ' ' && digit(pos + 9) && digit(pos + 10) && digit(pos + 11) &&
          raw[pos + 12] == ' ')
        out.push_back(std::atoi(raw.substr(pos + 9, 3).c_str()));
      pos += 7;
    }
    return out;
  }

private:
  int fd_ = -1;
  bool connected_ = false;
};

} // namespace parley::test
