#pragma once

#include <spdlog/spdlog.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

/// Structured JSON logging shared by every module. Runtime creates the spdlog logger with the
/// pattern `{"ts":...,"level":...,<payload>}`; modules receive it at construction and emit
/// lines with log::event, which writes the payload (`"msg"` first, then fields) escaped.
///
/// Rule: message contents, API keys and other secrets never go into a field at info level
/// or above.
namespace parley::log {

using logger_ptr = std::shared_ptr<spdlog::logger>;

/// Appends `s` to `out` as the inside of a JSON string (quotes not included).
void append_escaped(std::string& out, std::string_view s);

/// One log line under construction. Cheap when the level is disabled: nothing is built.
/// Not thread-safe; build and emit it on one thread.
class event {
public:
  event(const logger_ptr& logger, spdlog::level::level_enum level, std::string_view msg);
  event(const event&) = delete;
  event& operator=(const event&) = delete;
  /// Emits the line (if enabled).
  ~event();

  event& str(std::string_view key, std::string_view value);
  event& num(std::string_view key, int64_t value);
  event& real(std::string_view key, double value);
  event& flag(std::string_view key, bool value);

private:
  void key(std::string_view k);

  spdlog::logger* logger_;
  spdlog::level::level_enum level_;
  bool enabled_;
  std::string payload_;
};

/// The spdlog pattern that wraps payloads into one JSON object per line (UTC timestamps).
inline constexpr const char* json_pattern =
  R"({"ts":"%Y-%m-%dT%H:%M:%S.%eZ","level":"%l",%v})";

} // namespace parley::log
