#include "parley/net/auth.hpp"

#include "parley/net/router.hpp"
#include "parley/net/store_call.hpp"
#include "parley/persistence/ids.hpp"
#include "parley/tenants/api_key.hpp"

#include <openssl/crypto.h>

namespace parley::net {
namespace {

/// The bearer token of an Authorization header, or "".
std::string_view bearer(const request& req) {
  auto h = req[http::field::authorization];
  if (h.size() > 7 && beast::iequals(h.substr(0, 7), "Bearer "))
    return h.substr(7);
  return {};
}

class auth_filter final : public middleware {
public:
  explicit auth_filter(auth_deps d) : d_(std::move(d)) {}

  const char* name() const noexcept override { return "auth"; }

  filter_status on_request(const exchange_ptr& ex) override {
    // Decided by the matched route's declaration; no route (404/405 follows) needs nothing.
    auto* needs = ex->ctx().needs;
    if (!needs)
      return filter_status::proceed;
    switch (needs->who) {
      case access::kind::anyone:
        return filter_status::proceed;
      case access::kind::anyone_or_admin:
        // Details for the admin; anonymous callers get the short answer. A credential that
        // is sent must be right (it is not silently ignored).
        if (bearer(ex->req()).empty())
          return filter_status::proceed;
        return check_admin(ex, false);
      case access::kind::admin:
        return check_admin(ex, false);
      case access::kind::metrics:
        return check_admin(ex, true);
      case access::kind::tenant:
        return check_tenant(ex, needs->scope);
    }
    return filter_status::stop; // unreachable: every kind is handled above
  }

private:
  /// Answers 429 when (client, key id) is over its failure budget. Checked only after the
  /// credential failed, so a request with a valid credential is never throttled.
  bool throttled(const exchange_ptr& ex, const std::string& key_id) {
    int64_t retry = 0;
    if (!d_.throttle.blocked(ex->ctx().client_address, key_id, persistence::now_millis(), retry))
      return false;
    ex->add_header("Retry-After", std::to_string(retry));
    ex->respond_error({api_errc::too_many_auth_failures, "", ""});
    return true;
  }

  /// Answers a failed authentication (429 when the client is over its budget). `key_id` is
  /// the id of an existing key whose secret was wrong, "" when no existing key was named.
  void fail(const exchange_ptr& ex, api_errc code, std::string message,
            const std::string& key_id = {}) {
    if (throttled(ex, key_id))
      return;
    if (code == api_errc::invalid_api_key)
      d_.throttle.record_failure(ex->ctx().client_address, key_id, persistence::now_millis());
    log::event(d_.logger, spdlog::level::info, "authentication failed")
      .str("request_id", ex->ctx().request_id)
      .str("client", ex->ctx().client_address)
      .str("key_id", key_id)
      .str("reason", message);
    ex->respond_error({code, std::move(message), ""});
  }

  static bool same(std::string_view token, const std::string& secret) {
    return !secret.empty() && token.size() == secret.size() &&
           CRYPTO_memcmp(token.data(), secret.data(), token.size()) == 0;
  }

  /// The admin credential (or, when `metrics_ok`, the metrics credential too).
  filter_status check_admin(const exchange_ptr& ex, bool metrics_ok) {
    auto token = bearer(ex->req());
    if (same(token, d_.admin_key)) {
      ex->ctx().admin = true;
      return filter_status::proceed;
    }
    if (metrics_ok && same(token, d_.metrics_key))
      return filter_status::proceed;
    fail(ex, api_errc::invalid_api_key,
         token.empty() ? (metrics_ok ? "This route needs Authorization: Bearer <metrics or admin key>."
                                     : "This route needs Authorization: Bearer <admin key>.")
                       : "Incorrect credential provided.");
    return filter_status::stop;
  }

  filter_status check_tenant(const exchange_ptr& ex, const std::string& scope) {
    auto token = bearer(ex->req());
    if (token.empty()) {
      fail(ex, api_errc::invalid_api_key,
           "You didn't provide an API key. Send it as Authorization: Bearer <key>.");
      return filter_status::stop;
    }
    auto parsed = tenants::parse_key(token);
    if (!parsed) {
      fail(ex, api_errc::invalid_api_key, "Incorrect API key provided.");
      return filter_status::stop;
    }
    auto now = persistence::now_millis();
    if (auto cached = d_.keys.find(parsed->key_id, now))
      return decide(ex, cached, parsed->secret, scope) ? filter_status::proceed
                                                       : filter_status::stop;
    // A client that keeps naming unknown keys gets no more store lookups this minute.
    if (throttled(ex, {}))
      return filter_status::stop;
    // Cache miss: look the key and its tenant up on a persistence worker, then resume. An
    // invalidation that arrives while we read must win over what we read (key_cache.hpp).
    auto key_id = parsed->key_id;
    auto secret = parsed->secret;
    auto generation = d_.keys.generation();
    store_call(
      ex, d_.executor,
      [this, key_id]() -> persistence::result<std::shared_ptr<const tenants::key_principal>> {
        auto p = std::make_shared<tenants::key_principal>();
        auto key = d_.store.get_key(key_id);
        if (!key.ok()) {
          if (key.code() != persistence::persistence_errc::not_found)
            return key.error();
          return std::shared_ptr<const tenants::key_principal>(std::move(p));
        }
        auto tenant = d_.store.get_tenant(key->tenant_id);
        if (!tenant.ok() && tenant.code() != persistence::persistence_errc::not_found)
          return tenant.error();
        p->found = tenant.ok();
        p->key = std::move(key).value();
        if (tenant.ok()) {
          p->tenant_status = tenant->status;
          p->tenant_slug = tenant->slug;
          p->config = tenants::parse_stored_config(tenant->config_json);
          p->config_json = tenants::to_json_text(p->config); // once per cache fill, not per request
          p->config_version = tenant->updated_at;
        }
        return std::shared_ptr<const tenants::key_principal>(std::move(p));
      },
      [this, ex, key_id, secret, scope, generation](
        persistence::result<std::shared_ptr<const tenants::key_principal>> r) {
        if (!r.ok()) {
          log::event(d_.logger, spdlog::level::err, "key lookup failed")
            .str("request_id", ex->ctx().request_id)
            .str("error", r.error().detail);
          ex->respond_error(from_store(r.error()));
          return;
        }
        d_.keys.put_if_unchanged(key_id, r.value(), persistence::now_millis(), generation);
        if (decide(ex, r.value(), secret, scope))
          ex->resume();
      });
    return filter_status::stop;
  }

  /// Applies the outcome; true when the chain may continue.
  bool decide(const exchange_ptr& ex, const std::shared_ptr<const tenants::key_principal>& p,
              const std::string& secret, const std::string& scope) {
    auto now = persistence::now_millis();
    // A key names its tenant; a principal without one (not found, or a bad row) never passes.
    auto outcome = p->found && !p->key.tenant_id.empty()
                     ? tenants::authenticate(*p, secret, d_.pepper, now, scope)
                     : tenants::auth_outcome::invalid_key;
    auto existing = p->found ? p->key.id : std::string();
    switch (outcome) {
      case tenants::auth_outcome::ok:
        break;
      case tenants::auth_outcome::invalid_key:
        fail(ex, api_errc::invalid_api_key, "Incorrect API key provided.", existing);
        return false;
      case tenants::auth_outcome::tenant_inactive:
        fail(ex, api_errc::permission_denied, "This tenant is suspended.", existing);
        return false;
      case tenants::auth_outcome::missing_scope:
        fail(ex, api_errc::permission_denied, "This API key lacks the '" + scope + "' scope.",
             existing);
        return false;
    }
    auto& ctx = ex->ctx();
    ctx.tenant_id = p->key.tenant_id;
    ctx.key_id = p->key.id;
    ctx.scopes = p->key.scopes;
    ctx.principal = p;
    d_.last_used.record(p->key.id, now);
    return true;
  }

  auth_deps d_;
};

} // namespace

std::unique_ptr<middleware> make_auth(auth_deps deps) {
  return std::make_unique<auth_filter>(std::move(deps));
}

} // namespace parley::net
