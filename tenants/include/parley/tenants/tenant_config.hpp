#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace parley::tenants {

/// A tenant's limits. 0 means "no limit" for every field.
struct tenant_limits {
  int64_t requests_per_minute = 0;
  int64_t tokens_per_minute = 0;
  int64_t tokens_per_day = 0;
  int64_t max_concurrent = 0;
  int64_t max_request_tokens = 0;
};

/// A tenant's configuration, stored as JSON in tenants.config.
struct tenant_config {
  /// Models the tenant may use; "*" allows every model the node routes.
  std::vector<std::string> allowed_models{"*"};
  std::string default_model;   ///< "" = the request must name a model
  std::string system_prompt;   ///< prepended to every chat; "" = none
  tenant_limits limits;
  int64_t cache_ttl_seconds = 0; ///< response cache TTL; 0 = caching off

  /// True when `model` is allowed for this tenant.
  bool allows(const std::string& model) const;
};

/// Why a config was refused: a client-safe message and the JSON path of the field.
struct config_problem {
  std::string message;
  std::string param; ///< e.g. "config.limits.requests_per_minute"
};

/// Applies `patch` (a JSON object; absent fields keep their value in `base`, nested objects
/// merge) and validates the result: unknown fields, wrong types, negative or huge numbers,
/// oversized strings and a default_model that is not allowed are refused.
/// `param_prefix` is prepended to reported field paths ("config").
std::optional<config_problem> apply_config_patch(tenant_config& base, const nlohmann::json& patch,
                                                 const std::string& param_prefix = "config");

/// Parses stored JSON text (already validated when written). Malformed text yields defaults.
tenant_config parse_stored_config(const std::string& json_text);

/// Serializes to the JSON object stored and shown by the admin API.
std::string to_json_text(const tenant_config& c);
nlohmann::json to_json(const tenant_config& c);

/// Valid tenant statuses.
bool valid_status(const std::string& s);
/// A slug: 1-64 chars of [a-z0-9-], not starting or ending with '-'.
bool valid_slug(const std::string& s);

} // namespace parley::tenants
