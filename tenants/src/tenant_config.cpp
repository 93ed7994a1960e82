#include "parley/tenants/tenant_config.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>

namespace parley::tenants {
namespace {

constexpr int64_t max_limit = 1'000'000'000'000LL; // 1e12: far above any real limit
constexpr std::size_t max_prompt_bytes = 64 * 1024;
constexpr std::size_t max_models = 256;

using json = nlohmann::json;

std::optional<config_problem> read_limit(const json& v, int64_t& out, const std::string& path) {
  if (!v.is_number_integer())
    return config_problem{path + " must be an integer", path};
  auto n = v.get<int64_t>();
  if (n < 0 || n > max_limit)
    return config_problem{path + " must be between 0 and 1000000000000", path};
  out = n;
  return std::nullopt;
}

} // namespace

bool tenant_config::allows(const std::string& model) const {
  return std::any_of(allowed_models.begin(), allowed_models.end(),
                     [&](const std::string& m) { return m == "*" || m == model; });
}

bool valid_status(const std::string& s) {
  return s == "active" || s == "suspended" || s == "deleted";
}

bool valid_slug(const std::string& s) {
  if (s.empty() || s.size() > 64 || s.front() == '-' || s.back() == '-')
    return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
  });
}

std::optional<config_problem> apply_config_patch(tenant_config& base, const json& patch,
                                                 const std::string& prefix) {
  if (!patch.is_object())
    return config_problem{prefix + " must be an object", prefix};
  tenant_config c = base;
  for (auto& [key, value] : patch.items()) {
    auto path = prefix + "." + key;
    if (key == "allowed_models") {
      if (!value.is_array() || value.size() > max_models)
        return config_problem{path + " must be an array of at most 256 model names", path};
      std::vector<std::string> models;
      for (auto& m : value) {
        if (!m.is_string() || m.get<std::string>().empty() || m.get<std::string>().size() > 128)
          return config_problem{path + " entries must be model names of 1-128 characters", path};
        models.push_back(m.get<std::string>());
      }
      c.allowed_models = std::move(models);
    } else if (key == "default_model") {
      if (value.is_null()) {
        c.default_model.clear();
      } else if (!value.is_string() || value.get<std::string>().size() > 128) {
        return config_problem{path + " must be a model name or null", path};
      } else {
        c.default_model = value.get<std::string>();
      }
    } else if (key == "system_prompt") {
      if (value.is_null()) {
        c.system_prompt.clear();
      } else if (!value.is_string() || value.get<std::string>().size() > max_prompt_bytes) {
        return config_problem{path + " must be a string of at most 65536 bytes", path};
      } else {
        c.system_prompt = value.get<std::string>();
      }
    } else if (key == "limits") {
      if (!value.is_object())
        return config_problem{path + " must be an object", path};
      for (auto& [lk, lv] : value.items()) {
        auto lpath = path + "." + lk;
        int64_t* field = lk == "requests_per_minute"  ? &c.limits.requests_per_minute
                         : lk == "tokens_per_minute"  ? &c.limits.tokens_per_minute
                         : lk == "tokens_per_day"     ? &c.limits.tokens_per_day
                         : lk == "max_concurrent"     ? &c.limits.max_concurrent
                         : lk == "max_request_tokens" ? &c.limits.max_request_tokens
                                                      : nullptr;
        if (!field)
          return config_problem{"unknown field " + lpath, lpath};
        if (auto p = read_limit(lv, *field, lpath))
          return p;
      }
    } else if (key == "cache") {
      if (!value.is_object())
        return config_problem{path + " must be an object", path};
      for (auto& [ck, cv] : value.items()) {
        auto cpath = path + "." + ck;
        if (ck != "ttl_seconds")
          return config_problem{"unknown field " + cpath, cpath};
        if (auto p = read_limit(cv, c.cache_ttl_seconds, cpath))
          return p;
        if (c.cache_ttl_seconds > 30 * 86400)
          return config_problem{cpath + " must be at most 2592000 (30 days)", cpath};
      }
    } else {
      return config_problem{"unknown field " + path, path};
    }
  }
  if (!c.default_model.empty() && !c.allows(c.default_model))
    return config_problem{prefix + ".default_model must be one of allowed_models",
                          prefix + ".default_model"};
  base = std::move(c);
  return std::nullopt;
}

json to_json(const tenant_config& c) {
  return json{
    {"allowed_models", c.allowed_models},
    {"default_model", c.default_model.empty() ? json(nullptr) : json(c.default_model)},
    {"system_prompt", c.system_prompt},
    {"limits",
     {{"requests_per_minute", c.limits.requests_per_minute},
      {"tokens_per_minute", c.limits.tokens_per_minute},
      {"tokens_per_day", c.limits.tokens_per_day},
      {"max_concurrent", c.limits.max_concurrent},
      {"max_request_tokens", c.limits.max_request_tokens}}},
    {"cache", {{"ttl_seconds", c.cache_ttl_seconds}}},
  };
}

std::string to_json_text(const tenant_config& c) { return to_json(c).dump(); }

tenant_config parse_stored_config(const std::string& text) {
  tenant_config c;
  auto j = json::parse(text, nullptr, false);
  if (!j.is_discarded())
    apply_config_patch(c, j);
  return c;
}

} // namespace parley::tenants
