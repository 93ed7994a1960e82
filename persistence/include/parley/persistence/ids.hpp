#pragma once

#include <cstdint>
#include <string>

namespace parley::persistence {

/// A new time-ordered id: 26 lowercase Crockford base32 characters (48-bit millisecond
/// timestamp, then 80 random bits from the OS CSPRNG), prefixed with `prefix` (for example
/// "ten_"). Ids made later sort after ids made earlier (same millisecond: random order),
/// which is what cursor pagination relies on. Thread-safe.
std::string new_id(const char* prefix = "");

/// Current wall-clock time in Unix epoch milliseconds.
int64_t now_millis();

} // namespace parley::persistence
