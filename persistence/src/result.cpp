#include "parley/persistence/result.hpp"

namespace parley::persistence {

const char* to_string(persistence_errc code) noexcept {
  switch (code) {
    case persistence_errc::ok: return "ok";
    case persistence_errc::not_found: return "not_found";
    case persistence_errc::conflict: return "conflict";
    case persistence_errc::unavailable: return "unavailable";
    case persistence_errc::timeout: return "timeout";
    case persistence_errc::invalid: return "invalid";
    case persistence_errc::internal: return "internal";
  }
  return "unknown";
}

} // namespace parley::persistence
