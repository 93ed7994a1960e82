#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

namespace parley::config {

/// An IPv4 or IPv6 address block ("10.0.0.0/8", "::1/128"; a bare address is a /32 or /128).
/// IPv4-mapped IPv6 addresses ("::ffff:10.1.2.3") match IPv4 blocks. Immutable; thread-safe.
class cidr {
public:
  /// Parses a block; nullopt when it is not an address with an optional valid prefix length.
  static std::optional<cidr> parse(std::string_view text);
  /// True when `address` (textual IPv4 or IPv6) lies in the block; false for anything else.
  bool contains(std::string_view address) const;

private:
  std::array<uint8_t, 16> bytes_{}; ///< IPv4 as IPv4-mapped IPv6
  int prefix_ = 0;                  ///< in bits of the 128-bit form
};

/// True when `text` parses as a cidr (for config validation).
inline bool valid_cidr(std::string_view text) { return cidr::parse(text).has_value(); }

/// Parses a textual IPv4 or IPv6 address into its IPv4-mapped 16-byte form.
std::optional<std::array<uint8_t, 16>> parse_address(std::string_view text);

} // namespace parley::config
