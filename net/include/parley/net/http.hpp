#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

/// Short names for the Beast/Asio types used across net. `asio`, not `net`: caf::net exists.
namespace parley::net {

namespace beast = boost::beast;
namespace http = boost::beast::http;
namespace asio = boost::asio;

using request = http::request<http::string_body>;
using response = http::response<http::string_body>;
using strand = asio::strand<asio::io_context::executor_type>;

} // namespace parley::net
