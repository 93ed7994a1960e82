#pragma once

#include <string>

namespace parley::runtime {

/// Returns the secret stored in `path`, creating it first (32 random bytes, base64url, file
/// mode 0600, parent directories created) when the file does not exist. Start-up only: it
/// does file I/O. Throws std::runtime_error when the file cannot be read or written, or when
/// an existing file is readable by group or others.
std::string load_or_create_secret(const std::string& path);

} // namespace parley::runtime
