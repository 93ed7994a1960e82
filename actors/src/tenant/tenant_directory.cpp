// The tenant directory: which node's tenant manager owns a tenant. On a single node every
// tenant is the local manager's. In a cluster a tenant is placed by rendezvous hashing over
// the active members (the membership loop keeps them current), and a remote manager is
// reached over CAF's middleman: connected on first use, monitored, dropped when its
// connection goes (the next lookup connects afresh), so that lookups fail fast instead of
// waiting on a dead peer.
#include "parley/actors/spawn.hpp"
#include "parley/config/loader.hpp"

#include <caf/all.hpp>
#include <caf/io/middleman.hpp>
#include <caf/io/middleman_actor.hpp>

#include <unordered_map>

namespace parley::actors {
namespace {

struct remote_manager {
  int64_t incarnation = 0;
  tenant_manager_actor handle; ///< null while connecting
  std::vector<caf::typed_response_promise<tenant_manager_actor>> waiting;
};

struct directory_state {
  tenant_manager_actor local;
  std::shared_ptr<const cluster_identity> cluster; ///< null: a single node
  std::chrono::milliseconds call_timeout{3000};
  caf::io::middleman_actor connector; ///< dials other nodes (plain or TLS)
  log::logger_ptr logger;
  std::vector<cluster_member> members;
  std::unordered_map<std::string, remote_manager> remotes;
  static inline const char* name = "parley.tenant_directory";

  const cluster_member* member(const std::string& node_id) const {
    for (auto& m : members)
      if (m.node_id == node_id)
        return &m;
    return nullptr;
  }
};

using directory_ptr = tenant_directory_actor::stateful_pointer<directory_state>;

/// "host:port" -> (host, port); port 0 when malformed.
std::pair<std::string, uint16_t> split_address(const std::string& address) {
  try {
    return config::split_host_port(address, "owner address");
  } catch (const std::exception&) {
    return {address, 0};
  }
}

/// The manager of `node_id`: ours, a connected remote one, or a connection started now --
/// to the address our member list has, or else to `fallback_address` (an owner named by
/// another node's claim, which joined after our list was last read).
caf::result<tenant_manager_actor> manager_of(directory_ptr self, const std::string& node_id,
                                             const std::string& fallback_address = {}) {
  auto& st = self->state;
  if (node_id == st.cluster->node_id())
    return st.local;
  cluster_member fallback;
  auto* m = st.member(node_id);
  if (!m) {
    auto [host, port] = split_address(fallback_address);
    if (port == 0)
      return caf::make_error(actor_errc::node_unreachable, node_id);
    fallback = cluster_member{node_id, 0, host, port, false};
    m = &fallback;
  }
  auto& r = st.remotes[node_id];
  if (r.incarnation != m->incarnation) { // a new incarnation: its old connection is stale
    r.handle = nullptr;
    r.incarnation = m->incarnation;
  }
  if (r.handle)
    return r.handle;
  auto promise = self->make_response_promise<tenant_manager_actor>();
  r.waiting.push_back(promise);
  if (r.waiting.size() > 1)
    return promise; // connecting already
  auto incarnation = m->incarnation;
  auto finish = [=](tenant_manager_actor h, const caf::error& err) {
    auto it = self->state.remotes.find(node_id);
    if (it == self->state.remotes.end())
      return;
    auto waiting = std::move(it->second.waiting);
    it->second.waiting.clear();
    if (h && it->second.incarnation == incarnation) {
      it->second.handle = h;
      self->monitor(h);
    }
    if (!h && self->state.logger)
      log::event(self->state.logger, spdlog::level::warn, "cannot reach cluster node")
        .str("node_id", node_id)
        .str("error", to_string(err));
    for (auto& p : waiting) {
      if (h)
        p.deliver(h);
      else
        p.deliver(caf::make_error(actor_errc::node_unreachable, node_id + ": " + to_string(err)));
    }
  };
  self
    ->request(st.connector, st.call_timeout,
              caf::connect_atom::value, m->host, m->port)
    .then(
      [=](const caf::node_id&, caf::strong_actor_ptr& ptr, const std::set<std::string>&) {
        if (!ptr)
          return finish(tenant_manager_actor(), caf::make_error(caf::sec::no_actor_published_at_port));
        finish(caf::actor_cast<tenant_manager_actor>(std::move(ptr)), caf::error());
      },
      [=](caf::error& err) { finish(tenant_manager_actor(), err); });
  return promise;
}

tenant_directory_actor::behavior_type
directory_impl(directory_ptr self, tenant_manager_actor local,
               std::shared_ptr<const cluster_identity> cluster,
               std::chrono::milliseconds call_timeout, caf::io::middleman_actor connector,
               log::logger_ptr logger) {
  self->state.logger = std::move(logger);
  self->state.local = std::move(local);
  if (cluster && !connector)
    connector = self->home_system().middleman().actor_handle();
  self->state.connector = std::move(connector);
  self->state.cluster = std::move(cluster);
  self->state.call_timeout = call_timeout;
  self->set_down_handler([=](caf::down_msg& dm) {
    // A remote manager's connection went: drop it, the next lookup connects afresh.
    for (auto& [id, r] : self->state.remotes)
      if (r.handle && r.handle.address() == dm.source) {
        r.handle = nullptr;
        if (self->state.logger)
          log::event(self->state.logger, spdlog::level::warn, "lost the connection to a cluster node")
            .str("node_id", id)
            .str("reason", to_string(dm.reason));
      }
  });
  return {
    [=](locate_atom, const std::string& tenant_id) -> caf::result<tenant_manager_actor> {
      auto& st = self->state;
      if (!st.cluster)
        return st.local;
      auto owner = place(tenant_id, st.members);
      if (owner.empty())
        return caf::make_error(actor_errc::no_lease);
      return manager_of(self, owner);
    },
    [=](locate_atom, node_atom, const std::string& node_id,
        const std::string& address) -> caf::result<tenant_manager_actor> {
      if (!self->state.cluster)
        return self->state.local;
      return manager_of(self, node_id, address);
    },
    [=](members_atom, std::vector<cluster_member>& members) {
      auto& st = self->state;
      st.members = std::move(members);
      // Forget the managers of nodes that left (their handles die with their connection).
      for (auto it = st.remotes.begin(); it != st.remotes.end();) {
        auto* m = st.member(it->first);
        if ((!m || m->incarnation != it->second.incarnation) && it->second.waiting.empty())
          it = st.remotes.erase(it);
        else
          ++it;
      }
    },
  };
}

} // namespace

tenant_directory_actor spawn_tenant_directory(caf::actor_system& sys, tenant_manager_actor local) {
  return sys.spawn(directory_impl, std::move(local), nullptr, std::chrono::milliseconds(3000),
                   caf::io::middleman_actor{}, nullptr);
}

tenant_directory_actor spawn_cluster_directory(caf::actor_system& sys, tenant_manager_actor local,
                                               std::shared_ptr<const cluster_identity> cluster,
                                               std::chrono::milliseconds call_timeout,
                                               caf::io::middleman_actor connector,
                                               log::logger_ptr logger) {
  return sys.spawn(directory_impl, std::move(local), std::move(cluster), call_timeout,
                   std::move(connector), std::move(logger));
}

} // namespace parley::actors
