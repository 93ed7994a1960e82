#pragma once

namespace parley::runtime {

/// The release version ("0.1.0").
const char* version_string() noexcept;
/// The git commit the binary was built from (short hash), or "unknown".
const char* git_commit() noexcept;
/// The CMake build type ("Release").
const char* build_type() noexcept;

} // namespace parley::runtime
