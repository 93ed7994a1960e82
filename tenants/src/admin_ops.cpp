#include "parley/tenants/admin_ops.hpp"

#include "parley/persistence/ids.hpp"
#include "parley/tenants/api_key.hpp"

#include <algorithm>

namespace parley::tenants {

using json = nlohmann::json;
using namespace persistence;

namespace {

constexpr int64_t max_grace_seconds = 7 * 86400;

op_error from_store(const store_error& e, const std::string& not_found_message) {
  switch (e.code) {
    case persistence_errc::not_found:
      return {op_errc::not_found, not_found_message, "", e.detail};
    case persistence_errc::conflict:
      return {op_errc::conflict, "conflicts with an existing record", "", e.detail};
    case persistence_errc::unavailable:
    case persistence_errc::timeout:
      return {op_errc::unavailable, "the store is unavailable; retry later", "", e.detail};
    default:
      return {op_errc::internal, "internal store error", "", e.detail};
  }
}

op_error invalid(std::string message, std::string param) {
  return {op_errc::invalid_request, std::move(message), std::move(param), ""};
}

/// Refuses fields outside `allowed` (OpenAI answers unknown parameters with 400 too).
std::optional<op_error> only_fields(const json& body, std::initializer_list<const char*> allowed) {
  if (!body.is_object())
    return invalid("the request body must be a JSON object", "");
  for (auto& [k, v] : body.items())
    if (std::none_of(allowed.begin(), allowed.end(), [&](const char* a) { return k == a; }))
      return op_error{op_errc::unknown_parameter, "Unrecognized request argument supplied: " + k,
                      k, ""};
  return std::nullopt;
}

std::optional<op_error> read_name(const json& body, std::string& out, bool required) {
  auto it = body.find("name");
  if (it == body.end())
    return required ? std::optional<op_error>(invalid("name is required", "name")) : std::nullopt;
  if (!it->is_string() || it->get<std::string>().empty() || it->get<std::string>().size() > 200)
    return invalid("name must be a string of 1-200 characters", "name");
  out = it->get<std::string>();
  return std::nullopt;
}

json opt_seconds(const std::optional<millis>& ms) {
  return ms ? json(*ms / 1000) : json(nullptr);
}

} // namespace

const std::vector<std::string>& known_scopes() {
  static const std::vector<std::string> scopes{"chat", "conversations"};
  return scopes;
}

admin_ops::admin_ops(store& s, std::string pepper, tenant_limits default_limits)
  : store_(s), pepper_(std::move(pepper)), default_limits_(default_limits) {}

void admin_ops::record(const audit_context& who, const std::string& action,
                       const std::string& target, const std::string& tenant_id, json details) {
  audit_record a;
  a.id = new_id("aud_");
  a.at = now_millis();
  a.actor = who.actor;
  a.action = action;
  a.target = target;
  a.tenant_id = tenant_id;
  a.request_id = who.request_id;
  a.details_json = details.dump();
  // The mutation already happened; a failed audit write must not undo or hide it. The
  // caller's access log still has the request; the store error surfaces in readiness.
  (void)store_.append_audit(a);
}

op_result<tenant_record> admin_ops::create_tenant(const json& body, const audit_context& who) {
  if (auto e = only_fields(body, {"slug", "name", "status", "config"}))
    return *e;
  tenant_record t;
  auto slug = body.find("slug");
  if (slug == body.end() || !slug->is_string())
    return invalid("slug is required and must be a string", "slug");
  t.slug = slug->get<std::string>();
  if (!valid_slug(t.slug))
    return invalid("slug must be 1-64 characters of a-z, 0-9 and '-', not starting or ending "
                   "with '-'", "slug");
  if (auto e = read_name(body, t.name, true))
    return *e;
  t.status = "active";
  if (auto st = body.find("status"); st != body.end()) {
    if (!st->is_string() || (*st != "active" && *st != "suspended"))
      return invalid("status must be \"active\" or \"suspended\"", "status");
    t.status = st->get<std::string>();
  }
  // A new tenant starts from the node's finite default limits; the creator's config (which may
  // say 0 = no limit, explicitly) is applied on top.
  tenant_config cfg;
  cfg.limits = default_limits_;
  if (auto c = body.find("config"); c != body.end())
    if (auto problem = apply_config_patch(cfg, *c))
      return invalid(problem->message, problem->param);
  t.config_json = to_json_text(cfg);
  t.id = new_id("ten_");
  t.created_at = t.updated_at = now_millis();
  auto r = store_.create_tenant(t);
  if (!r.ok()) {
    auto e = from_store(r.error(), "tenant not found");
    if (e.code == op_errc::conflict) {
      e.message = "a tenant with slug '" + t.slug + "' already exists";
      e.param = "slug";
    }
    return e;
  }
  record(who, "tenant.create", r->id, r->id, {{"slug", r->slug}});
  return std::move(r).value();
}

op_result<page<tenant_record>> admin_ops::list_tenants(const page_request& p,
                                                        bool include_deleted) {
  auto r = store_.list_tenants(p, include_deleted);
  if (!r.ok())
    return from_store(r.error(), "");
  return std::move(r).value();
}

op_result<tenant_record> admin_ops::get_tenant(const std::string& id) {
  auto r = store_.get_tenant(id);
  if (!r.ok())
    return from_store(r.error(), "No tenant with id '" + id + "'.");
  return std::move(r).value();
}

op_result<tenant_record> admin_ops::live_tenant(const std::string& id) {
  auto t = get_tenant(id);
  if (auto* rec = std::get_if<tenant_record>(&t); rec && rec->status == "deleted")
    return op_error{op_errc::not_found, "No tenant with id '" + id + "'.", "", "deleted"};
  return t;
}

op_result<tenant_record> admin_ops::update_tenant(const std::string& id, const json& body,
                                                  const audit_context& who) {
  if (auto e = only_fields(body, {"slug", "name", "status", "config"}))
    return *e;
  auto current = live_tenant(id);
  if (auto* e = std::get_if<op_error>(&current))
    return *e;
  auto& cur = std::get<tenant_record>(current);
  tenant_update u;
  json changed = json::array();
  if (auto it = body.find("slug"); it != body.end()) {
    if (!it->is_string() || !valid_slug(it->get<std::string>()))
      return invalid("slug must be 1-64 characters of a-z, 0-9 and '-'", "slug");
    u.slug = it->get<std::string>();
    changed.push_back("slug");
  }
  if (body.contains("name")) {
    std::string name;
    if (auto e = read_name(body, name, true))
      return *e;
    u.name = name;
    changed.push_back("name");
  }
  if (auto it = body.find("status"); it != body.end()) {
    if (!it->is_string() || (*it != "active" && *it != "suspended"))
      return invalid("status must be \"active\" or \"suspended\" (use DELETE to delete)", "status");
    u.status = it->get<std::string>();
    changed.push_back("status");
  }
  if (auto it = body.find("config"); it != body.end()) {
    auto cfg = parse_stored_config(cur.config_json);
    if (auto problem = apply_config_patch(cfg, *it))
      return invalid(problem->message, problem->param);
    u.config_json = to_json_text(cfg);
    changed.push_back("config");
  }
  auto r = store_.update_tenant(id, u, now_millis());
  if (!r.ok()) {
    auto e = from_store(r.error(), "No tenant with id '" + id + "'.");
    if (e.code == op_errc::conflict) {
      e.message = "a tenant with that slug already exists";
      e.param = "slug";
    }
    return e;
  }
  record(who, "tenant.update", id, id, {{"fields", changed}});
  return std::move(r).value();
}

op_result<tenant_record> admin_ops::delete_tenant(const std::string& id, const audit_context& who) {
  auto current = live_tenant(id);
  if (auto* e = std::get_if<op_error>(&current))
    return *e;
  tenant_update u;
  u.status = "deleted";
  auto r = store_.update_tenant(id, u, now_millis());
  if (!r.ok())
    return from_store(r.error(), "No tenant with id '" + id + "'.");
  record(who, "tenant.delete", id, id, json::object());
  return std::move(r).value();
}

op_result<issued_key> admin_ops::create_key(const std::string& tenant_id, const json& body,
                                            const audit_context& who) {
  if (auto e = only_fields(body, {"name", "scopes", "expires_at", "expires_in_seconds"}))
    return *e;
  auto tenant = live_tenant(tenant_id);
  if (auto* e = std::get_if<op_error>(&tenant))
    return *e;
  api_key_record k;
  if (auto e = read_name(body, k.name, true))
    return *e;
  k.scopes = known_scopes();
  if (auto it = body.find("scopes"); it != body.end()) {
    if (!it->is_array() || it->empty())
      return invalid("scopes must be a non-empty array of: chat, conversations", "scopes");
    k.scopes.clear();
    for (auto& s : *it) {
      if (!s.is_string() || std::find(known_scopes().begin(), known_scopes().end(),
                                       s.get<std::string>()) == known_scopes().end())
        return invalid("unknown scope; known scopes are: chat, conversations", "scopes");
      if (std::find(k.scopes.begin(), k.scopes.end(), s.get<std::string>()) == k.scopes.end())
        k.scopes.push_back(s.get<std::string>());
    }
  }
  auto now = now_millis();
  bool has_at = body.contains("expires_at"), has_in = body.contains("expires_in_seconds");
  if (has_at && has_in)
    return invalid("give either expires_at or expires_in_seconds, not both", "expires_at");
  if (has_at) {
    auto& v = body["expires_at"];
    if (!v.is_null()) {
      if (!v.is_number_integer() || v.get<int64_t>() * 1000 <= now)
        return invalid("expires_at must be a future Unix time in seconds", "expires_at");
      k.expires_at = v.get<int64_t>() * 1000;
    }
  }
  if (has_in) {
    auto& v = body["expires_in_seconds"];
    if (!v.is_number_integer() || v.get<int64_t>() <= 0 || v.get<int64_t>() > 10LL * 365 * 86400)
      return invalid("expires_in_seconds must be a positive integer (at most 10 years)",
                     "expires_in_seconds");
    k.expires_at = now + v.get<int64_t>() * 1000;
  }
  auto minted = mint_key(new_id());
  k.id = minted.key_id;
  k.tenant_id = tenant_id;
  k.secret_hash = hash_secret(pepper_, minted.secret);
  k.created_at = k.updated_at = now;
  auto r = store_.create_key(k);
  if (!r.ok())
    return from_store(r.error(), "No tenant with id '" + tenant_id + "'.");
  record(who, "key.create", k.id, tenant_id, {{"name", k.name}, {"scopes", k.scopes}});
  return issued_key{std::move(r).value(), std::move(minted.full)};
}

op_result<page<api_key_record>> admin_ops::list_keys(const std::string& tenant_id,
                                                      const page_request& p) {
  auto tenant = get_tenant(tenant_id);
  if (auto* e = std::get_if<op_error>(&tenant))
    return *e;
  auto r = store_.list_keys(tenant_id, p);
  if (!r.ok())
    return from_store(r.error(), "");
  return std::move(r).value();
}

op_result<api_key_record> admin_ops::revoke_key(const std::string& tenant_id,
                                                const std::string& key_id,
                                                const audit_context& who) {
  auto r = store_.revoke_key(tenant_id, key_id, now_millis());
  if (!r.ok())
    return from_store(r.error(), "No key with id '" + key_id + "' for this tenant.");
  record(who, "key.revoke", key_id, tenant_id, json::object());
  return std::move(r).value();
}

op_result<issued_key> admin_ops::rotate_key(const std::string& tenant_id,
                                            const std::string& key_id, const json& body,
                                            const audit_context& who) {
  if (auto e = only_fields(body, {"grace_seconds"}))
    return *e;
  int64_t grace = 0;
  if (auto it = body.find("grace_seconds"); it != body.end()) {
    if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > max_grace_seconds)
      return invalid("grace_seconds must be an integer between 0 and 604800", "grace_seconds");
    grace = it->get<int64_t>();
  }
  auto current = store_.get_key(key_id);
  if (!current.ok() || current->tenant_id != tenant_id)
    return op_error{op_errc::not_found, "No key with id '" + key_id + "' for this tenant.", "",
                    current.ok() ? "other tenant" : current.error().detail};
  if (current->revoked_at)
    return op_error{op_errc::conflict, "a revoked key cannot be rotated", "", ""};
  auto now = now_millis();
  auto secret = new_secret();
  std::optional<millis> until;
  if (grace > 0)
    until = now + grace * 1000;
  auto r = store_.rotate_key(tenant_id, key_id, hash_secret(pepper_, secret), until, now);
  if (!r.ok())
    return from_store(r.error(), "No key with id '" + key_id + "' for this tenant.");
  record(who, "key.rotate", key_id, tenant_id, {{"grace_seconds", grace}});
  return issued_key{std::move(r).value(), format_key(key_id, secret)};
}

op_result<std::vector<usage_row>> admin_ops::usage(const std::string& tenant_id, millis from,
                                                   millis to) {
  auto tenant = get_tenant(tenant_id);
  if (auto* e = std::get_if<op_error>(&tenant))
    return *e;
  auto r = store_.query_usage(tenant_id, from, to);
  if (!r.ok())
    return from_store(r.error(), "");
  return std::move(r).value();
}

op_result<std::vector<usage_entry>> admin_ops::usage_attempts(const std::string& tenant_id,
                                                             millis from, millis to, int limit) {
  auto tenant = get_tenant(tenant_id);
  if (auto* e = std::get_if<op_error>(&tenant))
    return *e;
  auto r = store_.list_usage_entries(tenant_id, from, to, limit);
  if (!r.ok())
    return from_store(r.error(), "");
  return std::move(r).value();
}

op_result<page<audit_record>> admin_ops::audit(const audit_filter& f, const page_request& p) {
  auto r = store_.list_audit(f, p);
  if (!r.ok())
    return from_store(r.error(), "");
  return std::move(r).value();
}

json admin_ops::tenant_json(const tenant_record& t) {
  auto cfg = json::parse(t.config_json, nullptr, false);
  return json{{"id", t.id},
              {"object", "tenant"},
              {"slug", t.slug},
              {"name", t.name},
              {"status", t.status},
              {"config", cfg.is_discarded() ? json::object() : cfg},
              {"created_at", t.created_at / 1000},
              {"updated_at", t.updated_at / 1000}};
}

json admin_ops::key_json(const api_key_record& k) {
  return json{{"id", k.id},
              {"object", "api_key"},
              {"tenant_id", k.tenant_id},
              {"name", k.name},
              {"prefix", "prly_" + k.id},
              {"scopes", k.scopes},
              {"created_at", k.created_at / 1000},
              {"expires_at", opt_seconds(k.expires_at)},
              {"revoked_at", opt_seconds(k.revoked_at)},
              {"last_used_at", opt_seconds(k.last_used_at)},
              {"previous_secret_valid_until", opt_seconds(k.previous_valid_until)}};
}

json admin_ops::audit_json(const audit_record& a) {
  auto details = json::parse(a.details_json, nullptr, false);
  return json{{"id", a.id},
              {"object", "audit_event"},
              {"at", a.at / 1000},
              {"actor", a.actor},
              {"action", a.action},
              {"target", a.target},
              {"tenant_id", a.tenant_id.empty() ? json(nullptr) : json(a.tenant_id)},
              {"request_id", a.request_id.empty() ? json(nullptr) : json(a.request_id)},
              {"details", details.is_discarded() ? json::object() : details}};
}

json admin_ops::usage_json(const usage_row& u) {
  return json{{"tenant_id", u.tenant_id},
              {"key_id", u.key_id.empty() ? json(nullptr) : json(u.key_id)},
              {"model", u.model},
              {"period_start", u.period_start / 1000},
              {"requests", u.requests},
              {"prompt_tokens", u.prompt_tokens},
              {"completion_tokens", u.completion_tokens},
              {"errors", u.errors}};
}

json admin_ops::usage_entry_json(const usage_entry& e) {
  return json{{"object", "usage.attempt"},
              {"request_id", e.request_id},
              {"attempt", e.attempt},
              {"key_id", e.key_id.empty() ? json(nullptr) : json(e.key_id)},
              {"model", e.model},
              {"served_model", e.served_model},
              {"deployment", e.deployment.empty() ? json(nullptr) : json(e.deployment)},
              {"prompt_tokens", e.prompt_tokens},
              {"completion_tokens", e.completion_tokens},
              {"outcome", e.outcome},
              {"upstream_status", e.upstream_status == 0 ? json(nullptr) : json(e.upstream_status)},
              {"at_ms", e.at}};
}

} // namespace parley::tenants
