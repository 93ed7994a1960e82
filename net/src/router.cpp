#include "parley/net/router.hpp"

#include "parley/net/json_body.hpp"

#include <algorithm>
#include <array>
#include <stdexcept>

namespace parley::net {
namespace {

/// A canonical path cut into segments without copying (at most 16; a longer request path
/// never matches). "/" has no segment.
struct path_segments {
  std::array<std::string_view, 16> seg;
  std::size_t n = 0;
  bool too_long = false;
  explicit path_segments(std::string_view path) {
    if (path.size() <= 1)
      return;
    std::size_t i = 1;
    for (;;) {
      auto j = path.find('/', i);
      if (j == std::string_view::npos)
        j = path.size();
      if (n == seg.size()) {
        too_long = true;
        return;
      }
      seg[n++] = path.substr(i, j - i);
      if (j == path.size())
        return;
      i = j + 1;
    }
  }
};

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/// Decodes %XX escapes; `plus_is_space` for query strings (form encoding), not paths.
std::string percent_decode(std::string_view s, bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() &&
        hex_value(s[i + 1]) >= 0 && hex_value(s[i + 2]) >= 0) {
      out += static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2]));
      i += 2;
    } else if (plus_is_space && s[i] == '+') {
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
    if (percent_decode(key, true) == name)
      return eq == std::string_view::npos ? std::string{} : percent_decode(pair.substr(eq + 1), true);
    i = amp + 1;
  }
  return {};
}

const char* to_string(access::kind k) noexcept {
  switch (k) {
    case access::kind::anyone: return "anyone";
    case access::kind::anyone_or_admin: return "anyone_or_admin";
    case access::kind::tenant: return "tenant";
    case access::kind::admin: return "admin";
    case access::kind::metrics: return "metrics";
  }
  return "?";
}

const char* canonical_path_error(std::string_view target) noexcept {
  auto path = path_of(target);
  if (path.empty() || path.front() != '/')
    return "The request target must be a path starting with '/'.";
  for (std::size_t i = 0; i < target.size(); ++i) {
    auto c = static_cast<unsigned char>(target[i]);
    if (c <= 0x20 || c >= 0x7f || c == '\\' || c == '#')
      return "The request target contains a character that is not allowed.";
  }
  if (path == "/")
    return nullptr;
  if (path.back() == '/')
    return "The request path must not end with '/'.";
  std::size_t seg_start = 1;
  for (std::size_t i = 1; i <= path.size(); ++i) {
    if (i < path.size() && path[i] != '/') {
      if (path[i] != '%')
        continue;
      if (i + 2 >= path.size() || hex_value(path[i + 1]) < 0 || hex_value(path[i + 2]) < 0)
        return "The request path contains a malformed percent escape.";
      auto decoded = hex_value(path[i + 1]) * 16 + hex_value(path[i + 2]);
      if (decoded == '/' || decoded == '\\' || decoded < 0x20 || decoded == 0x7f)
        return "The request path contains an encoded '/', '\\' or control character.";
      continue;
    }
    // A segment ends at i: reject empty and dot segments, spelled plainly or encoded.
    auto seg = path.substr(seg_start, i - seg_start);
    if (seg.empty())
      return "The request path contains an empty segment.";
    if (seg.size() <= 6) { // "." or ".." in any mix of plain and %2e
      auto plain = percent_decode(seg, false);
      if (plain == "." || plain == "..")
        return "The request path contains a '.' or '..' segment.";
    }
    seg_start = i + 1;
  }
  return nullptr;
}

void router::add(http::verb method, std::string pattern, access who, handler h) {
  if (canonical_path_error(pattern))
    throw std::invalid_argument("route pattern is not a canonical path: " + pattern);
  path_segments p(pattern);
  if (p.too_long)
    throw std::invalid_argument("route pattern has more than 16 segments: " + pattern);
  route r{method, pattern, {p.seg.begin(), p.seg.begin() + static_cast<std::ptrdiff_t>(p.n)},
          std::move(who), std::move(h)};
  routes_.push_back(std::move(r));
}

namespace {

bool is_capture(std::string_view pat) {
  return pat.size() > 2 && pat.front() == '{' && pat.back() == '}';
}

bool match_segments(const router::route& r, const path_segments& p) {
  if (p.too_long || p.n != r.segments.size())
    return false;
  for (std::size_t i = 0; i < p.n; ++i)
    if (!is_capture(r.segments[i]) && r.segments[i] != p.seg[i])
      return false;
  return true;
}

} // namespace

router::match_result router::match(http::verb method, std::string_view path) const {
  match_result out;
  path_segments segs(path);
  for (auto& r : routes_) {
    if (!match_segments(r, segs))
      continue;
    if (r.method == method) {
      out.params.clear();
      bool empty_param = false;
      for (std::size_t i = 0; i < segs.n; ++i) {
        auto& pat = r.segments[i];
        if (!is_capture(pat))
          continue;
        auto value = percent_decode(segs.seg[i], false);
        if (value.empty())
          empty_param = true;
        out.params.emplace_back(pat.substr(1, pat.size() - 2), std::move(value));
      }
      if (empty_param)
        continue;
      out.found = &r;
      out.allow.clear();
      return out;
    }
    auto name = std::string(http::to_string(r.method));
    if (out.allow.find(name) == std::string::npos)
      out.allow += (out.allow.empty() ? "" : ", ") + name;
  }
  out.params.clear();
  return out;
}

bool router::has_path(std::string_view path) const {
  if (canonical_path_error(path))
    return false;
  path_segments p(path);
  return std::any_of(routes_.begin(), routes_.end(),
                     [&](const route& r) { return match_segments(r, p); });
}

void router::dispatch(const exchange_ptr& ex) const {
  auto& ctx = ex->ctx();
  if (ctx.handler) {
    // GET, HEAD and DELETE take no body here: one sent anyway (other than `{}`) is refused
    // rather than ignored while the action runs. Checked after authorization.
    auto method = ex->req().method();
    if (!ex->req().body().empty() &&
        (method == http::verb::get || method == http::verb::head || method == http::verb::delete_)) {
      nlohmann::json body;
      if (parse_untrusted_json(ex->req().body(), body) || !body.is_object() || !body.empty()) {
        ex->respond_error({api_errc::invalid_request, "This method takes no request body.", ""});
        return;
      }
    }
    (*ctx.handler)(ex);
    return;
  }
  if (!ctx.allow.empty()) {
    ex->add_header("Allow", ctx.allow);
    ex->respond_error({api_errc::method_not_allowed,
                       "Method " + std::string(ex->req().method_string()) +
                         " is not allowed for this URL; allowed: " + ctx.allow,
                       ""});
    return;
  }
  ex->respond_error({api_errc::unknown_route,
                     "Unknown request URL: " + std::string(ex->req().method_string()) + " " +
                       std::string(path_of(ex->req().target())) + ".",
                     ""});
}

} // namespace parley::net
