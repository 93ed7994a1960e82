#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <variant>

namespace parley::persistence {

/// Error codes of the store layer. Values, never exceptions, cross the module edge.
enum class persistence_errc : uint8_t {
  ok = 0,
  not_found = 1,     ///< no row with that id (for that tenant)
  conflict = 2,      ///< a unique constraint was violated (duplicate slug, ...)
  unavailable = 3,   ///< the database cannot be reached or the connection broke
  timeout = 4,       ///< statement timeout or pool acquire timeout
  invalid = 5,       ///< the request violates a check constraint or stored data is malformed
  internal = 6,      ///< anything else (bug, unexpected driver error)
};

/// Short stable name of a code ("not_found", ...), for logs and tests.
const char* to_string(persistence_errc code) noexcept;

/// An error value: a code for callers to branch on and a detail for logs only.
/// The detail may contain SQL or driver text and must never reach a client.
struct store_error {
  persistence_errc code = persistence_errc::internal;
  std::string detail;
};

/// A value or a store_error. Small on purpose: C++17 has no std::expected.
template <class T>
class result {
public:
  result(T value) : v_(std::move(value)) {}                  // NOLINT(implicit)
  result(store_error err) : v_(std::move(err)) {}            // NOLINT(implicit)
  result(persistence_errc code, std::string detail = {})
    : v_(store_error{code, std::move(detail)}) {}

  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &std::get<0>(v_); }
  const T* operator->() const { return &std::get<0>(v_); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const store_error& error() const { return std::get<1>(v_); }
  persistence_errc code() const noexcept {
    return ok() ? persistence_errc::ok : std::get<1>(v_).code;
  }

private:
  std::variant<T, store_error> v_;
};

/// Result of an operation that returns nothing but may fail.
struct unit {};
using status = result<unit>;
inline status ok_status() { return unit{}; }

} // namespace parley::persistence
