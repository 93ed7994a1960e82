#include "parley/net/router.hpp"

#include <algorithm>
#include <array>
#include <stdexcept>

namespace parley::net {
namespace {

/// A path cut into segments without copying (at most 16; a longer request path never matches).
struct path_segments {
  std::array<std::string_view, 16> seg;
  std::size_t n = 0;
  bool too_long = false;
  explicit path_segments(std::string_view path) {
    std::size_t i = 0;
    while (i < path.size()) {
      if (path[i] == '/') {
        ++i;
        continue;
      }
      auto j = path.find('/', i);
      if (j == std::string_view::npos)
        j = path.size();
      if (n == seg.size()) {
        too_long = true;
        return;
      }
      seg[n++] = path.substr(i, j - i);
      i = j;
    }
  }
};

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() &&
        hex_value(s[i + 1]) >= 0 && hex_value(s[i + 2]) >= 0) {
      out += static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2]));
      i += 2;
    } else if (s[i] == '+') {
      out += ' ';
    } else {
      out += s[i];
    }
  }
  return out;
}

} // namespace

std::string_view path_of(std::string_view target) {
  auto q = target.find('?');
  return q == std::string_view::npos ? target : target.substr(0, q);
}

std::string query_param(std::string_view target, std::string_view name) {
  auto q = target.find('?');
  if (q == std::string_view::npos)
    return {};
  auto query = target.substr(q + 1);
  std::size_t i = 0;
  while (i <= query.size()) {
    auto amp = query.find('&', i);
    if (amp == std::string_view::npos)
      amp = query.size();
    auto pair = query.substr(i, amp - i);
    auto eq = pair.find('=');
    auto key = pair.substr(0, eq);
    if (percent_decode(key) == name)
      return eq == std::string_view::npos ? std::string{} : percent_decode(pair.substr(eq + 1));
    i = amp + 1;
  }
  return {};
}

void router::add(http::verb method, std::string pattern, handler h) {
  path_segments p(pattern);
  if (p.too_long)
    throw std::invalid_argument("route pattern has more than 16 segments: " + pattern);
  route r{method, pattern, {p.seg.begin(), p.seg.begin() + static_cast<std::ptrdiff_t>(p.n)}, std::move(h)};
  routes_.push_back(std::move(r));
}

namespace {
bool match_segments(const router::route& r, std::string_view path, const path_segments& p,
                    std::vector<std::pair<std::string, std::string>>* params) {
  if (p.too_long || p.n != r.segments.size())
    return false;
  // A trailing slash is a different URL ("/v1/models/" is not "/v1/models").
  if (path.size() > 1 && path.back() == '/')
    return false;
  for (std::size_t i = 0; i < p.n; ++i) {
    auto& pat = r.segments[i];
    bool capture = pat.size() > 2 && pat.front() == '{' && pat.back() == '}';
    if (!capture && pat != p.seg[i])
      return false;
  }
  if (!params)
    return true;
  params->clear();
  for (std::size_t i = 0; i < p.n; ++i) {
    auto& pat = r.segments[i];
    if (pat.size() > 2 && pat.front() == '{' && pat.back() == '}') {
      auto value = percent_decode(p.seg[i]);
      if (value.empty())
        return false;
      params->emplace_back(pat.substr(1, pat.size() - 2), std::move(value));
    }
  }
  return true;
}
} // namespace

bool router::match(const route& r, std::string_view path,
                   std::vector<std::pair<std::string, std::string>>* params) {
  return match_segments(r, path, path_segments(path), params);
}

bool router::has_path(std::string_view path) const {
  path_segments p(path);
  return std::any_of(routes_.begin(), routes_.end(),
                     [&](const route& r) { return match_segments(r, path, p, nullptr); });
}

void router::dispatch(const exchange_ptr& ex) const {
  auto path = path_of(ex->req().target());
  path_segments segs(path);
  std::string allow;
  for (auto& r : routes_) {
    if (!match_segments(r, path, segs, nullptr))
      continue;
    if (r.method == ex->req().method()) {
      std::vector<std::pair<std::string, std::string>> params;
      if (!match_segments(r, path, segs, &params))
        continue; // an empty parameter after decoding
      ex->ctx().route = r.pattern;
      ex->ctx().params = std::move(params);
      r.fn(ex);
      return;
    }
    auto name = std::string(http::to_string(r.method));
    if (allow.find(name) == std::string::npos)
      allow += (allow.empty() ? "" : ", ") + name;
  }
  if (!allow.empty()) {
    ex->add_header("Allow", allow);
    ex->respond_error({api_errc::method_not_allowed,
                       "Method " + std::string(ex->req().method_string()) +
                         " is not allowed for this URL; allowed: " + allow,
                       ""});
    return;
  }
  ex->respond_error({api_errc::unknown_route,
                     "Unknown request URL: " + std::string(ex->req().method_string()) + " " +
                       std::string(path) + ".",
                     ""});
}

} // namespace parley::net
