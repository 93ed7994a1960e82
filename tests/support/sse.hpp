#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace parley::test {

/// Splits an SSE body into its data payloads (test helper; the body is complete).
inline std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while ((pos = body.find("data: ", pos)) != std::string::npos) {
    auto end = body.find("\n\n", pos);
    out.push_back(body.substr(pos + 6, end - pos - 6));
    pos = end;
  }
  return out;
}

} // namespace parley::test
