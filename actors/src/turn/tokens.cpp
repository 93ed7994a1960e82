// Chat messages and their token estimates: what admission, budgets and the prompt builder
// count before any upstream says how many tokens a call really used.
#include "parley/actors/provider.hpp"

#include <nlohmann/json.hpp>

namespace parley::actors {

int64_t estimate_tokens(const std::string& text) {
  return static_cast<int64_t>((text.size() + 3) / 4);
}

namespace {
/// OpenAI's documented image cost: 85 tokens at detail "low"; a 1024x1024 image at "high"
/// (and "auto", which may pick high) is 85 + 4 tiles x 170. The size is not known without
/// fetching the image, so every non-low image is counted at that.
constexpr int64_t image_tokens_low = 85;
constexpr int64_t image_tokens_high = 765;

/// The estimated prompt cost of one content part that is not text.
int64_t part_tokens(const nlohmann::json& part) {
  auto type = part.value("type", "");
  if (type == "image_url") {
    auto img = part.find("image_url");
    bool low = img != part.end() && img->is_object() && img->value("detail", "") == "low";
    return low ? image_tokens_low : image_tokens_high;
  }
  // Audio, files and anything newer: their encoded payload, as text (conservative).
  return estimate_tokens(part.dump());
}

/// Role, text content (a string content, or the `text` of its text parts joined by
/// newlines) and the estimated prompt cost of a message object.
void read_role_and_text(const nlohmann::json& j, chat_message& m) {
  m.role = j.value("role", "");
  m.tokens = message_overhead_tokens;
  int64_t other = 0;
  for (auto& [k, v] : j.items())
    if (k != "role" && k != "content")
      other += estimate_tokens(v.dump()); // tool_calls, function_call, name, ...
  auto c = j.find("content");
  if (c != j.end()) {
    if (c->is_string()) {
      m.text = c->get<std::string>();
    } else if (c->is_array()) {
      for (auto& part : *c) {
        if (part.is_object() && part.value("type", "") == "text" && part.contains("text") &&
            part["text"].is_string()) {
          if (!m.text.empty())
            m.text += "\n";
          m.text += part["text"].get<std::string>();
        } else if (part.is_object()) {
          other += part_tokens(part);
        }
      }
    }
  }
  m.tokens += estimate_tokens(m.text) + other;
}
} // namespace

chat_message to_chat_message(const std::string& json_text) {
  chat_message m;
  m.json = json_text; // the caller's text as is
  auto j = nlohmann::json::parse(json_text, nullptr, false);
  if (j.is_object())
    read_role_and_text(j, m);
  return m;
}

chat_message to_chat_message(const nlohmann::json& j) {
  chat_message m;
  if (!j.is_object())
    return m;
  m.json = j.dump();
  read_role_and_text(j, m);
  return m;
}

} // namespace parley::actors
