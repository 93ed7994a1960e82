#pragma once

#include "support/http_client.hpp"
#include "support/server_fixture.hpp"

#include <nlohmann/json.hpp>

/// Helpers to provision tenants and keys through the real admin API in tests.
namespace parley::test {

using json = nlohmann::json;

inline std::map<std::string, std::string> admin_headers() {
  return {{"Authorization", std::string("Bearer ") + server_fixture::admin_key}};
}

inline std::map<std::string, std::string> bearer(const std::string& key) {
  return {{"Authorization", "Bearer " + key}};
}

inline http_reply admin_call(uint16_t port, http::verb method, const std::string& target,
                             const json& body = nullptr) {
  return fetch(port, method, target, body.is_null() ? std::string{} : body.dump(), admin_headers());
}

/// Creates a tenant and returns its JSON (REQUIREs 201).
json create_tenant(uint16_t port, const std::string& slug, const json& extra = json::object());
/// Creates a key and returns its JSON, with the secret in ["key"] (REQUIREs 201).
json create_key(uint16_t port, const std::string& tenant_id, const json& extra = json::object());

/// One sample of the node's GET /metrics (as the admin sees it), named as exposed, e.g.
/// `parley_admitted_total` or `parley_actor_restarts_total{kind="tenant"}`; -1 when the node
/// does not expose that sample. Never asserts, so it may serve as a wait_until() condition.
double metric(uint16_t port, const std::string& sample);

} // namespace parley::test
