#include "parley/persistence/change_feed.hpp"

namespace parley::persistence {

std::optional<cached_change> parse_invalidation(std::string_view payload) {
  auto colon = payload.find(':');
  if (colon == std::string_view::npos || colon + 1 == payload.size())
    return std::nullopt;
  auto kind = payload.substr(0, colon);
  cached_change c;
  if (kind == "key")
    c.what = cached_change::kind::key;
  else if (kind == "tenant")
    c.what = cached_change::kind::tenant;
  else
    return std::nullopt;
  c.id = std::string(payload.substr(colon + 1));
  return c;
}

} // namespace parley::persistence
