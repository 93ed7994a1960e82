#include "parley/net/chat_api.hpp"

#include "parley/net/json_body.hpp"
#include "parley/net/store_call.hpp"
#include "parley/net/tenant_locator.hpp"
#include "parley/persistence/ids.hpp"

#include <caf/all.hpp>
#include <nlohmann/json.hpp>

namespace parley::net {
namespace {

using json = nlohmann::json;
using namespace persistence;
using namespace std::chrono_literals;

json conversation_json(const conversation_record& c) {
  auto meta = json::parse(c.metadata_json, nullptr, false);
  return {{"id", c.id},
          {"object", "conversation"},
          {"created_at", c.created_at / 1000},
          {"metadata", meta.is_object() ? meta : json::object()}};
}

/// A stored message as a conversation item (OpenAI's item shape: content parts).
json item_json(const message_record& m) {
  auto msg = json::parse(m.content_json, nullptr, false);
  json parts = json::array();
  auto type = m.role == "assistant" ? "output_text" : "input_text";
  if (msg.is_object() && msg.contains("content")) {
    auto& c = msg["content"];
    if (c.is_string())
      parts.push_back({{"type", type}, {"text", c}});
    else if (c.is_array())
      for (auto& p : c)
        parts.push_back(p.is_object() && p.value("type", "") == "text"
                          ? json{{"type", type}, {"text", p.value("text", "")}}
                          : p);
  }
  return {{"id", "msg_" + m.conversation_id.substr(m.conversation_id.find('_') + 1) + "_" +
                   std::to_string(m.seq)},
          {"type", "message"},
          {"role", m.role},
          {"status", "completed"},
          {"content", parts},
          {"created_at", m.created_at / 1000}};
}

/// Validates OpenAI-style metadata: at most 16 string pairs (keys <= 64, values <= 512).
bool valid_metadata(const json& m) {
  if (!m.is_object() || m.size() > 16)
    return false;
  for (auto& [k, v] : m.items())
    if (k.size() > 64 || !v.is_string() || v.get<std::string>().size() > 512)
      return false;
  return true;
}

bool parse_limit(const exchange_ptr& ex, int& limit) {
  auto v = query_param(ex->req().target(), "limit");
  if (v.empty())
    return true;
  char* end = nullptr;
  auto n = std::strtol(v.c_str(), &end, 10);
  if (*end != '\0' || n < 1 || n > 100) {
    ex->respond_error({api_errc::invalid_request, "limit must be an integer from 1 to 100", "limit"});
    return false;
  }
  limit = static_cast<int>(n);
  return true;
}

void answer_store_error(const exchange_ptr& ex, const store_error& e, const std::string& id) {
  ex->respond_error(from_store(e, "No conversation found with id '" + id + "'."));
}

/// Tells the tenant's actor that a conversation is gone, so a live conversation actor stops.
void forget(caf::actor_system& sys, std::shared_ptr<tenant_locator> tenants, std::string tenant_id,
            std::string conversation_id) {
  sys.spawn([=](caf::event_based_actor* self) {
    tenants->find(self, tenant_id,
                [=](actors::tenant_actor t) { self->send(t, actors::forget_atom::value, conversation_id); },
                [](const caf::error&) {});
  });
}

} // namespace

void add_conversation_routes(router& r, chat_deps d) {
  auto* st = &d.store;
  auto* exec = &d.executor;
  auto* sys = &d.sys;
  auto dir = d.tenants;

  r.add(http::verb::post, "/v1/conversations", access::tenant("conversations"), [=](const exchange_ptr& ex) {
    json body = json::object();
    if (!ex->req().body().empty()) {
      if (auto bad = parse_untrusted_json(ex->req().body(), body))
        return ex->respond_error(*bad);
      if (!body.is_object())
        return ex->respond_error({api_errc::invalid_request, "The request body must be a JSON object.", ""});
    }
    for (auto& [k, v] : body.items())
      if (k != "metadata" && k != "items")
        return ex->respond_error({api_errc::unknown_parameter, "Unrecognized request argument supplied: " + k, k});
    json meta = body.value("metadata", json::object());
    if (meta.is_null())
      meta = json::object();
    if (!valid_metadata(meta))
      return ex->respond_error({api_errc::invalid_request,
                                "metadata must be an object of at most 16 string values", "metadata"});
    if (body.contains("items") && !(body["items"].is_array() && body["items"].empty()))
      return ex->respond_error({api_errc::invalid_request,
                                "initial items are not supported; send messages with chat completions",
                                "items"});
    conversation_record c;
    c.id = new_id("conv_");
    c.tenant_id = ex->ctx().tenant_id;
    c.metadata_json = meta.dump();
    c.created_at = c.updated_at = now_millis();
    store_call(ex, *exec, [st, c] { return st->create_conversation(c); },
               [ex](result<conversation_record> res) {
                 if (!res.ok())
                   return answer_store_error(ex, res.error(), "");
                 ex->respond_json(http::status::ok, conversation_json(*res));
               });
  });

  r.add(http::verb::get, "/v1/conversations", access::tenant("conversations"), [=](const exchange_ptr& ex) {
    page_request p;
    if (!parse_limit(ex, p.limit))
      return;
    p.after = query_param(ex->req().target(), "after");
    auto tenant = ex->ctx().tenant_id;
    store_call(ex, *exec, [st, tenant, p] { return st->list_conversations(tenant, p); },
               [ex](result<page<conversation_record>> res) {
                 if (!res.ok())
                   return answer_store_error(ex, res.error(), "");
                 json data = json::array();
                 for (auto& c : res->items)
                   data.push_back(conversation_json(c));
                 ex->respond_json(http::status::ok,
                                  {{"object", "list"},
                                   {"data", data},
                                   {"first_id", res->items.empty() ? json(nullptr) : json(res->items.front().id)},
                                   {"last_id", res->items.empty() ? json(nullptr) : json(res->items.back().id)},
                                   {"has_more", res->has_more}});
               });
  });

  r.add(http::verb::get, "/v1/conversations/{id}", access::tenant("conversations"), [=](const exchange_ptr& ex) {
    auto tenant = ex->ctx().tenant_id;
    auto id = ex->ctx().param("id");
    store_call(ex, *exec, [st, tenant, id] { return st->get_conversation(tenant, id); },
               [ex, id](result<conversation_record> res) {
                 if (!res.ok())
                   return answer_store_error(ex, res.error(), id);
                 ex->respond_json(http::status::ok, conversation_json(*res));
               });
  });

  r.add(http::verb::delete_, "/v1/conversations/{id}", access::tenant("conversations"), [=](const exchange_ptr& ex) {
    auto tenant = ex->ctx().tenant_id;
    auto id = ex->ctx().param("id");
    store_call(ex, *exec, [st, tenant, id] { return st->delete_conversation(tenant, id); },
               [ex, id, tenant, sys, dir](status res) {
                 if (!res.ok())
                   return answer_store_error(ex, res.error(), id);
                 forget(*sys, dir, tenant, id);
                 ex->respond_json(http::status::ok,
                                  {{"id", id}, {"object", "conversation.deleted"}, {"deleted", true}});
               });
  });

  r.add(http::verb::get, "/v1/conversations/{id}/items", access::tenant("conversations"), [=](const exchange_ptr& ex) {
    int limit = 100;
    if (!parse_limit(ex, limit))
      return;
    auto after_param = query_param(ex->req().target(), "after");
    int64_t after = 0;
    if (!after_param.empty()) {
      auto pos = after_param.rfind('_');
      char* end = nullptr;
      after = std::strtoll(after_param.c_str() + (pos == std::string::npos ? 0 : pos + 1), &end, 10);
      if (*end != '\0' || after < 0)
        return ex->respond_error({api_errc::invalid_request, "after must be an item id", "after"});
    }
    auto tenant = ex->ctx().tenant_id;
    auto id = ex->ctx().param("id");
    store_call(ex, *exec,
               [st, tenant, id, after, limit] { return st->list_messages(tenant, id, after, limit + 1); },
               [ex, id, limit](result<std::vector<message_record>> res) {
                 if (!res.ok())
                   return answer_store_error(ex, res.error(), id);
                 bool more = static_cast<int>(res->size()) > limit;
                 if (more)
                   res->resize(static_cast<std::size_t>(limit));
                 json data = json::array();
                 for (auto& m : *res)
                   data.push_back(item_json(m));
                 ex->respond_json(http::status::ok,
                                  {{"object", "list"},
                                   {"data", data},
                                   {"first_id", data.empty() ? json(nullptr) : data.front()["id"]},
                                   {"last_id", data.empty() ? json(nullptr) : data.back()["id"]},
                                   {"has_more", more}});
               });
  });
}

} // namespace parley::net
