#include "parley/net/router.hpp"

#include <algorithm>

namespace parley::net {
namespace {

std::vector<std::string> split_path(std::string_view path) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i < path.size()) {
    if (path[i] == '/') {
      ++i;
      continue;
    }
    auto j = path.find('/', i);
    if (j == std::string_view::npos)
      j = path.size();
    out.emplace_back(path.substr(i, j - i));
    i = j;
  }
  return out;
}

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
  route r{method, pattern, split_path(pattern), std::move(h)};
  routes_.push_back(std::move(r));
}

bool router::match(const route& r, std::string_view path,
                   std::vector<std::pair<std::string, std::string>>* params) {
  auto segs = split_path(path);
  if (segs.size() != r.segments.size())
    return false;
  // A trailing slash is a different URL ("/v1/models/" is not "/v1/models").
  if (path.size() > 1 && path.back() == '/')
    return false;
  std::vector<std::pair<std::string, std::string>> captured;
  for (std::size_t i = 0; i < segs.size(); ++i) {
    auto& pat = r.segments[i];
    if (pat.size() > 2 && pat.front() == '{' && pat.back() == '}') {
      auto value = percent_decode(segs[i]);
      if (value.empty())
        return false;
      captured.emplace_back(pat.substr(1, pat.size() - 2), std::move(value));
    } else if (pat != segs[i]) {
      return false;
    }
  }
  if (params)
    *params = std::move(captured);
  return true;
}

bool router::has_path(std::string_view path) const {
  return std::any_of(routes_.begin(), routes_.end(),
                     [&](const route& r) { return match(r, path, nullptr); });
}

void router::dispatch(const exchange_ptr& ex) const {
  auto path = path_of(ex->req().target());
  std::string allow;
  for (auto& r : routes_) {
    std::vector<std::pair<std::string, std::string>> params;
    if (!match(r, path, &params))
      continue;
    if (r.method == ex->req().method()) {
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
