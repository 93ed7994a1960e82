#include "parley/net/json_body.hpp"

#include <cmath>
#include <string>
#include <unordered_set>
#include <vector>

namespace parley::net {
namespace {

using json = nlohmann::json;

/// Thrown from the parser callback to stop at the first violation (caught below).
struct refused {
  api_error error;
};

/// The parser callback's state: which object each level is (for duplicate keys).
class guard {
public:
  explicit guard(const json_limits& l) : limits_(l) {}

  bool operator()(int depth, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        // `depth` counts the containers around this one: this one is level depth + 1.
        if (depth + 1 > limits_.max_depth)
          throw refused{{api_errc::invalid_request,
                         "The JSON body is nested more than " + std::to_string(limits_.max_depth) +
                           " levels deep.",
                         ""}};
        if (event == json::parse_event_t::object_start)
          objects_.push_back(next_object_++);
        break;
      case json::parse_event_t::object_end:
        if (!objects_.empty())
          objects_.pop_back();
        break;
      case json::parse_event_t::key: {
        auto& k = parsed.get_ref<const std::string&>();
        if (k.size() > limits_.max_key_bytes)
          throw refused{{api_errc::invalid_request, "A key in the JSON body is too long.", ""}};
        std::string id = std::to_string(objects_.empty() ? 0 : objects_.back());
        id += '\0';
        id += k;
        if (!keys_.insert(std::move(id)).second)
          throw refused{{api_errc::invalid_request,
                         "The JSON body repeats the key '" + k.substr(0, 64) + "' in one object.",
                         ""}};
        break;
      }
      case json::parse_event_t::value:
        if (parsed.is_string() &&
            parsed.get_ref<const std::string&>().size() > limits_.max_string_bytes)
          throw refused{{api_errc::invalid_request, "A string in the JSON body is too long.", ""}};
        if (parsed.is_number_float() && !std::isfinite(parsed.get<double>()))
          throw refused{{api_errc::invalid_request,
                         "A number in the JSON body is out of range.", ""}};
        break;
      case json::parse_event_t::array_end:
        break;
    }
    return true;
  }

private:
  const json_limits& limits_;
  std::vector<uint64_t> objects_;
  uint64_t next_object_ = 1;
  std::unordered_set<std::string> keys_;
};

} // namespace

std::optional<api_error> parse_untrusted_json(std::string_view text, json& out,
                                              const json_limits& limits) {
  guard g(limits);
  try {
    // The callback sees every container as it opens: depth is checked before the parser
    // goes one level deeper, so no recursion ever meets a document deeper than the limit.
    out = json::parse(text.begin(), text.end(),
                      [&g](int depth, json::parse_event_t event, json& parsed) {
                        return g(depth, event, parsed);
                      });
    return std::nullopt;
  } catch (const refused& r) {
    out = json();
    return r.error;
  } catch (const json::out_of_range&) {
    out = json();
    return api_error{api_errc::invalid_request, "A number in the JSON body is out of range.", ""};
  } catch (const std::exception&) {
    out = json();
    return api_error{api_errc::invalid_json, "We could not parse the JSON body of your request.",
                     ""};
  }
}

} // namespace parley::net
