// fuzz_sse: the incremental SSE parser of upstream streams (parley/net/sse_parser.hpp).
//
// Input layout: byte 0 picks the event bound, bytes 1-2 seed the chunking, the rest is the
// event stream. The stream is fed twice -- once whole, once split into chunks whose sizes
// (0 to 16 bytes, or a long run) follow from the seed -- and the two runs must agree exactly:
// same events, same verdict. That is the parser's contract ("correct across arbitrary chunk
// boundaries"). Every event must also stay within the bound. Any difference aborts.
#include "parley/net/sse_parser.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace {

struct outcome {
  bool ok = true;
  std::vector<std::string> events;
};

/// Feeds `chunks` in order, stopping at the first refusal (as the upstream client does).
outcome run(std::size_t bound, const std::vector<std::string_view>& chunks) {
  parley::net::sse_parser parser(bound);
  outcome o;
  for (auto c : chunks) {
    if (!parser.feed(c, o.events)) {
      o.ok = false;
      break;
    }
  }
  return o;
}

[[noreturn]] void fail(const char* what, const outcome& whole, const outcome& chunked) {
  std::fprintf(stderr, "fuzz_sse: %s (whole: ok=%d, %zu events; chunked: ok=%d, %zu events)\n",
               what, whole.ok, whole.events.size(), chunked.ok, chunked.events.size());
  std::abort();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  if (size < 3)
    return 0;
  // Small bounds reach the "event too large" path; 255 stands for the production default.
  std::size_t bound = data[0] == 255 ? (1u << 20) : static_cast<std::size_t>(data[0]) + 1;
  uint32_t state = (static_cast<uint32_t>(data[1]) << 8 | data[2]) * 2654435761u + 1;
  std::string_view stream(reinterpret_cast<const char*>(data + 3), size - 3);

  std::vector<std::string_view> chunks;
  std::size_t pos = 0;
  while (pos < stream.size()) {
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    std::size_t len = (state & 0xf0) == 0xf0 ? 64 + (state >> 20) % 512 : (state >> 8) % 17;
    if (len > stream.size() - pos)
      len = stream.size() - pos;
    chunks.push_back(stream.substr(pos, len)); // may be empty: feeding nothing is allowed
    pos += len;
  }

  outcome whole = run(bound, {stream});
  outcome chunked = run(bound, chunks);
  if (whole.ok != chunked.ok)
    fail("the verdict depends on chunk boundaries", whole, chunked);
  if (whole.events != chunked.events)
    fail("the events depend on chunk boundaries", whole, chunked);
  for (auto& e : whole.events)
    if (e.size() > bound)
      fail("an event is larger than max_event_bytes", whole, chunked);
  return 0;
}
