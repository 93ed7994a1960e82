// Registration of parley's message types and error categories with CAF.
#include "parley/actors/spawn.hpp"

#include <caf/all.hpp>

namespace parley::actors {

const char* to_string(actor_errc code) noexcept {
  switch (code) {
    case actor_errc::tenant_isolated: return "tenant_isolated";
    case actor_errc::overloaded: return "overloaded";
    case actor_errc::draining: return "draining";
    case actor_errc::unknown_tenant: return "unknown_tenant";
    case actor_errc::not_owner: return "not_owner";
    case actor_errc::no_lease: return "no_lease";
    case actor_errc::node_unreachable: return "node_unreachable";
  }
  return "unknown";
}

const char* to_string(chat_error_kind kind) noexcept {
  switch (kind) {
    case chat_error_kind::invalid_request: return "invalid_request";
    case chat_error_kind::model_not_found: return "model_not_found";
    case chat_error_kind::not_found: return "not_found";
    case chat_error_kind::overloaded: return "overloaded";
    case chat_error_kind::upstream_error: return "upstream_error";
    case chat_error_kind::upstream_timeout: return "upstream_timeout";
    case chat_error_kind::unavailable: return "unavailable";
    case chat_error_kind::internal: return "internal";
    case chat_error_kind::cancelled: return "cancelled";
    case chat_error_kind::rate_limited: return "rate_limited";
    case chat_error_kind::quota_exceeded: return "quota_exceeded";
  }
  return "unknown";
}

void register_types(caf::actor_system_config& cfg) {
  cfg.add_message_type<manager_stats>("parley.manager_stats");
  cfg.add_message_type<chat_message>("parley.chat_message");
  cfg.add_message_type<std::vector<chat_message>>("parley.chat_messages");
  cfg.add_message_type<chat_request>("parley.chat_request");
  cfg.add_message_type<chat_done>("parley.chat_done");
  cfg.add_message_type<chat_failure>("parley.chat_failure");
  cfg.add_message_type<rate_snapshot>("parley.rate_snapshot");
  cfg.add_message_type<turn_outcome>("parley.turn_outcome");
  cfg.add_message_type<admission_grant>("parley.admission_grant");
  cfg.add_message_type<history_load>("parley.history_load");
  cfg.add_message_type<persistence::persistence_errc>("parley.persistence_errc");
  cfg.add_message_type<turn_sink_actor>("parley.turn_sink_actor");
  cfg.add_message_type<turn_control_actor>("parley.turn_control_actor");
  // Handles that cross nodes in a cluster: a tenant lookup answers with a tenant actor.
  cfg.add_message_type<tenant_actor>("parley.tenant_actor");
  cfg.add_message_type<tenant_manager_actor>("parley.tenant_manager_actor");
  cfg.add_message_type<cluster_member>("parley.cluster_member");
  cfg.add_message_type<std::vector<cluster_member>>("parley.cluster_members");
  cfg.add_error_category(caf::atom("parley"),
                         [](uint8_t code, caf::atom_value, const caf::message&) -> std::string {
                           return std::string("parley::") +
                                  to_string(static_cast<actor_errc>(code));
                         });
  cfg.add_error_category(caf::atom("chat"),
                         [](uint8_t code, caf::atom_value, const caf::message&) -> std::string {
                           return std::string("chat::") +
                                  to_string(static_cast<chat_error_kind>(code));
                         });
}

} // namespace parley::actors
