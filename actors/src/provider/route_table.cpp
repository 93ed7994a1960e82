// The models a node serves (see services.hpp).
#include "parley/actors/services.hpp"

namespace parley::actors {

route_table::route_table(std::vector<route> routes, std::shared_ptr<provider_port> fallback,
                         int64_t fallback_context_tokens, int64_t fallback_max_output_tokens)
  : routes_(std::move(routes)),
    fallback_(std::move(fallback)),
    fallback_context_tokens_(fallback_context_tokens),
    fallback_max_output_tokens_(fallback_max_output_tokens) {}

std::optional<route> route_table::find(const std::string& model) const {
  for (auto& r : routes_)
    if (r.model == model)
      return r;
  if (fallback_ && !model.empty())
    return route{model, model, fallback_, fallback_context_tokens_, "upstream",
                 fallback_max_output_tokens_};
  return std::nullopt;
}

} // namespace parley::actors
