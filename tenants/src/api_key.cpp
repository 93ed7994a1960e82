#include "parley/tenants/api_key.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sodium.h>

#include <algorithm>
#include <stdexcept>
#include <vector>

namespace parley::tenants {
namespace {

constexpr std::string_view prefix = "prly_";
constexpr std::size_t secret_bytes = 32;

std::string base64url(const unsigned char* data, std::size_t n) {
  static constexpr char tbl[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  out.reserve((n * 4 + 2) / 3);
  std::size_t i = 0;
  for (; i + 2 < n; i += 3) {
    uint32_t v = (uint32_t{data[i]} << 16) | (uint32_t{data[i + 1]} << 8) | data[i + 2];
    out += tbl[(v >> 18) & 63];
    out += tbl[(v >> 12) & 63];
    out += tbl[(v >> 6) & 63];
    out += tbl[v & 63];
  }
  if (n - i == 1) {
    uint32_t v = uint32_t{data[i]} << 16;
    out += tbl[(v >> 18) & 63];
    out += tbl[(v >> 12) & 63];
  } else if (n - i == 2) {
    uint32_t v = (uint32_t{data[i]} << 16) | (uint32_t{data[i + 1]} << 8);
    out += tbl[(v >> 18) & 63];
    out += tbl[(v >> 12) & 63];
    out += tbl[(v >> 6) & 63];
  }
  return out;
}

bool is_b64url(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
}

} // namespace

std::string random_token(std::size_t n) {
  std::vector<unsigned char> buf(n);
  if (RAND_bytes(buf.data(), static_cast<int>(n)) != 1)
    throw std::runtime_error("CSPRNG failure");
  auto out = base64url(buf.data(), n);
  OPENSSL_cleanse(buf.data(), buf.size());
  return out;
}

std::string new_secret() { return random_token(secret_bytes); }

std::string format_key(const std::string& key_id, const std::string& secret) {
  std::string out;
  out.reserve(prefix.size() + key_id.size() + 1 + secret.size());
  out.append(prefix).append(key_id).append(1, '_').append(secret);
  return out;
}

minted_key mint_key(const std::string& key_id) {
  minted_key k;
  k.key_id = key_id;
  k.secret = new_secret();
  k.full = format_key(k.key_id, k.secret);
  return k;
}

std::optional<parsed_key> parse_key(std::string_view presented) {
  if (presented.size() > 256 || presented.substr(0, prefix.size()) != prefix)
    return std::nullopt;
  auto rest = presented.substr(prefix.size());
  auto sep = rest.find('_');
  if (sep == std::string_view::npos || sep == 0 || sep > 64)
    return std::nullopt;
  auto id = rest.substr(0, sep);
  auto secret = rest.substr(sep + 1);
  if (secret.size() < 32 || !std::all_of(secret.begin(), secret.end(), is_b64url) ||
      !std::all_of(id.begin(), id.end(),
                   [](char c) { return std::isalnum(static_cast<unsigned char>(c)); }))
    return std::nullopt;
  return parsed_key{std::string(id), std::string(secret)};
}

std::string hash_secret(std::string_view pepper, std::string_view secret) {
  // HMAC-SHA-256, on every authenticated request: the keyed state (the pepper's inner and
  // outer pads) is computed once per thread and copied per call, so a call is two SHA-256
  // blocks and no allocation (OpenSSL 3's one-shot HMAC() looks its algorithm up each time).
  struct keyed {
    std::string pepper;
    crypto_auth_hmacsha256_state state;
    bool ready = false;
  };
  thread_local keyed k;
  if (!k.ready || k.pepper != pepper) {
    crypto_auth_hmacsha256_init(&k.state, reinterpret_cast<const unsigned char*>(pepper.data()),
                                pepper.size());
    k.pepper.assign(pepper.data(), pepper.size());
    k.ready = true;
  }
  crypto_auth_hmacsha256_state st = k.state;
  crypto_auth_hmacsha256_update(&st, reinterpret_cast<const unsigned char*>(secret.data()),
                                secret.size());
  unsigned char mac[crypto_auth_hmacsha256_BYTES];
  crypto_auth_hmacsha256_final(&st, mac);
  sodium_memzero(&st, sizeof st);
  static constexpr char hex[] = "0123456789abcdef";
  std::string out(sizeof mac * 2, '0');
  for (std::size_t i = 0; i < sizeof mac; ++i) {
    out[2 * i] = hex[mac[i] >> 4];
    out[2 * i + 1] = hex[mac[i] & 15];
  }
  return out;
}

bool digest_equals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size())
    return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

} // namespace parley::tenants
