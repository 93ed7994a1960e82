// The listener with TLS on: HTTPS with the configured certificate, modern protocols only, and
// nothing that is not TLS gets an HTTP answer.
#include "support/http_client.hpp"
#include "support/server_fixture.hpp"
#include "support/tls_cert.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <catch2/catch.hpp>
#include <openssl/ssl.h>

using namespace parley::test;
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;

namespace {

tls_files tls_for_test;

void use_tls(parley::config::settings& s) {
  s.http.tls_cert_file = tls_for_test.cert;
  s.http.tls_key_file = tls_for_test.key;
}

/// GET `target` over TLS, verifying the server against `ca_file` (max protocol `max_version`).
/// Returns the status, or -1 when the handshake failed.
int https_get(uint16_t port, const std::string& ca_file, const std::string& target,
              int max_version = 0) {
  asio::io_context ioc;
  ssl::context ctx(ssl::context::tls_client);
  ctx.load_verify_file(ca_file);
  ctx.set_verify_mode(ssl::verify_peer);
  if (max_version) {
    SSL_CTX_set_min_proto_version(ctx.native_handle(), 0);
    SSL_CTX_set_max_proto_version(ctx.native_handle(), max_version);
    SSL_CTX_set_security_level(ctx.native_handle(), 0); // let the client offer old protocols
  }
  beast::ssl_stream<beast::tcp_stream> stream(ioc, ctx);
  beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(10));
  beast::get_lowest_layer(stream).connect({asio::ip::make_address("127.0.0.1"), port});
  SSL_set_tlsext_host_name(stream.native_handle(), "localhost");
  stream.set_verify_callback(ssl::host_name_verification("localhost"));
  beast::error_code ec;
  stream.handshake(ssl::stream_base::client, ec);
  if (ec)
    return -1;
  http::request<http::empty_body> req{http::verb::get, target, 11};
  req.set(http::field::host, "localhost");
  http::write(stream, req);
  beast::flat_buffer buf;
  http::response<http::string_body> res;
  http::read(stream, buf, res);
  return res.result_int();
}

/// Reads whatever the server sends (a TLS alert, say) until it closes: true when it closed
/// (EOF or reset) before the client's 10 s read timeout, and no HTTP answer came.
bool closed_without_http(http_client& c) {
  std::string seen;
  for (;;) {
    try {
      seen += c.read_some_raw();
    } catch (const boost::system::system_error& e) {
      return (e.code() == asio::error::eof || e.code() == asio::error::connection_reset) &&
             seen.find("HTTP/1.1") == std::string::npos;
    }
  }
}

} // namespace

TEST_CASE("the listener speaks HTTPS with its certificate and refuses plain HTTP and TLS 1.1",
          "[net][tls][integration]") {
  temp_dir certs;
  tls_for_test = make_self_signed(certs.path());
  server_fixture srv(use_tls);

  CHECK(https_get(srv.port(), tls_for_test.cert, "/healthz") == 200);
  CHECK(https_get(srv.port(), tls_for_test.cert, "/healthz", TLS1_2_VERSION) == 200);
  // A client that speaks at most TLS 1.1 does not get through the handshake.
  CHECK(https_get(srv.port(), tls_for_test.cert, "/healthz", TLS1_1_VERSION) == -1);

  // Plain HTTP on the TLS port: no HTTP answer, the connection is closed.
  {
    http_client c(srv.port());
    c.send_raw("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK(closed_without_http(c));
  }
  // Garbage in place of a ClientHello: the node goes on serving.
  {
    http_client c(srv.port());
    c.send_raw(std::string("\x16\x03\x01\x00\x05garbage-not-a-hello", 24));
    CHECK(closed_without_http(c));
  }
  CHECK(https_get(srv.port(), tls_for_test.cert, "/healthz") == 200);
}
