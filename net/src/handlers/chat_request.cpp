#include "parley/net/chat_request.hpp"

#include "parley/actors/provider.hpp"
#include "parley/net/json_body.hpp"
#include "parley/tenants/response_cache.hpp"

#include <boost/beast/core/string.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>

namespace parley::net {
namespace {

using json = nlohmann::json;

constexpr std::size_t max_messages = 4096;
constexpr std::size_t max_model_bytes = 256;

bool valid_role(const std::string& r) {
  return r == "system" || r == "developer" || r == "user" || r == "assistant" || r == "tool" ||
         r == "function";
}

/// Fields parley reads itself; every other allowed field is passed through to the upstream.
bool consumed_here(const std::string& k) {
  return k == "model" || k == "messages" || k == "stream" || k == "stream_options" ||
         k == "max_tokens" || k == "max_completion_tokens" || k == "n" || k == "conversation";
}

api_error bad(std::string msg, std::string param) {
  return {api_errc::invalid_request, std::move(msg), std::move(param)};
}

std::optional<api_error> check_message(const json& m, std::size_t i) {
  auto param = "messages[" + std::to_string(i) + "]";
  if (!m.is_object())
    return bad(param + " must be an object.", param);
  auto role = m.find("role");
  if (role == m.end() || !role->is_string() || !valid_role(role->get_ref<const std::string&>()))
    return bad(param + ".role must be one of system, developer, user, assistant, tool.",
               param + ".role");
  auto content = m.find("content");
  bool may_omit = *role == "assistant" && (m.contains("tool_calls") || m.contains("function_call"));
  if (content == m.end() || content->is_null()) {
    if (!may_omit)
      return bad(param + ".content is required.", param + ".content");
  } else if (content->is_array()) {
    for (auto& part : *content) {
      if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
        return bad(param + ".content parts must be objects with a type.", param + ".content");
      if (part["type"] == "text" && (!part.contains("text") || !part["text"].is_string()))
        return bad(param + ".content text parts need a string text.", param + ".content");
    }
  } else if (!content->is_string()) {
    return bad(param + ".content must be a string or an array of content parts.",
               param + ".content");
  }
  return std::nullopt;
}

std::optional<api_error> read_flags(const json& body, actors::chat_request& out) {
  if (auto n = body.find("n"); n != body.end() && !n->is_null()) {
    if (!n->is_number_integer() || n->get<int64_t>() != 1)
      return bad("Only n = 1 is supported.", "n");
  }
  if (auto s = body.find("stream"); s != body.end() && !s->is_null()) {
    if (!s->is_boolean())
      return bad("stream must be a boolean.", "stream");
    out.stream = s->get<bool>();
  }
  if (auto so = body.find("stream_options"); so != body.end() && !so->is_null()) {
    if (!so->is_object())
      return bad("stream_options must be an object.", "stream_options");
    if (!out.stream)
      return bad("stream_options is only allowed when stream is true.", "stream_options");
    if (auto iu = so->find("include_usage"); iu != so->end()) {
      if (!iu->is_boolean())
        return bad("stream_options.include_usage must be a boolean.", "stream_options.include_usage");
      out.include_usage = iu->get<bool>();
    }
  }
  for (const char* name : {"max_tokens", "max_completion_tokens"}) {
    auto mt = body.find(name);
    if (mt == body.end() || mt->is_null())
      continue;
    if (!mt->is_number_integer() || mt->get<int64_t>() < 1 || mt->get<int64_t>() > 10'000'000)
      return bad(std::string(name) + " must be a positive integer.", name);
    out.max_tokens = mt->get<int64_t>();
  }
  if (auto c = body.find("conversation"); c != body.end() && !c->is_null()) {
    if (!c->is_string() || c->get_ref<const std::string&>().empty() ||
        c->get_ref<const std::string&>().size() > 64)
      return bad("conversation must be a conversation id.", "conversation");
    out.conversation_id = c->get<std::string>();
  }
  if (auto t = body.find("temperature"); t != body.end() && !t->is_null()) {
    if (!t->is_number() || t->get<double>() < 0 || t->get<double>() > 2)
      return bad("temperature must be a number between 0 and 2.", "temperature");
  }
  return std::nullopt;
}

} // namespace

const std::vector<std::string_view>& chat_parameters() {
  // CreateChatCompletionRequest's properties (OpenAI OpenAPI 2.3.0), plus `conversation`.
  static const std::vector<std::string_view> names{
    "audio", "conversation", "frequency_penalty", "function_call", "functions", "logit_bias",
    "logprobs", "max_completion_tokens", "max_tokens", "messages", "metadata", "modalities",
    "model", "moderation", "n", "parallel_tool_calls", "prediction", "presence_penalty",
    "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention", "reasoning_effort",
    "response_format", "safety_identifier", "seed", "service_tier", "stop", "store", "stream",
    "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user",
    "verbosity", "web_search_options"};
  return names;
}

std::optional<api_error> parse_chat_request(std::string_view text, std::string_view cache_header,
                                            actors::chat_request& out) {
  json body;
  if (auto e = parse_untrusted_json(text, body))
    return e;
  if (!body.is_object())
    return bad("The request body must be a JSON object.", "");
  auto& allowed = chat_parameters();
  for (auto& [k, v] : body.items())
    if (std::find(allowed.begin(), allowed.end(), k) == allowed.end())
      return api_error{api_errc::unknown_parameter,
                       "Unrecognized request argument supplied: " + k.substr(0, 64), k.substr(0, 64)};
  if (auto m = body.find("model"); m != body.end()) {
    if (!m->is_string() || m->get_ref<const std::string&>().size() > max_model_bytes)
      return bad("model must be a string.", "model");
    out.model = m->get<std::string>();
  }
  auto msgs = body.find("messages");
  if (msgs == body.end())
    return bad("Missing required parameter: 'messages'.", "messages");
  if (!msgs->is_array() || msgs->empty())
    return bad("messages must be a non-empty array.", "messages");
  if (msgs->size() > max_messages)
    return bad("Too many messages (at most 4096).", "messages");
  for (std::size_t i = 0; i < msgs->size(); ++i) {
    if (auto e = check_message((*msgs)[i], i))
      return e;
    out.messages.push_back(actors::to_chat_message((*msgs)[i]));
  }
  if (auto e = read_flags(body, out))
    return e;
  // Only allow-listed fields remain: those parley does not read itself go upstream as is.
  json extra = json::object();
  for (auto& [k, v] : body.items())
    if (!consumed_here(k))
      extra[k] = v;
  out.extra_json = extra.dump();
  out.extra_tokens = extra.empty() ? 0 : actors::estimate_tokens(out.extra_json);
  // The response cache: used when the output is deterministic (temperature 0) or the client
  // opts in with `x-parley-cache: use`; `x-parley-cache: bypass` skips it.
  auto t = body.find("temperature");
  bool deterministic = t != body.end() && t->is_number() && t->get<double>() == 0.0;
  if (boost::beast::iequals(cache_header, "bypass"))
    out.cache_mode = 2;
  else if (boost::beast::iequals(cache_header, "use") || deterministic)
    out.cache_mode = 1;
  if (out.cache_mode == 1 && out.conversation_id.empty()) {
    // Everything that changes the output; not `stream` (a cached answer replays either way)
    // nor `user`/`metadata` (they label, they do not change the text).
    json key = extra;
    key.erase("user");
    key.erase("metadata");
    key.erase("store");
    key["model"] = out.model;
    key["messages"] = *msgs;
    key["max_tokens"] = out.max_tokens;
    out.cache_key = tenants::cache_key(key.dump());
  }
  return std::nullopt;
}

} // namespace parley::net
