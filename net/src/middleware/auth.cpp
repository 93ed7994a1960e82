#include "parley/net/auth.hpp"

#include "parley/net/router.hpp"
#include "parley/net/store_call.hpp"
#include "parley/persistence/ids.hpp"
#include "parley/tenants/api_key.hpp"

#include <openssl/crypto.h>

namespace parley::net {
namespace {

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

/// The bearer token of an Authorization header, or "".
std::string_view bearer(const request& req) {
  auto h = req[http::field::authorization];
  if (h.size() > 7 && beast::iequals(h.substr(0, 7), "Bearer "))
    return h.substr(7);
  return {};
}

/// The scope a /v1 path needs ("" = any valid key).
std::string scope_for(std::string_view path) {
  if (starts_with(path, "/v1/chat/"))
    return "chat";
  if (starts_with(path, "/v1/conversations"))
    return "conversations";
  return {};
}

class auth_filter final : public middleware {
public:
  explicit auth_filter(auth_deps d) : d_(std::move(d)) {}

  const char* name() const noexcept override { return "auth"; }

  filter_status on_request(const exchange_ptr& ex) override {
    auto path = path_of(ex->req().target());
    if (starts_with(path, "/admin/") || path == "/metrics")
      return check_admin(ex); // /metrics on the API listener is the operators' (admin key)
    if (starts_with(path, "/v1/"))
      return check_tenant(ex, scope_for(path));
    return filter_status::proceed;
  }

private:
  bool throttled(const exchange_ptr& ex) {
    int64_t retry = 0;
    if (!d_.throttle.blocked(ex->ctx().client_address, persistence::now_millis(), retry))
      return false;
    ex->add_header("Retry-After", std::to_string(retry));
    ex->respond_error({api_errc::too_many_auth_failures, "", ""});
    return true;
  }

  void fail(const exchange_ptr& ex, api_errc code, std::string message) {
    if (code == api_errc::invalid_api_key)
      d_.throttle.record_failure(ex->ctx().client_address, persistence::now_millis());
    log::event(d_.logger, spdlog::level::info, "authentication failed")
      .str("request_id", ex->ctx().request_id)
      .str("client", ex->ctx().client_address)
      .str("reason", message);
    ex->respond_error({code, std::move(message), ""});
  }

  filter_status check_admin(const exchange_ptr& ex) {
    if (throttled(ex))
      return filter_status::stop;
    auto token = bearer(ex->req());
    bool ok = !d_.admin_key.empty() && token.size() == d_.admin_key.size() &&
              CRYPTO_memcmp(token.data(), d_.admin_key.data(), token.size()) == 0;
    if (!ok) {
      fail(ex, api_errc::invalid_api_key,
           token.empty() ? "Admin routes need Authorization: Bearer <admin key>."
                         : "Incorrect admin key provided.");
      return filter_status::stop;
    }
    ex->ctx().admin = true;
    return filter_status::proceed;
  }

  filter_status check_tenant(const exchange_ptr& ex, std::string scope) {
    if (throttled(ex))
      return filter_status::stop;
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
    // Cache miss: look the key and its tenant up on a persistence worker, then resume.
    auto key_id = parsed->key_id;
    auto secret = parsed->secret;
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
        }
        return std::shared_ptr<const tenants::key_principal>(std::move(p));
      },
      [this, ex, key_id, secret, scope](
        persistence::result<std::shared_ptr<const tenants::key_principal>> r) {
        if (!r.ok()) {
          log::event(d_.logger, spdlog::level::err, "key lookup failed")
            .str("request_id", ex->ctx().request_id)
            .str("error", r.error().detail);
          ex->respond_error(from_store(r.error()));
          return;
        }
        d_.keys.put(key_id, r.value(), persistence::now_millis());
        if (decide(ex, r.value(), secret, scope))
          ex->resume();
      });
    return filter_status::stop;
  }

  /// Applies the outcome; true when the chain may continue.
  bool decide(const exchange_ptr& ex, const std::shared_ptr<const tenants::key_principal>& p,
              const std::string& secret, const std::string& scope) {
    auto now = persistence::now_millis();
    switch (tenants::authenticate(*p, secret, d_.pepper, now, scope)) {
      case tenants::auth_outcome::ok:
        break;
      case tenants::auth_outcome::invalid_key:
        fail(ex, api_errc::invalid_api_key, "Incorrect API key provided.");
        return false;
      case tenants::auth_outcome::tenant_inactive:
        fail(ex, api_errc::permission_denied, "This tenant is suspended.");
        return false;
      case tenants::auth_outcome::missing_scope:
        fail(ex, api_errc::permission_denied, "This API key lacks the '" + scope + "' scope.");
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
