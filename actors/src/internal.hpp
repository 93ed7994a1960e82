#pragma once

#include "parley/actors/protocol.hpp"
#include "parley/actors/services.hpp"

#include <caf/all.hpp>

#include <memory>
#include <string>

/// Declarations shared by the actor implementations (not public).
namespace parley::actors::detail {

/// Spawns the actor of one tenant, linked to `parent` (its manager).
tenant_actor spawn_tenant(caf::local_actor* parent, std::string tenant_id,
                          std::shared_ptr<const chat_services> svc);

/// Spawns the actor of one conversation (history, one turn at a time, passivation), linked
/// to `parent` (its tenant).
conversation_actor spawn_conversation(caf::local_actor* parent, std::string tenant_id,
                                      std::string conversation_id, tenant_actor tenant,
                                      std::shared_ptr<const chat_services> svc);

/// Supervisor exit handling, shared by the tenant manager and tenant actors. Every linked
/// child's exit (normal or not) arrives here exactly once and only removes it from
/// state.children -- the down message or `ended` does the rest of the bookkeeping, in any
/// order. An exit request for ourselves or a non-normal exit of anyone else (our supervisor
/// shutting down) ends us.
template <class Self>
void absorb_child_exits(Self* self) {
  self->set_exit_handler([=](caf::exit_msg& em) {
    if (em.source != self->address()) {
      if (self->state.children.erase(em.source) > 0 || !em.reason)
        return;
    }
    self->quit(em.reason);
  });
}

} // namespace parley::actors::detail
