#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace parley::net {

/// An incremental parser of Server-Sent Events (the WHATWG event-stream format) that is
/// correct across arbitrary chunk boundaries: bytes go in as they arrive from the socket,
/// complete events come out. Handles LF, CRLF and CR line ends, comment lines, several
/// `data:` lines per event (joined with '\n'), and ignores other fields.
/// Bounded: an event larger than `max_event_bytes` is an error (upstream misbehaving).
/// Not thread-safe (one per stream).
class sse_parser {
public:
  explicit sse_parser(std::size_t max_event_bytes = 1u << 20) : max_(max_event_bytes) {}

  /// Feeds bytes; appends the data of each completed event to `out`. Returns false when an
  /// event grew over the bound.
  bool feed(std::string_view bytes, std::vector<std::string>& out);

private:
  void line(std::string_view l, std::vector<std::string>& out);

  std::size_t max_;
  std::string pending_;   ///< bytes of an incomplete line
  std::string data_;      ///< data of the event being built
  bool has_data_ = false;
  bool last_was_cr_ = false;
};

} // namespace parley::net
