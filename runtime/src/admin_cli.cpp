#include "admin_cli.hpp"

#include "parley/net/cluster_view.hpp"
#include "parley/tenants/admin_ops.hpp"
#include "wiring.hpp"

#include <iomanip>
#include <iostream>
#include <sstream>

namespace parley::runtime::detail {
namespace {

using json = nlohmann::json;
using namespace tenants;

void print_table(const std::vector<std::string>& header,
                 const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> width(header.size());
  for (std::size_t i = 0; i < header.size(); ++i)
    width[i] = header[i].size();
  for (auto& r : rows)
    for (std::size_t i = 0; i < r.size(); ++i)
      width[i] = std::max(width[i], r[i].size());
  auto line = [&](const std::vector<std::string>& r) {
    for (std::size_t i = 0; i < r.size(); ++i)
      std::cout << std::left << std::setw(static_cast<int>(width[i]) + 2) << r[i];
    std::cout << "\n";
  };
  line(header);
  for (auto& r : rows)
    line(r);
}

std::string show(const json& v) {
  if (v.is_null())
    return "-";
  if (v.is_string())
    return v.get<std::string>();
  if (v.is_array()) {
    std::string out;
    for (auto& e : v)
      out += (out.empty() ? "" : ",") + show(e);
    return out;
  }
  return v.dump();
}

void print_tenants(const std::vector<json>& items, bool as_json, const json& whole) {
  if (as_json) {
    std::cout << whole.dump(2) << "\n";
    return;
  }
  std::vector<std::vector<std::string>> rows;
  for (auto& t : items)
    rows.push_back({show(t["id"]), show(t["slug"]), show(t["name"]), show(t["status"])});
  print_table({"ID", "SLUG", "NAME", "STATUS"}, rows);
}

void print_keys(const std::vector<json>& items, bool as_json, const json& whole) {
  if (as_json) {
    std::cout << whole.dump(2) << "\n";
    return;
  }
  std::vector<std::vector<std::string>> rows;
  for (auto& k : items)
    rows.push_back({show(k["id"]), show(k["name"]), show(k["scopes"]), show(k["expires_at"]),
                    show(k["revoked_at"]), show(k["last_used_at"])});
  print_table({"ID", "NAME", "SCOPES", "EXPIRES_AT", "REVOKED_AT", "LAST_USED_AT"}, rows);
}

/// A duration in milliseconds, short: 812ms, 4.2s, 17m, 5h, 3d.
std::string short_age(int64_t ms) {
  if (ms < 0)
    ms = 0;
  std::ostringstream out;
  if (ms < 1000)
    out << ms << "ms";
  else if (ms < 120000)
    out << ms / 1000 << "." << ms % 1000 / 100 << "s";
  else if (ms < 2 * 3600000)
    out << ms / 60000 << "m";
  else if (ms < 2 * 86400000)
    out << ms / 3600000 << "h";
  else
    out << ms / 86400000 << "d";
  return out.str();
}

void print_cluster(const json& view) {
  std::vector<std::vector<std::string>> rows;
  for (auto& n : view["nodes"])
    rows.push_back({show(n["id"]), show(n["incarnation"]), show(n["status"]),
                    n["live"].get<bool>() ? "yes" : "no", show(n["address"]),
                    n["http_address"] == "" ? "-" : show(n["http_address"]),
                    short_age(n["lease_age_ms"].get<int64_t>()), show(n["tenants"])});
  if (rows.empty())
    std::cout << "no node has joined the cluster yet\n";
  else
    print_table({"ID", "INCARNATION", "STATUS", "LIVE", "ADDRESS", "HTTP_ADDRESS", "LEASE_AGE",
                 "TENANTS"},
                rows);
  if (!view.contains("tenant"))
    return;
  auto& t = view["tenant"];
  std::cout << "\ntenant " << show(t["id"]) << "\n  owner:     ";
  if (t["owner"].is_null())
    std::cout << "none (never claimed)";
  else
    std::cout << show(t["owner"]) << " (incarnation " << show(t["owner_incarnation"])
              << ", epoch " << show(t["epoch"])
              << (t["owner_live"].get<bool>() ? ", live)" : ", not live: the next claim takes it)");
  std::cout << "\n  placed on: "
            << (t["placed_on"].get<std::string>().empty() ? "none (no live active node)"
                                                          : show(t["placed_on"]))
            << "\n";
}

/// `parley admin cluster`: the membership and ownership tables of a PostgreSQL store.
int run_cluster(const admin_options& o, const config::settings& s) {
  static const char* single_node =
    "parley: SQLite deployments are single-node: there is no cluster to show (a cluster needs "
    "store.backend = \"postgres\", shared by every node)\n";
  if (s.store.backend != "postgres") {
    std::cerr << single_node;
    return 1;
  }
  auto store = open_configured_store(s);
  auto* cluster = store->cluster();
  if (!cluster) {
    std::cerr << single_node;
    return 1;
  }
  // The CLI works on a possibly fresh database: bring the schema up first.
  if (auto m = store->migrate(); !m.ok()) {
    std::cerr << "parley: store unavailable: " << persistence::to_string(m.code()) << "\n";
    return 1;
  }
  auto view = net::cluster_view(*cluster, o.tenant_id);
  if (!view.ok()) {
    std::cerr << "parley: the cluster tables cannot be read: "
              << persistence::to_string(view.code()) << ": " << view.error().detail << "\n";
    return 1;
  }
  if (o.json)
    std::cout << view->dump(2) << "\n";
  else
    print_cluster(*view);
  return 0;
}

template <class T>
bool failed(const op_result<T>& r) {
  if (auto* e = std::get_if<op_error>(&r)) {
    std::cerr << "parley: " << e->message;
    if (!e->param.empty())
      std::cerr << " (" << e->param << ")";
    std::cerr << "\n";
    return true;
  }
  return false;
}

} // namespace

void add_admin_commands(CLI::App& admin, admin_options& o) {
  admin.add_flag("--json", o.json, "Print JSON instead of a table");
  admin.require_subcommand(1);
  auto* tenant = admin.add_subcommand("tenant", "Manage tenants");
  tenant->require_subcommand(1);
  o.tenant_create = tenant->add_subcommand("create", "Create a tenant");
  o.tenant_create->add_option("--slug", o.slug, "Unique slug (a-z, 0-9, -)")->required();
  o.tenant_create->add_option("--name", o.name, "Display name")->required();
  o.tenant_create->add_option("--status", o.status, "active or suspended");
  o.tenant_create->add_option("--config", o.config_json, "Tenant config as a JSON object");
  o.tenant_list = tenant->add_subcommand("list", "List tenants");
  o.tenant_list->add_option("--limit", o.limit, "Page size (1-100)");
  o.tenant_list->add_option("--after", o.after, "Cursor: list tenants after this id");
  o.tenant_list->add_flag("--include-deleted", o.include_deleted, "Include deleted tenants");
  o.tenant_get = tenant->add_subcommand("get", "Show a tenant");
  o.tenant_get->add_option("tenant_id", o.tenant_id, "Tenant id")->required();
  o.tenant_update = tenant->add_subcommand("update", "Change a tenant");
  o.tenant_update->add_option("tenant_id", o.tenant_id, "Tenant id")->required();
  o.tenant_update->add_option("--slug", o.slug, "New slug");
  o.tenant_update->add_option("--name", o.name, "New name");
  o.tenant_update->add_option("--status", o.status, "active or suspended");
  o.tenant_update->add_option("--config", o.config_json, "JSON object merged into the config");
  o.tenant_delete = tenant->add_subcommand("delete", "Delete a tenant (soft)");
  o.tenant_delete->add_option("tenant_id", o.tenant_id, "Tenant id")->required();

  auto* key = admin.add_subcommand("key", "Manage a tenant's API keys");
  key->require_subcommand(1);
  o.key_create = key->add_subcommand("create", "Create an API key (the secret is shown once)");
  o.key_create->add_option("tenant_id", o.tenant_id, "Tenant id")->required();
  o.key_create->add_option("--name", o.name, "Key name")->required();
  o.key_create->add_option("--scopes", o.scopes, "Comma-separated: chat,conversations");
  o.key_create->add_option("--expires-in", o.expires_in, "Seconds until the key expires");
  o.key_list = key->add_subcommand("list", "List a tenant's keys (never secrets)");
  o.key_list->add_option("tenant_id", o.tenant_id, "Tenant id")->required();
  o.key_list->add_option("--limit", o.limit, "Page size (1-100)");
  o.key_list->add_option("--after", o.after, "Cursor");
  o.key_revoke = key->add_subcommand("revoke", "Revoke a key at once");
  o.key_revoke->add_option("tenant_id", o.tenant_id, "Tenant id")->required();
  o.key_revoke->add_option("key_id", o.key_id, "Key id")->required();
  o.key_rotate = key->add_subcommand("rotate", "Give a key a new secret");
  o.key_rotate->add_option("tenant_id", o.tenant_id, "Tenant id")->required();
  o.key_rotate->add_option("key_id", o.key_id, "Key id")->required();
  o.key_rotate->add_option("--grace", o.grace, "Seconds the old secret keeps working");

  o.cluster = admin.add_subcommand(
    "cluster", "Show the cluster's nodes, leases and tenant counts (PostgreSQL only)");
  o.cluster->add_option("--tenant", o.tenant_id,
                        "Also show this tenant's owner and where placement puts it");
  // `admin cluster --json` as well as `admin --json cluster`.
  o.cluster->fallthrough();
}

int run_migrate(const config::settings& s) {
  auto store = open_configured_store(s);
  auto r = store->migrate();
  if (!r.ok()) {
    std::cerr << "parley: migration failed: " << persistence::to_string(r.code()) << ": "
              << r.error().detail << "\n";
    return 1;
  }
  if (r->empty())
    std::cout << "parley: " << store->backend() << " schema is up to date\n";
  for (int v : *r)
    std::cout << "parley: applied migration " << v << "\n";
  return 0;
}

int run_admin(const admin_options& o, const config::settings& s) {
  if (*o.cluster)
    return run_cluster(o, s);
  auto store = open_configured_store(s);
  // The CLI works on a possibly fresh database: bring the schema up first.
  if (auto m = store->migrate(); !m.ok()) {
    std::cerr << "parley: store unavailable: " << persistence::to_string(m.code()) << "\n";
    return 1;
  }
  admin_ops ops(*store, resolve_pepper(s), default_limits(s));
  audit_context who{"cli", ""};
  auto parse_config = [&](json& body) -> bool {
    if (o.config_json.empty())
      return true;
    auto c = json::parse(o.config_json, nullptr, false);
    if (c.is_discarded()) {
      std::cerr << "parley: --config is not valid JSON\n";
      return false;
    }
    body["config"] = c;
    return true;
  };
  persistence::page_request page{o.after, o.limit};

  if (*o.tenant_create || *o.tenant_update) {
    json body = json::object();
    if (!o.slug.empty()) body["slug"] = o.slug;
    if (!o.name.empty()) body["name"] = o.name;
    if (!o.status.empty()) body["status"] = o.status;
    if (!parse_config(body))
      return 2;
    auto r = *o.tenant_create ? ops.create_tenant(body, who) : ops.update_tenant(o.tenant_id, body, who);
    if (failed(r))
      return 1;
    auto j = admin_ops::tenant_json(std::get<persistence::tenant_record>(r));
    print_tenants({j}, o.json, j);
    return 0;
  }
  if (*o.tenant_list) {
    auto r = ops.list_tenants(page, o.include_deleted);
    if (failed(r))
      return 1;
    std::vector<json> items;
    for (auto& t : std::get<0>(r).items)
      items.push_back(admin_ops::tenant_json(t));
    print_tenants(items, o.json, json{{"data", items}, {"has_more", std::get<0>(r).has_more}});
    return 0;
  }
  if (*o.tenant_get || *o.tenant_delete) {
    auto r = *o.tenant_get ? ops.get_tenant(o.tenant_id) : ops.delete_tenant(o.tenant_id, who);
    if (failed(r))
      return 1;
    auto j = admin_ops::tenant_json(std::get<persistence::tenant_record>(r));
    print_tenants({j}, o.json, j);
    return 0;
  }
  if (*o.key_create || *o.key_rotate) {
    op_result<issued_key> r = op_error{};
    if (*o.key_create) {
      json body = {{"name", o.name}};
      if (!o.scopes.empty()) {
        json scopes = json::array();
        std::stringstream ss(o.scopes);
        std::string item;
        while (std::getline(ss, item, ','))
          scopes.push_back(item);
        body["scopes"] = scopes;
      }
      if (o.expires_in > 0)
        body["expires_in_seconds"] = o.expires_in;
      r = ops.create_key(o.tenant_id, body, who);
    } else {
      json body = json::object();
      if (o.grace > 0)
        body["grace_seconds"] = o.grace;
      r = ops.rotate_key(o.tenant_id, o.key_id, body, who);
    }
    if (failed(r))
      return 1;
    auto& k = std::get<issued_key>(r);
    auto j = admin_ops::key_json(k.record);
    j["key"] = k.full_key;
    if (o.json) {
      std::cout << j.dump(2) << "\n";
    } else {
      print_keys({j}, false, j);
      std::cout << "\nkey (shown once, store it now): " << k.full_key << "\n";
    }
    return 0;
  }
  if (*o.key_list) {
    auto r = ops.list_keys(o.tenant_id, page);
    if (failed(r))
      return 1;
    std::vector<json> items;
    for (auto& k : std::get<0>(r).items)
      items.push_back(admin_ops::key_json(k));
    print_keys(items, o.json, json{{"data", items}, {"has_more", std::get<0>(r).has_more}});
    return 0;
  }
  if (*o.key_revoke) {
    auto r = ops.revoke_key(o.tenant_id, o.key_id, who);
    if (failed(r))
      return 1;
    auto j = admin_ops::key_json(std::get<persistence::api_key_record>(r));
    print_keys({j}, o.json, j);
    return 0;
  }
  return 2;
}

} // namespace parley::runtime::detail
