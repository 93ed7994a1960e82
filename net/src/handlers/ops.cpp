#include "parley/net/ops.hpp"

#include <nlohmann/json.hpp>

namespace parley::net {

void add_ops_routes(router& r, std::shared_ptr<readiness_source> readiness, build_info info,
                    std::function<nlohmann::json()> upstreams) {
  r.add(http::verb::get, "/healthz", [](const exchange_ptr& ex) {
    ex->respond_json(http::status::ok, {{"status", "ok"}});
  });
  r.add(http::verb::get, "/readyz", [readiness, upstreams](const exchange_ptr& ex) {
    readiness->check([ex, upstreams](std::vector<dependency_status> deps) {
      bool ready = true;
      auto checks = nlohmann::json::array();
      for (auto& d : deps) {
        ready = ready && d.ok;
        checks.push_back({{"name", d.name}, {"ok", d.ok}, {"detail", d.detail}});
      }
      nlohmann::json body = {{"status", ready ? "ready" : "not_ready"}, {"checks", checks}};
      if (upstreams)
        body["upstreams"] = upstreams();
      ex->respond_json(ready ? http::status::ok : http::status::service_unavailable, body);
    });
  });
  r.add(http::verb::get, "/version", [info](const exchange_ptr& ex) {
    ex->respond_json(http::status::ok, {{"version", info.version},
                                        {"commit", info.commit},
                                        {"build_type", info.build_type}});
  });
}

} // namespace parley::net
