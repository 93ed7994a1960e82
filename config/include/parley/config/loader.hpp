#pragma once

#include "parley/config/settings.hpp"

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace parley::config {

/// A configuration error: one line naming the key and the reason. `parley` prints it and
/// exits with status 2.
class config_error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

/// Description of one configuration key, for validation, environment overrides, docs and
/// redaction. The table is the single source of truth (docs/configuration.md follows it).
struct key_info {
  std::string section;   ///< "http"
  std::string key;       ///< "listen"
  std::string env;       ///< "PARLEY_HTTP_LISTEN"
  std::string type;      ///< "string" | "integer" | "boolean" | "string list"
  std::string default_value;
  std::string meaning;
  bool secret = false;   ///< never printed or logged
};

/// Every key parley understands.
const std::vector<key_info>& known_keys();

/// Loads settings: defaults, then the TOML file at `path` (if not empty), then environment
/// overrides `PARLEY_<SECTION>_<KEY>` taken from `env`, then validates the whole tree.
/// Throws config_error naming the key on an unknown key, a wrong type, or an invalid value.
settings load(const std::string& path, const std::map<std::string, std::string>& env);

/// The process environment's PARLEY_* variables, for load().
std::map<std::string, std::string> process_environment();

/// Validates a settings tree (load() calls it; tests and CLI overrides call it again).
void validate(const settings& s);

/// The effective configuration as "section.key = value" lines, secrets shown as "***".
std::vector<std::string> describe(const settings& s);

/// Splits "HOST:PORT" ("[::1]:8080" for IPv6). Throws config_error naming `key` if invalid.
std::pair<std::string, uint16_t> split_host_port(const std::string& value, const std::string& key);

} // namespace parley::config
