#pragma once

#include <optional>
#include <string>
#include <string_view>

/// Tenant API keys: `prly_<key id>_<secret>`. The key id is public (it names the row); the
/// secret is 32 bytes from the OS CSPRNG, base64url without padding (43 characters). Only an
/// HMAC-SHA-256 of the secret under the server pepper is ever stored.
namespace parley::tenants {

/// A freshly minted key. `full` is shown to the client once and never stored or logged.
struct minted_key {
  std::string key_id;
  std::string secret;
  std::string full;
};

/// The parts of a presented key, if it has the right shape.
struct parsed_key {
  std::string key_id;
  std::string secret;
};

/// Makes a key with a new id and secret. Thread-safe. Throws std::runtime_error if the
/// CSPRNG fails (never expected).
minted_key mint_key(const std::string& key_id);
/// A new secret only (rotation keeps the key id).
std::string new_secret();
/// Builds the full key string.
std::string format_key(const std::string& key_id, const std::string& secret);
/// Splits `prly_<id>_<secret>`; std::nullopt when the shape is wrong.
std::optional<parsed_key> parse_key(std::string_view presented);

/// Hex HMAC-SHA-256 of `secret` under `pepper`.
std::string hash_secret(std::string_view pepper, std::string_view secret);
/// Constant-time comparison of two hex digests (also when lengths differ).
bool digest_equals(std::string_view a, std::string_view b) noexcept;

/// `n` random bytes from the OS CSPRNG, base64url without padding.
std::string random_token(std::size_t n);

} // namespace parley::tenants
