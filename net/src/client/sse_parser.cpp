#include "parley/net/sse_parser.hpp"

#include <cstring>

namespace parley::net {

bool sse_parser::feed(std::string_view bytes, std::vector<std::string>& out) {
  std::size_t i = 0;
  std::size_t next_lf = 0; // where the last search found an LF (bytes.size(): none left)
  bool lf_known = false;
  while (i < bytes.size()) {
    if (last_was_cr_ && bytes[i] == '\n') { // the LF of a CRLF: the line already ended at CR
      last_was_cr_ = false;
      ++i;
      continue;
    }
    last_was_cr_ = false;
    // The rest of this line, found in bulk (memchr is vectorized): its first LF, or an
    // earlier CR (a lone CR also ends a line in SSE).
    // The LF search is kept across lines: lines ended by lone CRs do not rescan the rest.
    if (!lf_known || next_lf < i) {
      auto* lf = static_cast<const char*>(std::memchr(bytes.data() + i, '\n', bytes.size() - i));
      next_lf = lf ? static_cast<std::size_t>(lf - bytes.data()) : bytes.size();
      lf_known = true;
    }
    std::size_t end = next_lf;
    if (auto* cr = static_cast<const char*>(std::memchr(bytes.data() + i, '\r', end - i)))
      end = static_cast<std::size_t>(cr - bytes.data());
    auto piece = bytes.substr(i, end - i);
    if (end == bytes.size()) { // no line end yet: keep the fragment
      if (pending_.size() + piece.size() + data_.size() > max_)
        return false;
      pending_.append(piece.data(), piece.size());
      return true;
    }
    if (pending_.size() + piece.size() + data_.size() > max_)
      return false;
    last_was_cr_ = bytes[end] == '\r';
    if (pending_.empty()) {
      line(piece, out); // the common case: a whole line within one read, no copy
    } else {
      pending_.append(piece.data(), piece.size());
      line(pending_, out);
      pending_.clear();
    }
    i = end + 1;
  }
  return true;
}

void sse_parser::line(std::string_view l, std::vector<std::string>& out) {
  if (l.empty()) { // blank line: dispatch
    if (has_data_)
      out.push_back(std::move(data_));
    data_.clear();
    has_data_ = false;
    return;
  }
  if (l.front() == ':')
    return; // comment (keep-alive)
  auto colon = l.find(':');
  auto field = l.substr(0, colon);
  std::string_view value;
  if (colon != std::string_view::npos) {
    value = l.substr(colon + 1);
    if (!value.empty() && value.front() == ' ')
      value.remove_prefix(1);
  }
  if (field == "data") {
    if (has_data_)
      data_ += '\n';
    data_.append(value.data(), value.size());
    has_data_ = true;
  }
}

} // namespace parley::net
