#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

/// A byte-exact HTTP upstream for tests that need what the scripted fake upstream cannot send:
/// malformed, huge or deeply nested JSON in an SSE event or an error body, broken framing.
namespace parley::test {

/// Listens on 127.0.0.1 (port 0) on its own thread. Each connection: reads one request
/// (header and Content-Length body), answers with the bytes set by respond_with() verbatim,
/// then closes the connection. Also usable as a canary: connections() counts every accept.
///
/// Thread safety: respond_with(), connections(), requests() and last_request() may be called
/// from any thread while the server thread runs. Never asserts (its thread is not the test's).
class raw_upstream {
public:
  raw_upstream();
  ~raw_upstream();
  raw_upstream(const raw_upstream&) = delete;
  raw_upstream& operator=(const raw_upstream&) = delete;

  uint16_t port() const noexcept { return port_; }
  /// "http://127.0.0.1:<port>/v1", for settings.upstream.url.
  std::string url() const;
  /// The exact bytes every following request gets (status line, headers, body).
  void respond_with(std::string bytes);
  /// Connections accepted so far.
  int connections() const noexcept { return connections_.load(); }
  /// Complete requests read so far.
  int requests() const noexcept { return requests_.load(); }
  /// The last request as received (header and body).
  std::string last_request() const;

  /// A response with `status`, `content_type` and `body`, framed by Content-Length, with
  /// Connection: close.
  static std::string response(int status, const std::string& content_type, const std::string& body);

private:
  void run();
  void serve(boost::asio::ip::tcp::socket& s);

  boost::asio::io_context ioc_;
  boost::asio::ip::tcp::acceptor acceptor_;
  uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> connections_{0};
  std::atomic<int> requests_{0};
  mutable std::mutex mu_;
  std::string reply_;
  std::string last_;
  std::thread thread_;
};

} // namespace parley::test
