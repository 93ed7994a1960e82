#include "parley/config/logging.hpp"

#include <array>
#include <charconv>
#include <cmath>

namespace parley::log {

namespace {
/// Which bytes a JSON string must escape: controls, '"' and '\\'.
constexpr auto escape_table = [] {
  std::array<bool, 256> t{};
  for (int c = 0; c < 0x20; ++c)
    t[static_cast<std::size_t>(c)] = true;
  t['"'] = true;
  t['\\'] = true;
  return t;
}();
} // namespace

void append_escaped(std::string& out, std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    // Runs of characters that need no escape go in one append.
    std::size_t j = i;
    while (j < s.size() && !escape_table[static_cast<unsigned char>(s[j])])
      ++j;
    out.append(s.data() + i, j - i);
    if (j == s.size())
      return;
    auto c = static_cast<unsigned char>(s[j]);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default: {
        static const char hex[] = "0123456789abcdef";
        char buf[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        out.append(buf, 6);
      }
    }
    i = j + 1;
  }
}

event::event(const logger_ptr& logger, spdlog::level::level_enum level, std::string_view msg)
  : logger_(logger.get()), level_(level), enabled_(logger && logger->should_log(level)) {
  if (!enabled_)
    return;
  payload_.reserve(256);
  payload_ += "\"msg\":\"";
  append_escaped(payload_, msg);
  payload_ += '"';
}

event::~event() {
  if (enabled_)
    logger_->log(level_, "{}", payload_);
}

void event::key(std::string_view k) {
  payload_ += ",\"";
  append_escaped(payload_, k);
  payload_ += "\":";
}

event& event::str(std::string_view k, std::string_view value) {
  if (enabled_) {
    key(k);
    payload_ += '"';
    append_escaped(payload_, value);
    payload_ += '"';
  }
  return *this;
}

event& event::num(std::string_view k, int64_t value) {
  if (enabled_) {
    key(k);
    char buf[24];
    auto r = std::to_chars(buf, buf + sizeof buf, value);
    payload_.append(buf, static_cast<std::size_t>(r.ptr - buf));
  }
  return *this;
}

event& event::real(std::string_view k, double value) {
  if (enabled_) {
    key(k);
    // Three decimals, as "%.3f" writes them, without printf's locale and parsing machinery
    // (which cost more than the rest of an access-log line); JSON has no NaN or infinity.
    char buf[64];
    auto r = std::isfinite(value) && std::fabs(value) < 1e15
               ? std::to_chars(buf, buf + sizeof buf, value, std::chars_format::fixed, 3)
               : std::to_chars_result{nullptr, std::errc::value_too_large};
    if (r.ec == std::errc{})
      payload_.append(buf, static_cast<std::size_t>(r.ptr - buf));
    else
      payload_ += "null";
  }
  return *this;
}

event& event::flag(std::string_view k, bool value) {
  if (enabled_) {
    key(k);
    payload_ += value ? "true" : "false";
  }
  return *this;
}

} // namespace parley::log
