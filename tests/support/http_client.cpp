#include "support/http_client.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_to_string.hpp>

namespace parley::test {

namespace asio = boost::asio;
namespace beast = boost::beast;

http_client::http_client(uint16_t port) : stream_(ioc_), port_(port) {
  stream_.expires_after(std::chrono::seconds(10));
  stream_.connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
}

http_client::~http_client() {
  beast::error_code ec;
  stream_.socket().shutdown(asio::ip::tcp::socket::shutdown_both, ec);
}

http_reply http_client::request(http::verb method, const std::string& target,
                                const std::string& body,
                                const std::map<std::string, std::string>& headers) {
  http::request<http::string_body> req{method, target, 11};
  req.set(http::field::host, "127.0.0.1:" + std::to_string(port_));
  req.keep_alive(true);
  for (auto& [k, v] : headers)
    req.set(k, v);
  if (!body.empty() || method == http::verb::post || method == http::verb::patch) {
    if (req.find(http::field::content_type) == req.end())
      req.set(http::field::content_type, "application/json");
    req.body() = body;
    req.prepare_payload();
  }
  stream_.expires_after(std::chrono::seconds(10));
  http::write(stream_, req);
  return read_reply();
}

void http_client::send_raw(const std::string& bytes) {
  stream_.expires_after(std::chrono::seconds(10));
  asio::write(stream_, asio::buffer(bytes));
}

http_reply http_client::read_reply() {
  http::response_parser<http::string_body> parser;
  parser.body_limit(64u << 20);
  stream_.expires_after(std::chrono::seconds(10));
  http::read(stream_, buffer_, parser);
  http_reply r;
  r.raw = parser.release();
  r.status = r.raw.result_int();
  r.body = r.raw.body();
  return r;
}

std::string http_client::read_some_raw() {
  std::string out;
  if (buffer_.size() > 0) {
    out = beast::buffers_to_string(buffer_.data());
    buffer_.consume(buffer_.size());
    return out;
  }
  char buf[4096];
  stream_.expires_after(std::chrono::seconds(10));
  auto n = stream_.read_some(asio::buffer(buf));
  return std::string(buf, n);
}

bool http_client::closed_by_peer(std::chrono::milliseconds wait) {
  stream_.expires_after(wait);
  char c;
  beast::error_code ec;
  stream_.read_some(asio::buffer(&c, 1), ec);
  return ec == asio::error::eof || ec == asio::error::connection_reset;
}

http_reply fetch(uint16_t port, http::verb method, const std::string& target,
                 const std::string& body, const std::map<std::string, std::string>& headers) {
  http_client c(port);
  return c.request(method, target, body, headers);
}

void send_chat_raw(http_client& c, const std::string& key, const std::string& body) {
  c.send_raw("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key +
             "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
             "\r\n\r\n" + body);
}

std::string read_until(http_client& c, const std::string& marker, std::string seen) {
  while (seen.find(marker) == std::string::npos)
    seen += c.read_some_raw();
  return seen;
}

bool connection_refused(uint16_t port) {
  asio::io_context ioc;
  asio::ip::tcp::socket s(ioc);
  beast::error_code ec;
  s.connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), port), ec);
  return ec == asio::error::connection_refused;
}

} // namespace parley::test
