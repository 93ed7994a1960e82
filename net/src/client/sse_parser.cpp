#include "parley/net/sse_parser.hpp"

namespace parley::net {

bool sse_parser::feed(std::string_view bytes, std::vector<std::string>& out) {
  for (char c : bytes) {
    if (last_was_cr_ && c == '\n') { // the LF of a CRLF: the line already ended at CR
      last_was_cr_ = false;
      continue;
    }
    last_was_cr_ = c == '\r';
    if (c == '\n' || c == '\r') {
      line(pending_, out);
      pending_.clear();
      continue;
    }
    pending_ += c;
    if (pending_.size() + data_.size() > max_)
      return false;
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
