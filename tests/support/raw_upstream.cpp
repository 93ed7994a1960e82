#include "support/raw_upstream.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <cctype>

namespace parley::test {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

raw_upstream::raw_upstream() : acceptor_(ioc_) {
  tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), 0);
  acceptor_.open(ep.protocol());
  acceptor_.set_option(asio::socket_base::reuse_address(true));
  acceptor_.bind(ep);
  acceptor_.listen();
  port_ = acceptor_.local_endpoint().port();
  reply_ = response(500, "application/json", "{}");
  thread_ = std::thread([this] { run(); });
}

raw_upstream::~raw_upstream() {
  stopping_ = true;
  // Wake the blocking accept with a connection of our own; the loop sees stopping_ and ends.
  boost::system::error_code ec;
  asio::io_context ioc;
  tcp::socket s(ioc);
  s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port_), ec);
  thread_.join();
}

std::string raw_upstream::url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/v1"; }

void raw_upstream::respond_with(std::string bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  reply_ = std::move(bytes);
}

std::string raw_upstream::last_request() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_;
}

std::string raw_upstream::response(int status, const std::string& content_type, const std::string& body) {
  return "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Type: " + content_type +
         "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
}

void raw_upstream::run() {
  for (;;) {
    tcp::socket s(ioc_);
    boost::system::error_code ec;
    acceptor_.accept(s, ec);
    if (stopping_)
      return;
    if (ec)
      continue;
    connections_.fetch_add(1);
    serve(s);
  }
}

void raw_upstream::serve(tcp::socket& s) {
  boost::system::error_code ec;
  std::string in;
  char buf[8192];
  std::size_t header_end = std::string::npos;
  // The header, with a bound so a broken client cannot make us read forever.
  while ((header_end = in.find("\r\n\r\n")) == std::string::npos && in.size() < (1u << 20)) {
    auto n = s.read_some(asio::buffer(buf), ec);
    if (ec)
      return;
    in.append(buf, n);
  }
  if (header_end == std::string::npos)
    return;
  std::size_t length = 0;
  std::string lower = in.substr(0, header_end);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (auto p = lower.find("\r\ncontent-length:"); p != std::string::npos)
    length = std::strtoul(lower.c_str() + p + 17, nullptr, 10);
  while (in.size() < header_end + 4 + length) {
    auto n = s.read_some(asio::buffer(buf), ec);
    if (ec)
      return;
    in.append(buf, n);
  }
  std::string reply;
  {
    std::lock_guard<std::mutex> lock(mu_);
    last_ = in;
    reply = reply_;
  }
  requests_.fetch_add(1);
  asio::write(s, asio::buffer(reply), ec);
  // The whole request was read, so closing sends FIN (not RST) after the reply.
  s.shutdown(tcp::socket::shutdown_send, ec);
  s.close(ec);
}

} // namespace parley::test
