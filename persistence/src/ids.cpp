#include "parley/persistence/ids.hpp"

#include <openssl/rand.h>

#include <array>
#include <chrono>
#include <stdexcept>

namespace parley::persistence {

int64_t now_millis() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

std::string new_id(const char* prefix) {
  static constexpr char alphabet[] = "0123456789abcdefghjkmnpqrstvwxyz"; // Crockford
  std::array<unsigned char, 16> bytes{};
  auto ts = static_cast<uint64_t>(now_millis());
  for (int i = 0; i < 6; ++i)
    bytes[static_cast<std::size_t>(i)] = static_cast<unsigned char>(ts >> (8 * (5 - i)));
  if (RAND_bytes(bytes.data() + 6, 10) != 1)
    throw std::runtime_error("CSPRNG failure");
  // 128 bits -> 26 base32 digits (the first digit carries the top 3 bits).
  std::string out = prefix;
  out.reserve(out.size() + 26);
  unsigned __int128 v = 0;
  for (auto b : bytes)
    v = (v << 8) | b;
  char digits[26];
  for (int i = 25; i >= 0; --i) {
    digits[i] = alphabet[static_cast<unsigned>(v & 31u)];
    v >>= 5;
  }
  out.append(digits, 26);
  return out;
}

} // namespace parley::persistence
