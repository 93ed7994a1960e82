#include "parley/net/admin_api.hpp"

#include "parley/net/cluster_view.hpp"
#include "parley/net/json_body.hpp"
#include "parley/net/store_call.hpp"
#include "parley/net/tenant_locator.hpp"

#include <caf/all.hpp>
#include <nlohmann/json.hpp>

namespace parley::net {
namespace {

using json = nlohmann::json;
using tenants::op_errc;
using tenants::op_error;
using tenants::op_result;

api_error to_api(const op_error& e) {
  switch (e.code) {
    case op_errc::invalid_request: return {api_errc::invalid_request, e.message, e.param};
    case op_errc::unknown_parameter: return {api_errc::unknown_parameter, e.message, e.param};
    case op_errc::not_found: return {api_errc::not_found, e.message, e.param};
    case op_errc::conflict: return {api_errc::conflict, e.message, e.param};
    case op_errc::unavailable: return {api_errc::unavailable, e.message, ""};
    case op_errc::internal: return {api_errc::internal, "", ""};
  }
  return {api_errc::internal, "", ""};
}

/// Parses the JSON body; an empty body counts as {} for routes without required fields.
bool parse_body(const exchange_ptr& ex, json& out) {
  auto& body = ex->req().body();
  if (body.empty()) {
    out = json::object();
    return true;
  }
  if (auto bad = parse_untrusted_json(body, out)) {
    ex->respond_error(*bad);
    return false;
  }
  if (!out.is_object()) {
    ex->respond_error({api_errc::invalid_request, "The request body must be a JSON object.", ""});
    return false;
  }
  return true;
}

/// For routes that take no fields: an empty body or `{}` (anything else answers 400, so a body
/// is never silently ignored while the action runs).
bool no_body(const exchange_ptr& ex) {
  json body;
  if (!parse_body(ex, body))
    return false;
  if (!body.empty()) {
    auto k = body.begin().key().substr(0, 64);
    ex->respond_error({api_errc::unknown_parameter,
                       "Unrecognized request argument supplied: " + k, k});
    return false;
  }
  return true;
}

/// Reads ?limit=&after= ; answers 400 and returns false on a bad limit.
bool parse_page(const exchange_ptr& ex, persistence::page_request& p) {
  auto target = ex->req().target();
  auto limit = query_param(target, "limit");
  if (!limit.empty()) {
    char* end = nullptr;
    auto n = std::strtol(limit.c_str(), &end, 10);
    if (*end != '\0' || n < 1 || n > 100) {
      ex->respond_error({api_errc::invalid_request, "limit must be an integer from 1 to 100",
                         "limit"});
      return false;
    }
    p.limit = static_cast<int>(n);
  }
  p.after = query_param(target, "after");
  return true;
}

bool parse_time(const exchange_ptr& ex, const char* name, std::optional<int64_t>& out) {
  auto v = query_param(ex->req().target(), name);
  if (v.empty())
    return true;
  char* end = nullptr;
  auto n = std::strtoll(v.c_str(), &end, 10);
  if (*end != '\0' || n < 0) {
    ex->respond_error({api_errc::invalid_request,
                       std::string(name) + " must be a Unix time in seconds", name});
    return false;
  }
  out = n * 1000;
  return true;
}

template <class T>
json list_json(const persistence::page<T>& p, json (*one)(const T&)) {
  auto data = json::array();
  for (auto& item : p.items)
    data.push_back(one(item));
  return json{{"object", "list"},
              {"data", std::move(data)},
              {"has_more", p.has_more},
              {"next_after", p.has_more && !p.items.empty() ? json(p.items.back().id) : json(nullptr)}};
}

/// Answers an op_result: the value through `render`, an error through the table.
template <class T, class Render>
void answer(const exchange_ptr& ex, op_result<T>& r, http::status ok, Render render) {
  if (auto* e = std::get_if<op_error>(&r)) {
    ex->respond_error(to_api(*e));
    return;
  }
  ex->respond_json(ok, render(std::get<T>(r)));
}

tenants::audit_context who(const exchange_ptr& ex) {
  return {"admin", ex->ctx().request_id};
}

} // namespace

void add_admin_routes(router& r, admin_deps d) {
  using persistence::tenant_record;
  using persistence::api_key_record;
  auto* ops = &d.ops;
  auto* exec = &d.executor;
  auto* keys = &d.keys;
  const std::string tenants_path = "/admin/v1/tenants";

  r.add(http::verb::post, tenants_path, access::admin(), [=](const exchange_ptr& ex) {
    json body;
    if (!parse_body(ex, body))
      return;
    auto w = who(ex);
    store_call(ex, *exec, [=] { return ops->create_tenant(body, w); },
               [ex](op_result<tenant_record> res) {
                 answer(ex, res, http::status::created, tenants::admin_ops::tenant_json);
               });
  });

  r.add(http::verb::get, tenants_path, access::admin(), [=](const exchange_ptr& ex) {
    persistence::page_request p;
    if (!parse_page(ex, p))
      return;
    bool include_deleted = query_param(ex->req().target(), "include_deleted") == "true";
    store_call(ex, *exec, [=] { return ops->list_tenants(p, include_deleted); },
               [ex](op_result<persistence::page<tenant_record>> res) {
                 answer(ex, res, http::status::ok, [](auto& pg) {
                   return list_json<tenant_record>(pg, tenants::admin_ops::tenant_json);
                 });
               });
  });

  r.add(http::verb::get, tenants_path + "/{id}", access::admin(), [=](const exchange_ptr& ex) {
    auto id = ex->ctx().param("id");
    store_call(ex, *exec, [=] { return ops->get_tenant(id); },
               [ex](op_result<tenant_record> res) {
                 answer(ex, res, http::status::ok, tenants::admin_ops::tenant_json);
               });
  });

  r.add(http::verb::patch, tenants_path + "/{id}", access::admin(), [=](const exchange_ptr& ex) {
    json body;
    if (!parse_body(ex, body))
      return;
    auto id = ex->ctx().param("id");
    auto w = who(ex);
    store_call(ex, *exec, [=] { return ops->update_tenant(id, body, w); },
               [ex, keys, id](op_result<tenant_record> res) {
                 // Status and config changes apply to the very next request.
                 keys->invalidate_tenant(id);
                 answer(ex, res, http::status::ok, tenants::admin_ops::tenant_json);
               });
  });

  r.add(http::verb::delete_, tenants_path + "/{id}", access::admin(), [=](const exchange_ptr& ex) {
    auto id = ex->ctx().param("id");
    auto w = who(ex);
    store_call(ex, *exec, [=] { return ops->delete_tenant(id, w); },
               [ex, keys, id](op_result<tenant_record> res) {
                 keys->invalidate_tenant(id);
                 answer(ex, res, http::status::ok, [](const tenant_record& t) {
                   return json{{"id", t.id}, {"object", "tenant"}, {"deleted", true}};
                 });
               });
  });

  auto issued_json = [](const tenants::issued_key& k) {
    auto j = tenants::admin_ops::key_json(k.record);
    j["key"] = k.full_key; // the only time the secret is shown
    return j;
  };

  r.add(http::verb::post, tenants_path + "/{id}/keys", access::admin(), [=](const exchange_ptr& ex) {
    json body;
    if (!parse_body(ex, body))
      return;
    auto id = ex->ctx().param("id");
    auto w = who(ex);
    store_call(ex, *exec, [=] { return ops->create_key(id, body, w); },
               [ex, issued_json](op_result<tenants::issued_key> res) {
                 answer(ex, res, http::status::created, issued_json);
               });
  });

  r.add(http::verb::get, tenants_path + "/{id}/keys", access::admin(), [=](const exchange_ptr& ex) {
    persistence::page_request p;
    if (!parse_page(ex, p))
      return;
    auto id = ex->ctx().param("id");
    store_call(ex, *exec, [=] { return ops->list_keys(id, p); },
               [ex](op_result<persistence::page<api_key_record>> res) {
                 answer(ex, res, http::status::ok, [](auto& pg) {
                   return list_json<api_key_record>(pg, tenants::admin_ops::key_json);
                 });
               });
  });

  r.add(http::verb::post, tenants_path + "/{id}/keys/{key_id}/revoke", access::admin(), [=](const exchange_ptr& ex) {
    if (!no_body(ex))
      return;
    auto id = ex->ctx().param("id");
    auto key_id = ex->ctx().param("key_id");
    auto w = who(ex);
    store_call(ex, *exec, [=] { return ops->revoke_key(id, key_id, w); },
               [ex, keys, key_id](op_result<api_key_record> res) {
                 // Drop the cached key before answering: the very next request re-reads it.
                 keys->invalidate_key(key_id);
                 answer(ex, res, http::status::ok, tenants::admin_ops::key_json);
               });
  });

  r.add(http::verb::post, tenants_path + "/{id}/keys/{key_id}/rotate", access::admin(), [=](const exchange_ptr& ex) {
    json body;
    if (!parse_body(ex, body))
      return;
    auto id = ex->ctx().param("id");
    auto key_id = ex->ctx().param("key_id");
    auto w = who(ex);
    store_call(ex, *exec, [=] { return ops->rotate_key(id, key_id, body, w); },
               [ex, keys, key_id, issued_json](op_result<tenants::issued_key> res) {
                 keys->invalidate_key(key_id);
                 answer(ex, res, http::status::ok, issued_json);
               });
  });

  // Node-wide admission counters (the observability work exports them as metrics too).
  if (auto* c = d.counters)
    r.add(http::verb::get, "/admin/v1/stats", access::admin(), [c](const exchange_ptr& ex) {
      auto v = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
      ex->respond_json(http::status::ok,
                       {{"object", "stats"},
                        {"admission", {{"admitted", v(c->admitted)},
                                       {"rate_limited", v(c->rate_limited)},
                                       {"quota_rejected", v(c->quota_rejected)},
                                       {"shed_tenant", v(c->shed_tenant)},
                                       {"shed_node", v(c->shed_node)},
                                       {"budget_cutoffs", v(c->budget_cutoffs)}}},
                        {"cache", {{"hits", v(c->cache_hits)}, {"misses", v(c->cache_misses)}}}});
    });

  // The cluster as the store sees it: every node (live or not), its lease and tenant count;
  // with ?tenant_id=, who owns that tenant and where placement puts it now.
  auto* cluster = d.cluster;
  auto self_id = d.node_id;
  r.add(http::verb::get, "/admin/v1/cluster", access::admin(), [=](const exchange_ptr& ex) {
    if (!cluster) {
      ex->respond_json(http::status::ok, {{"object", "cluster"},
                                          {"enabled", false},
                                          {"node_id", nullptr},
                                          {"nodes", json::array()}});
      return;
    }
    auto tenant_id = query_param(ex->req().target(), "tenant_id");
    store_call(ex, *exec, [=]() -> op_result<json> {
      auto view = cluster_view(*cluster, tenant_id);
      if (!view.ok())
        return op_error{op_errc::unavailable, "The cluster tables cannot be read; retry later.", "",
                        view.error().detail};
      auto out = std::move(*view);
      out["node_id"] = self_id;
      for (auto& n : out["nodes"])
        n["self"] = n["id"] == self_id;
      return out;
    }, [ex](op_result<json> res) { answer(ex, res, http::status::ok, [](json& j) { return j; }); });
  });

  // Empties one tenant's response cache (in its tenant actor).
  auto* sys = d.sys;
  auto dir = d.tenants;
  r.add(http::verb::post, tenants_path + "/{id}/cache/flush", access::admin(), [=](const exchange_ptr& ex) {
    if (!no_body(ex))
      return;
    auto id = ex->ctx().param("id");
    store_call(ex, *exec, [=] { return ops->get_tenant(id); },
               [ex, sys, dir, id](op_result<tenant_record> res) {
                 if (auto* e = std::get_if<op_error>(&res))
                   return ex->respond_error(to_api(*e));
                 sys->spawn([ex, dir, id](caf::event_based_actor* self) {
                   auto fail = [ex](const caf::error&) {
                     ex->respond_error({api_errc::unavailable, "The tenant is unavailable; retry later.", ""});
                   };
                   dir->find(self, id, [=](actors::tenant_actor t) {
                     self->request(t, std::chrono::seconds(5), actors::flush_atom::value)
                       .then([ex, id](int64_t n) {
                         ex->respond_json(http::status::ok, {{"tenant_id", id},
                                                             {"object", "cache.flushed"},
                                                             {"entries", n}});
                       }, fail);
                   }, fail);
                 });
               });
  });

  r.add(http::verb::get, tenants_path + "/{id}/usage", access::admin(), [=](const exchange_ptr& ex) {
    std::optional<int64_t> from, to;
    if (!parse_time(ex, "from", from) || !parse_time(ex, "to", to))
      return;
    auto id = ex->ctx().param("id");
    int64_t f = from.value_or(0), t = to.value_or(INT64_MAX / 2);
    store_call(ex, *exec, [=] { return ops->usage(id, f, t); },
               [ex](op_result<std::vector<persistence::usage_row>> res) {
                 answer(ex, res, http::status::ok, [](auto& rows) {
                   auto data = json::array();
                   for (auto& u : rows)
                     data.push_back(tenants::admin_ops::usage_json(u));
                   return json{{"object", "list"}, {"data", data}};
                 });
               });
  });

  r.add(http::verb::get, tenants_path + "/{id}/usage/attempts", access::admin(),
        [=](const exchange_ptr& ex) {
    std::optional<int64_t> from, to;
    if (!parse_time(ex, "from", from) || !parse_time(ex, "to", to))
      return;
    int limit = 100;
    auto l = query_param(ex->req().target(), "limit");
    if (!l.empty()) {
      char* end = nullptr;
      auto n = std::strtol(l.c_str(), &end, 10);
      if (*end != '\0' || n < 1 || n > 1000)
        return ex->respond_error({api_errc::invalid_request,
                                  "limit must be an integer from 1 to 1000", "limit"});
      limit = static_cast<int>(n);
    }
    auto id = ex->ctx().param("id");
    int64_t f = from.value_or(0), t = to.value_or(INT64_MAX / 2);
    store_call(ex, *exec, [=] { return ops->usage_attempts(id, f, t, limit); },
               [ex](op_result<std::vector<persistence::usage_entry>> res) {
                 answer(ex, res, http::status::ok, [](auto& rows) {
                   auto data = json::array();
                   for (auto& e : rows)
                     data.push_back(tenants::admin_ops::usage_entry_json(e));
                   return json{{"object", "list"}, {"data", data}};
                 });
               });
  });

  r.add(http::verb::get, "/admin/v1/audit", access::admin(), [=](const exchange_ptr& ex) {
    persistence::page_request p;
    persistence::audit_filter f;
    if (!parse_page(ex, p) || !parse_time(ex, "since", f.since) || !parse_time(ex, "until", f.until))
      return;
    f.tenant_id = query_param(ex->req().target(), "tenant_id");
    f.action = query_param(ex->req().target(), "action");
    store_call(ex, *exec, [=] { return ops->audit(f, p); },
               [ex](op_result<persistence::page<persistence::audit_record>> res) {
                 answer(ex, res, http::status::ok, [](auto& pg) {
                   return list_json<persistence::audit_record>(pg, tenants::admin_ops::audit_json);
                 });
               });
  });
}

void add_model_routes(router& r, std::vector<model_info> models) {
  r.add(http::verb::get, "/v1/models", access::tenant(), [models](const exchange_ptr& ex) {
    auto data = json::array();
    auto& p = ex->ctx().principal;
    for (auto& m : models)
      if (p && p->config.allows(m.id))
        data.push_back({{"id", m.id}, {"object", "model"}, {"created", m.created},
                        {"owned_by", m.owned_by}});
    ex->respond_json(http::status::ok, {{"object", "list"}, {"data", data}});
  });
  r.add(http::verb::get, "/v1/models/{model}", access::tenant(), [models](const exchange_ptr& ex) {
    auto& p = ex->ctx().principal;
    auto& id = ex->ctx().param("model");
    for (auto& m : models)
      if (m.id == id && p && p->config.allows(m.id))
        return ex->respond_json(http::status::ok, {{"id", m.id}, {"object", "model"},
                                                   {"created", m.created}, {"owned_by", m.owned_by}});
    ex->respond_error({api_errc::model_not_found,
                       "The model `" + id + "` does not exist or you do not have access to it.",
                       "model"});
  });
}

} // namespace parley::net
