#include "parley/net/middlewares.hpp"

#include "parley/config/cidr.hpp"

#include <algorithm>
#include <cctype>

namespace parley::net {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

/// The address of a Forwarded `for=` node: unquoted, without brackets or port; "" when it is
/// not an IP address ("unknown", an obfuscated identifier).
std::string forwarded_node(std::string_view v) {
  v = trim(v);
  if (v.size() >= 2 && v.front() == '"' && v.back() == '"')
    v = v.substr(1, v.size() - 2);
  if (!v.empty() && v.front() == '[') { // "[2001:db8::1]:4711"
    auto close = v.find(']');
    if (close == std::string_view::npos)
      return {};
    v = v.substr(1, close - 1);
  } else if (std::count(v.begin(), v.end(), ':') == 1) { // "192.0.2.60:4711"
    v = v.substr(0, v.find(':'));
  }
  std::string s(v);
  return config::parse_address(s) ? s : std::string();
}

/// The hops a request passed, oldest first: from Forwarded (RFC 7239) if present, else from
/// X-Forwarded-For. Every header line counts, in order.
std::vector<std::string> hops(const request& req) {
  std::vector<std::string> out;
  bool forwarded = false;
  for (auto& f : req) {
    if (f.name() != http::field::forwarded)
      continue;
    forwarded = true;
    auto v = std::string_view(f.value().data(), f.value().size());
    std::size_t i = 0;
    while (i <= v.size()) {
      auto comma = v.find(',', i);
      auto element = v.substr(i, comma == std::string_view::npos ? v.npos : comma - i);
      std::string node;
      std::size_t j = 0;
      while (j <= element.size()) {
        auto semi = element.find(';', j);
        auto pair = trim(element.substr(j, semi == std::string_view::npos ? element.npos : semi - j));
        if (pair.size() > 4 && beast::iequals(pair.substr(0, 4), "for="))
          node = forwarded_node(pair.substr(4));
        if (semi == std::string_view::npos)
          break;
        j = semi + 1;
      }
      out.push_back(node); // "" = not an address: stops the walk there
      if (comma == std::string_view::npos)
        break;
      i = comma + 1;
    }
  }
  if (forwarded)
    return out;
  for (auto& f : req) {
    if (!beast::iequals(f.name_string(), "x-forwarded-for"))
      continue;
    auto v = std::string_view(f.value().data(), f.value().size());
    std::size_t i = 0;
    while (i <= v.size()) {
      auto comma = v.find(',', i);
      auto item = trim(v.substr(i, comma == std::string_view::npos ? v.npos : comma - i));
      std::string s(item);
      out.push_back(config::parse_address(s) ? s : std::string());
      if (comma == std::string_view::npos)
        break;
      i = comma + 1;
    }
  }
  return out;
}

class client_address_filter final : public middleware {
public:
  explicit client_address_filter(std::vector<config::cidr> trusted) : trusted_(std::move(trusted)) {}

  const char* name() const noexcept override { return "client_address"; }

  filter_status on_request(const exchange_ptr& ex) override {
    auto& addr = ex->ctx().client_address;
    if (trusted_.empty() || !is_trusted(addr))
      return filter_status::proceed; // headers from anyone else are the client's own claims
    // Walk from the nearest hop back: each trusted proxy vouches for the one before it; the
    // first untrusted address is the client. A malformed entry stops the walk (the last
    // trusted proxy's peer stands).
    auto h = hops(ex->req());
    for (auto it = h.rbegin(); it != h.rend(); ++it) {
      if (it->empty())
        break;
      addr = *it;
      if (!is_trusted(addr))
        break;
    }
    return filter_status::proceed;
  }

private:
  bool is_trusted(const std::string& a) const {
    return std::any_of(trusted_.begin(), trusted_.end(),
                       [&](const config::cidr& c) { return c.contains(a); });
  }
  std::vector<config::cidr> trusted_;
};

} // namespace

std::unique_ptr<middleware> make_client_address(const std::vector<std::string>& trusted_proxies) {
  std::vector<config::cidr> blocks;
  for (auto& p : trusted_proxies)
    if (auto c = config::cidr::parse(p))
      blocks.push_back(*c);
    else
      throw std::invalid_argument("not an address or CIDR block: " + p);
  return std::make_unique<client_address_filter>(std::move(blocks));
}

} // namespace parley::net
