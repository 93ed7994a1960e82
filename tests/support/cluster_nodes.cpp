#include "support/cluster_nodes.hpp"

#include "support/admin_client.hpp"
#include "support/wait.hpp"

#include <catch2/catch.hpp>

#include <csignal>
#include <regex>

namespace parley::test {

cluster_nodes::cluster_nodes(int n, const std::string& extra_toml, int lease_ttl_ms)
  : cluster_nodes(std::vector<std::string>(static_cast<std::size_t>(n), extra_toml), lease_ttl_ms) {}

std::string cluster_nodes::config_toml(const temp_dir& dir, const std::string& extra_toml) const {
  return "[http]\nlisten = \"127.0.0.1:0\"\n"
         "[store]\nbackend = \"postgres\"\npostgres_dsn = \"" + schema_.scoped_dsn() + "\"\n"
         "[data]\ndir = \"" + dir.path() + "\"\n"
         "[admin]\nkey = \"" + std::string(server_fixture::admin_key) + "\"\n"
         "[auth]\npepper = \"test-pepper-0123456789abcdef0123456789abcdef\"\n"
         "[log]\nlevel = \"info\"\n"
         "[cluster]\nenabled = true\nlisten = \"127.0.0.1:0\"\nlease_ttl_ms = " +
         std::to_string(lease_ttl_ms_) + "\ncall_timeout_ms = 2000\nheartbeat_ms = 500\n" +
         extra_toml;
}

cluster_nodes::cluster_nodes(const std::vector<std::string>& per_node_toml, int lease_ttl_ms)
  : lease_ttl_ms_(lease_ttl_ms) {
  int n = static_cast<int>(per_node_toml.size());
  for (int i = 0; i < n; ++i) {
    const auto& extra_toml = per_node_toml[static_cast<std::size_t>(i)];
    node nd;
    nd.dir = std::make_unique<temp_dir>();
    auto toml = config_toml(*nd.dir, extra_toml);
    nd.proc = start_parley(*nd.dir, toml, nd.http_port);
    static const std::regex id_re("\"msg\":\"joined the cluster\",\"node_id\":\"([^\"]+)\"");
    std::smatch m;
    auto out = nd.proc->output();
    REQUIRE(std::regex_search(out, m, id_re));
    nd.node_id = m[1].str();
    nodes_.push_back(std::move(nd));
  }
  // Every node sees every other as live (each reads the table at join and every TTL/4).
  for (auto& nd : nodes_) {
    INFO("node " << nd.node_id << " sees all " << n << " members");
    REQUIRE(wait_until(deadline_in(std::chrono::seconds(10)), [&] {
      auto r = admin_call(nd.http_port, http::verb::get, "/admin/v1/cluster");
      if (r.status != 200)
        return false;
      auto j = json::parse(r.body, nullptr, false);
      int live = 0;
      for (auto& x : j["nodes"])
        live += x["live"].get<bool>() ? 1 : 0;
      return live == n;
    }));
    // ...and its tenant directory has been told so (members are re-read every TTL/4).
    REQUIRE(wait_until(deadline_in(std::chrono::seconds(10)), [&] {
      return metric(nd.http_port, "parley_cluster_members") == n;
    }));
  }
}

cluster_nodes::~cluster_nodes() {
  for (auto& nd : nodes_)
    if (nd.proc && nd.http_port) {
      nd.proc->signal(SIGTERM);
      nd.proc->wait_exit(std::chrono::seconds(10));
    }
}

int cluster_nodes::index_of(const std::string& node_id) const {
  for (std::size_t i = 0; i < nodes_.size(); ++i)
    if (nodes_[i].node_id == node_id)
      return static_cast<int>(i);
  return -1;
}

bool cluster_nodes::stop(int i, std::chrono::milliseconds timeout) {
  auto& nd = nodes_.at(i);
  nd.proc->signal(SIGTERM);
  auto st = nd.proc->wait_exit(timeout);
  nd.http_port = 0;
  return st.has_value();
}

std::string cluster_nodes::output(int i) const { return nodes_.at(i).proc->output(); }

} // namespace parley::test
