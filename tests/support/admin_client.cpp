#include "support/admin_client.hpp"

#include <catch2/catch.hpp>

#include <cstdlib>

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

double metric(uint16_t port, const std::string& sample) {
  auto r = fetch(port, http::verb::get, "/metrics", {}, admin_headers());
  auto pos = r.body.find("\n" + sample + " ");
  if (r.status != 200 || pos == std::string::npos)
    return -1;
  return std::strtod(r.body.c_str() + pos + sample.size() + 2, nullptr);
}

} // namespace parley::test
