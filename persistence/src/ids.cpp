#include "parley/persistence/ids.hpp"

#include <openssl/rand.h>

#include <array>
#include <algorithm>
#include <chrono>
#include <mutex>
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
  if (RAND_bytes(bytes.data() + 6, 10) != 1)
    throw std::runtime_error("CSPRNG failure");
  {
    // Monotonic within the process: an id made in the same millisecond as the previous one
    // (or after the clock stepped back) is the previous one plus one, so ids made one after
    // the other always sort in that order -- the audit log and cursors rely on it.
    static std::mutex mu;
    static uint64_t last_ts = 0;
    static std::array<unsigned char, 10> last_rand{};
    std::lock_guard<std::mutex> lock(mu);
    if (ts <= last_ts) {
      ts = last_ts;
      int i = 9;
      while (i >= 0 && ++last_rand[static_cast<std::size_t>(i)] == 0)
        --i;
      std::copy(last_rand.begin(), last_rand.end(), bytes.begin() + 6);
    } else {
      last_ts = ts;
      std::copy(bytes.begin() + 6, bytes.end(), last_rand.begin());
    }
  }
  for (int i = 0; i < 6; ++i)
    bytes[static_cast<std::size_t>(i)] = static_cast<unsigned char>(ts >> (8 * (5 - i)));
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
