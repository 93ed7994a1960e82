#include "support/admin_client.hpp"

#include <catch2/catch.hpp>

namespace parley::test {

json create_tenant(uint16_t port, const std::string& slug, const json& extra) {
  json body = {{"slug", slug}, {"name", "Tenant " + slug}};
  body.update(extra);
  auto r = admin_call(port, http::verb::post, "/admin/v1/tenants", body);
  INFO(r.body);
  REQUIRE(r.status == 201);
  return json::parse(r.body);
}

json create_key(uint16_t port, const std::string& tenant_id, const json& extra) {
  json body = {{"name", "test key"}};
  body.update(extra);
  auto r = admin_call(port, http::verb::post, "/admin/v1/tenants/" + tenant_id + "/keys", body);
  INFO(r.body);
  REQUIRE(r.status == 201);
  return json::parse(r.body);
}

} // namespace parley::test
