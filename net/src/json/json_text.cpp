#include "json/json_text.hpp"

#include "parley/config/logging.hpp"

namespace parley::net::jsontext {

void append_string(std::string& out, std::string_view s) {
  out += '"';
  log::append_escaped(out, s);
  out += '"';
}

namespace {

class reader {
public:
  explicit reader(std::string_view t) : p_(t.data()), e_(t.data() + t.size()) {}

  bool at_end() {
    ws();
    return p_ == e_;
  }
  void ws() {
    while (p_ < e_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t'))
      ++p_;
  }
  bool peek(char c) {
    ws();
    return p_ < e_ && *p_ == c;
  }
  bool eat(char c) {
    if (!peek(c))
      return false;
    ++p_;
    return true;
  }
  bool literal(std::string_view w) {
    ws();
    if (static_cast<std::size_t>(e_ - p_) < w.size() || std::string_view(p_, w.size()) != w)
      return false;
    p_ += w.size();
    return true;
  }

  /// A string; unescaped into `out` when given. Raw bytes >= 0x20 pass through.
  bool string(std::string* out) {
    if (!eat('"'))
      return false;
    for (;;) {
      const char* run = p_;
      while (p_ < e_ && *p_ != '"' && *p_ != '\\' && static_cast<unsigned char>(*p_) >= 0x20)
        ++p_;
      if (out)
        out->append(run, static_cast<std::size_t>(p_ - run));
      if (p_ == e_ || static_cast<unsigned char>(*p_) < 0x20)
        return false;
      if (*p_ == '"') {
        ++p_;
        return true;
      }
      ++p_; // backslash
      if (p_ == e_)
        return false;
      char c = *p_++;
      char plain = 0;
      switch (c) {
        case '"': plain = '"'; break;
        case '\\': plain = '\\'; break;
        case '/': plain = '/'; break;
        case 'b': plain = '\b'; break;
        case 'f': plain = '\f'; break;
        case 'n': plain = '\n'; break;
        case 'r': plain = '\r'; break;
        case 't': plain = '\t'; break;
        case 'u': {
          uint32_t cp = 0;
          if (!hex4(cp))
            return false;
          if (cp >= 0xD800 && cp <= 0xDBFF) { // a surrogate pair
            uint32_t lo = 0;
            if (e_ - p_ < 6 || p_[0] != '\\' || p_[1] != 'u')
              return false;
            p_ += 2;
            if (!hex4(lo) || lo < 0xDC00 || lo > 0xDFFF)
              return false;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return false;
          }
          if (out)
            utf8(*out, cp);
          continue;
        }
        default:
          return false;
      }
      if (out)
        *out += plain;
    }
  }

  /// null, or a string: then `present` is set and `out` holds it (a repeated key wins).
  bool nullable_string(bool& present, std::string& out) {
    if (literal("null"))
      return true;
    present = true;
    out.clear();
    return string(&out);
  }

  bool integer(int64_t& v) {
    ws();
    const char* start = p_;
    bool neg = p_ < e_ && *p_ == '-';
    if (neg)
      ++p_;
    if (p_ == e_ || *p_ < '0' || *p_ > '9')
      return false;
    int64_t n = 0;
    while (p_ < e_ && *p_ >= '0' && *p_ <= '9') {
      if (n > (INT64_MAX - 9) / 10)
        return false;
      n = n * 10 + (*p_++ - '0');
    }
    if (p_ < e_ && (*p_ == '.' || *p_ == 'e' || *p_ == 'E')) { // not an integer: skip it
      p_ = start;
      return false;
    }
    v = neg ? -n : n;
    return true;
  }

  /// Skips any value (validating its shape), depth-bounded.
  bool skip(int depth = 0) {
    if (depth > 64)
      return false;
    ws();
    if (p_ == e_)
      return false;
    switch (*p_) {
      case '"': return string(nullptr);
      case '{': {
        ++p_;
        if (eat('}'))
          return true;
        do {
          if (!string(nullptr) || !eat(':') || !skip(depth + 1))
            return false;
        } while (eat(','));
        return eat('}');
      }
      case '[': {
        ++p_;
        if (eat(']'))
          return true;
        do {
          if (!skip(depth + 1))
            return false;
        } while (eat(','));
        return eat(']');
      }
      case 't': return literal("true");
      case 'f': return literal("false");
      case 'n': return literal("null");
      default: {
        const char* start = p_;
        if (*p_ == '-')
          ++p_;
        while (p_ < e_ && ((*p_ >= '0' && *p_ <= '9') || *p_ == '.' || *p_ == 'e' || *p_ == 'E' ||
                           *p_ == '+' || *p_ == '-'))
          ++p_;
        return p_ > start;
      }
    }
  }

  /// Iterates an object's members: fn(key) must consume the value and return false on error.
  template <class Fn>
  bool object(Fn&& fn) {
    if (!eat('{'))
      return false;
    if (eat('}'))
      return true;
    std::string key;
    do {
      key.clear();
      if (!string(&key) || !eat(':') || !fn(key))
        return false;
    } while (eat(','));
    return eat('}');
  }

private:
  bool hex4(uint32_t& v) {
    if (e_ - p_ < 4)
      return false;
    v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = *p_++;
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<uint32_t>(c - 'A' + 10);
      else return false;
    }
    return true;
  }
  static void utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  const char* p_;
  const char* e_;
};

} // namespace

bool scan_chunk(std::string_view text, chunk_fields& out) {
  reader r(text);
  bool ok = r.object([&](const std::string& key) {
    if (key == "choices") {
      if (r.literal("null"))
        return true;
      if (!r.eat('['))
        return false;
      if (r.eat(']'))
        return true;
      bool first = true;
      do {
        if (!first) {
          if (!r.skip())
            return false;
          continue;
        }
        first = false;
        bool choice_ok = r.object([&](const std::string& ck) {
          if (ck == "delta") {
            if (r.literal("null"))
              return true;
            return r.object([&](const std::string& dk) {
              if (dk == "content")
                return r.nullable_string(out.has_content, out.content);
              return r.skip();
            });
          }
          if (ck == "finish_reason")
            return r.nullable_string(out.has_finish, out.finish_reason);
          return r.skip();
        });
        if (!choice_ok)
          return false;
      } while (r.eat(','));
      return r.eat(']');
    }
    if (key == "usage") {
      if (r.literal("null"))
        return true;
      out.has_usage = true;
      return r.object([&](const std::string& uk) {
        if (uk == "prompt_tokens")
          return r.integer(out.prompt_tokens) || r.skip();
        if (uk == "completion_tokens")
          return r.integer(out.completion_tokens) || r.skip();
        return r.skip();
      });
    }
    if (key == "error") {
      if (r.literal("null"))
        return true;
      out.error = true;
      if (!r.peek('{'))
        return r.skip();
      return r.object([&](const std::string& ek) {
        if (ek == "message" && r.peek('"'))
          return r.string(&out.error_message);
        return r.skip();
      });
    }
    return r.skip();
  });
  return ok && r.at_end();
}

} // namespace parley::net::jsontext
