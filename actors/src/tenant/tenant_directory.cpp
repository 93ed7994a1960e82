// The tenant directory: which node's tenant manager owns a tenant. On a single node every
// tenant is the local manager's.
#include "parley/actors/spawn.hpp"

#include <caf/all.hpp>

namespace parley::actors {
namespace {

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

tenant_directory_actor spawn_tenant_directory(caf::actor_system& sys, tenant_manager_actor local) {
  return sys.spawn(directory_impl, std::move(local));
}

} // namespace parley::actors
