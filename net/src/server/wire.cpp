#include "wire.hpp"

namespace parley::net::wire {
namespace http = boost::beast::http;

namespace {
void append_version(std::string& out, unsigned version) {
  out += "HTTP/";
  out += static_cast<char>('0' + version / 10);
  out += '.';
  out += static_cast<char>('0' + version % 10);
}

void append_fields(std::string& out, const http::fields& f) {
  for (auto& field : f) {
    out += field.name_string();
    out += ": ";
    out += field.value();
    out += "\r\n";
  }
  out += "\r\n";
}
} // namespace

void append_head(std::string& out, const http::response_header<>& h) {
  append_version(out, h.version());
  auto code = h.result_int();
  char digits[3] = {static_cast<char>('0' + code / 100 % 10), static_cast<char>('0' + code / 10 % 10),
                    static_cast<char>('0' + code % 10)};
  out += ' ';
  out.append(digits, 3);
  out += ' ';
  auto reason = h.reason();
  out += reason.empty() ? http::obsolete_reason(h.result()) : reason;
  out += "\r\n";
  append_fields(out, h);
}

void append_chunk(std::string& out, std::string_view data) {
  if (data.empty())
    return;
  static constexpr char hex[] = "0123456789abcdef";
  char digits[16];
  int n = 0;
  for (auto size = data.size(); size != 0; size >>= 4)
    digits[n++] = hex[size & 15];
  while (n > 0)
    out += digits[--n];
  out += "\r\n";
  out.append(data.data(), data.size());
  out += "\r\n";
}

} // namespace parley::net::wire
