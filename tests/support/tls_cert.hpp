#pragma once

#include <string>

namespace parley::test {

/// Writes a fresh self-signed certificate for 127.0.0.1 and localhost (P-256, SHA-256, valid
/// for a day) and its private key as PEM files into `dir`; returns their paths.
struct tls_files {
  std::string cert;
  std::string key;
};
tls_files make_self_signed(const std::string& dir);

} // namespace parley::test
