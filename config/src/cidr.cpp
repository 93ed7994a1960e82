#include "parley/config/cidr.hpp"

#include <arpa/inet.h>

#include <cstring>
#include <string>

namespace parley::config {

std::optional<std::array<uint8_t, 16>> parse_address(std::string_view text) {
  if (text.empty() || text.size() > 64)
    return std::nullopt;
  std::string s(text);
  // "[::1]" as Forwarded writes IPv6 nodes.
  if (s.size() > 2 && s.front() == '[' && s.back() == ']')
    s = s.substr(1, s.size() - 2);
  std::array<uint8_t, 16> out{};
  in_addr v4{};
  if (inet_pton(AF_INET, s.c_str(), &v4) == 1) {
    out[10] = 0xff;
    out[11] = 0xff;
    std::memcpy(out.data() + 12, &v4, 4);
    return out;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, s.c_str(), &v6) == 1) {
    std::memcpy(out.data(), &v6, 16);
    return out;
  }
  return std::nullopt;
}

std::optional<cidr> cidr::parse(std::string_view text) {
  auto slash = text.find('/');
  auto addr = parse_address(text.substr(0, slash));
  if (!addr)
    return std::nullopt;
  bool v4 = text.substr(0, slash).find(':') == std::string_view::npos;
  int max_len = v4 ? 32 : 128;
  int len = max_len;
  if (slash != std::string_view::npos) {
    auto digits = text.substr(slash + 1);
    if (digits.empty() || digits.size() > 3)
      return std::nullopt;
    len = 0;
    for (char c : digits) {
      if (c < '0' || c > '9')
        return std::nullopt;
      len = len * 10 + (c - '0');
    }
    if (len > max_len)
      return std::nullopt;
  }
  cidr c;
  c.bytes_ = *addr;
  c.prefix_ = v4 ? 96 + len : len;
  return c;
}

bool cidr::contains(std::string_view address) const {
  auto a = parse_address(address);
  if (!a)
    return false;
  int bits = prefix_;
  for (std::size_t i = 0; i < 16 && bits > 0; ++i, bits -= 8) {
    uint8_t mask = bits >= 8 ? 0xff : static_cast<uint8_t>(0xff << (8 - bits));
    if (((*a)[i] & mask) != (bytes_[i] & mask))
      return false;
  }
  return true;
}

} // namespace parley::config
