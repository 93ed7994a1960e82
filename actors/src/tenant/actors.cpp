#include "parley/actors/spawn.hpp"

#include <caf/all.hpp>

#include <unordered_map>
#include <unordered_set>

namespace parley::actors {

const char* to_string(actor_errc code) noexcept {
  switch (code) {
    case actor_errc::tenant_isolated: return "tenant_isolated";
    case actor_errc::overloaded: return "overloaded";
    case actor_errc::draining: return "draining";
    case actor_errc::unknown_tenant: return "unknown_tenant";
  }
  return "unknown";
}

void register_types(caf::actor_system_config& cfg) {
  cfg.add_message_type<manager_stats>("parley.manager_stats");
  cfg.add_error_category(caf::atom("parley"),
                         [](uint8_t code, caf::atom_value, const caf::message&) -> std::string {
                           return std::string("parley::") +
                                  to_string(static_cast<actor_errc>(code));
                         });
}

namespace {

struct tenant_state {
  std::string tenant_id;
  std::string config_json;
  static inline const char* name = "parley.tenant";
};

tenant_actor::behavior_type tenant_impl(tenant_actor::stateful_pointer<tenant_state> self,
                                        std::string tenant_id) {
  self->state.tenant_id = std::move(tenant_id);
  return {
    [=](caf::get_atom) { return self->state.tenant_id; },
    [=](config_atom, std::string config_json) { self->state.config_json = std::move(config_json); },
  };
}

struct manager_state {
  std::unordered_map<std::string, tenant_actor> tenants;
  std::unordered_map<caf::actor_addr, std::string> by_addr;
  std::unordered_set<caf::actor_addr> children; ///< linked children whose exit is pending
  manager_stats stats;
  log::logger_ptr logger;
  static inline const char* name = "parley.tenant_manager";
};

tenant_manager_actor::behavior_type
manager_impl(tenant_manager_actor::stateful_pointer<manager_state> self, log::logger_ptr logger) {
  self->state.logger = std::move(logger);
  // Tenants are linked so that they die with their manager; a tenant that dies must not take
  // the manager (and every other tenant) with it. Exits from tenants are handled by the down
  // handler below; any other exit request (shutdown) ends the manager.
  self->set_exit_handler([=](caf::exit_msg& em) {
    // A linked child's exit arrives exactly once; forget it and carry on.
    if (em.source != self->address() && self->state.children.erase(em.source) > 0)
      return;
    self->quit(em.reason);
  });
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& st = self->state;
    auto it = st.by_addr.find(dm.source);
    if (it == st.by_addr.end())
      return;
    log::event(st.logger, dm.reason ? spdlog::level::warn : spdlog::level::debug,
               "tenant actor stopped")
      .str("tenant_id", it->second)
      .str("reason", to_string(dm.reason));
    st.tenants.erase(it->second);
    st.by_addr.erase(it);
    st.stats.active_tenants = st.tenants.size();
  });
  return {
    [=](tenant_atom, const std::string& tenant_id) -> tenant_actor {
      auto& st = self->state;
      auto it = st.tenants.find(tenant_id);
      if (it != st.tenants.end())
        return it->second;
      // Linked: the tenants die with their manager; monitored: the manager learns of
      // every tenant that stops, to forget it (and, with the chat work, restart it).
      auto t = self->spawn<caf::linked + caf::monitored>(tenant_impl, tenant_id);
      st.tenants.emplace(tenant_id, t);
      st.by_addr.emplace(t.address(), tenant_id);
      st.children.insert(t.address());
      ++st.stats.spawned;
      st.stats.active_tenants = st.tenants.size();
      return t;
    },
    [=](stats_atom) { return self->state.stats; },
  };
}

struct directory_state {
  tenant_manager_actor local;
  static inline const char* name = "parley.tenant_directory";
};

tenant_directory_actor::behavior_type
directory_impl(tenant_directory_actor::stateful_pointer<directory_state> self,
               tenant_manager_actor local) {
  self->state.local = std::move(local);
  return {
    [=](locate_atom, const std::string&) { return self->state.local; },
  };
}

} // namespace

tenant_manager_actor spawn_tenant_manager(caf::actor_system& sys, log::logger_ptr logger) {
  return sys.spawn(manager_impl, std::move(logger));
}

tenant_directory_actor spawn_tenant_directory(caf::actor_system& sys, tenant_manager_actor local) {
  return sys.spawn(directory_impl, std::move(local));
}

} // namespace parley::actors
