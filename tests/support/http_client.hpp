#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>

#include <chrono>
#include <map>
#include <optional>
#include <string>

/// A small synchronous HTTP/1.1 client for tests (blocking is fine on a test thread).
namespace parley::test {

namespace http = boost::beast::http;

struct http_reply {
  int status = 0;
  std::string body;
  http::response<http::string_body> raw;
  std::string header(const std::string& name) const {
    auto it = raw.find(name);
    return it == raw.end() ? std::string{} : std::string(it->value());
  }
};

/// One keep-alive connection to 127.0.0.1:port. Every operation has a 10 s timeout.
class http_client {
public:
  explicit http_client(uint16_t port);
  ~http_client();

  http_reply request(http::verb method, const std::string& target, const std::string& body = {},
                     const std::map<std::string, std::string>& headers = {});
  http_reply get(const std::string& target, const std::map<std::string, std::string>& headers = {}) {
    return request(http::verb::get, target, {}, headers);
  }
  http_reply post(const std::string& target, const std::string& body,
                  const std::map<std::string, std::string>& headers = {}) {
    return request(http::verb::post, target, body, headers);
  }

  /// Sends raw bytes (for malformed or partial requests).
  void send_raw(const std::string& bytes);
  /// Reads one response (after send_raw).
  http_reply read_reply();
  /// Reads whatever bytes arrive next (raw, for observing streams as they flow).
  std::string read_some_raw();
  /// True when the server closed the connection (reads EOF within the timeout).
  bool closed_by_peer(std::chrono::milliseconds wait = std::chrono::milliseconds(2000));

private:
  boost::asio::io_context ioc_;
  boost::beast::tcp_stream stream_;
  boost::beast::flat_buffer buffer_;
  uint16_t port_;
};

/// One request on a fresh connection.
http_reply fetch(uint16_t port, http::verb method, const std::string& target,
                 const std::string& body = {},
                 const std::map<std::string, std::string>& headers = {});

/// Sends POST /v1/chat/completions with `body` and the bearer `key` as raw bytes, without
/// waiting for the answer (for reading a stream as it flows, or leaving in the middle).
void send_chat_raw(http_client& c, const std::string& key, const std::string& body);

/// Reads raw bytes until `marker` has arrived; returns everything read.
std::string read_until(http_client& c, const std::string& marker, std::string seen = {});

/// True when a TCP connection to 127.0.0.1:port is refused.
bool connection_refused(uint16_t port);

} // namespace parley::test
