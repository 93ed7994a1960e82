#pragma once

#include "parley/persistence/store.hpp"
#include "parley/tenants/tenant_config.hpp"

#include <nlohmann/json.hpp>

#include <string>
#include <variant>

namespace parley::tenants {

/// Error classes of admin operations (net maps them to HTTP; the CLI prints them).
enum class op_errc {
  invalid_request,   ///< 400
  unknown_parameter, ///< 400
  not_found,         ///< 404
  conflict,          ///< 409
  unavailable,       ///< 503 (store unreachable or timed out)
  internal,          ///< 500
};

/// An operation's failure: client-safe message and parameter, plus a log-only detail.
struct op_error {
  op_errc code = op_errc::internal;
  std::string message;
  std::string param;
  std::string detail; ///< never shown to clients
};

/// A value or an op_error.
template <class T>
using op_result = std::variant<T, op_error>;

/// Who performs an operation, for the audit log.
struct audit_context {
  std::string actor = "admin"; ///< "admin" (HTTP), "cli", later a JWT subject
  std::string request_id;      ///< "" outside HTTP
};

/// A key as returned at creation or rotation: the record and, once, the full secret key.
struct issued_key {
  persistence::api_key_record record;
  std::string full_key; ///< shown once, never stored or logged
};

/// The provisioning operations of the admin API and CLI: validation of JSON bodies, the
/// store calls, and the audit record of every mutation. Synchronous: it calls the store, so
/// run it on a persistence worker or in the CLI, never on an io or scheduler thread.
///
/// Thread safety: stateless apart from its references; safe to share between threads.
class admin_ops {
public:
  /// `default_limits`: what a new tenant gets unless its creator sets other limits.
  admin_ops(persistence::store& store, std::string pepper, tenant_limits default_limits = {});

  op_result<persistence::tenant_record> create_tenant(const nlohmann::json& body,
                                                      const audit_context& who);
  op_result<persistence::page<persistence::tenant_record>>
  list_tenants(const persistence::page_request& p, bool include_deleted);
  op_result<persistence::tenant_record> get_tenant(const std::string& id);
  op_result<persistence::tenant_record> update_tenant(const std::string& id,
                                                      const nlohmann::json& body,
                                                      const audit_context& who);
  /// Soft delete: status becomes "deleted"; the tenant's keys stop working.
  op_result<persistence::tenant_record> delete_tenant(const std::string& id,
                                                      const audit_context& who);

  op_result<issued_key> create_key(const std::string& tenant_id, const nlohmann::json& body,
                                   const audit_context& who);
  op_result<persistence::page<persistence::api_key_record>>
  list_keys(const std::string& tenant_id, const persistence::page_request& p);
  op_result<persistence::api_key_record> revoke_key(const std::string& tenant_id,
                                                    const std::string& key_id,
                                                    const audit_context& who);
  /// New secret; the old one stays valid for body.grace_seconds (default 0).
  op_result<issued_key> rotate_key(const std::string& tenant_id, const std::string& key_id,
                                   const nlohmann::json& body, const audit_context& who);

  op_result<std::vector<persistence::usage_row>> usage(const std::string& tenant_id,
                                                       persistence::millis from,
                                                       persistence::millis to);
  /// Usage ledger rows (one per upstream attempt) with `at` in [from, to), oldest first.
  op_result<std::vector<persistence::usage_entry>> usage_attempts(const std::string& tenant_id,
                                                                  persistence::millis from,
                                                                  persistence::millis to, int limit);
  op_result<persistence::page<persistence::audit_record>>
  audit(const persistence::audit_filter& f, const persistence::page_request& p);

  /// JSON shapes of the admin API (timestamps in Unix seconds, like OpenAI's `created`).
  static nlohmann::json tenant_json(const persistence::tenant_record& t);
  static nlohmann::json key_json(const persistence::api_key_record& k);
  static nlohmann::json audit_json(const persistence::audit_record& a);
  static nlohmann::json usage_json(const persistence::usage_row& u);
  static nlohmann::json usage_entry_json(const persistence::usage_entry& e);

private:
  op_result<persistence::tenant_record> live_tenant(const std::string& id);
  void record(const audit_context& who, const std::string& action, const std::string& target,
              const std::string& tenant_id, nlohmann::json details);

  persistence::store& store_;
  std::string pepper_;
  tenant_limits default_limits_;
};

/// The scopes a key may carry.
const std::vector<std::string>& known_scopes();

} // namespace parley::tenants
