#pragma once

#include "parley/net/access.hpp"
#include "parley/tenants/key_cache.hpp"

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace parley::net {

class exchange;

/// Per-request facts that middleware and handlers fill in as the request moves along.
/// Owned by its exchange; touched only on the session strand (or by the one handler that
/// currently holds the exchange).
struct request_context {
  /// parley's own id for this request, always generated here (time-ordered, unique): the key
  /// of its usage ledger rows, its turn in the tenant actor and its log lines. Never the
  /// client's, so a reused or foreign X-Request-ID cannot merge or drop anyone's ledger rows.
  std::string request_id;
  /// The client's sane X-Request-ID, if it sent one: echoed back and logged, for correlation only.
  std::string client_request_id;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  std::string client_address;     ///< peer IP
  std::string route;              ///< matched route pattern, e.g. "/admin/v1/tenants/{id}"
  std::vector<std::pair<std::string, std::string>> params; ///< captured path parameters
  /// Set by routing, before any middleware runs: who may call the matched route (null when
  /// no route matched: the request ends in 404 or 405), its handler, and for 405 the methods
  /// the path allows. They point into the router, which outlives every exchange.
  const access* needs = nullptr;
  const std::function<void(const std::shared_ptr<exchange>&)>* handler = nullptr;
  std::string allow;
  std::string tenant_id;          ///< set by authentication
  std::string key_id;             ///< set by authentication
  std::vector<std::string> scopes;
  /// The authenticated key and its tenant (config included); null for admin and ops routes.
  std::shared_ptr<const tenants::key_principal> principal;
  bool admin = false;             ///< authenticated with the admin credential
  /// W3C trace context: the trace id (32 hex) kept from the client's `traceparent` or made
  /// here, and this hop's span id (16 hex); sent upstream as "00-<trace>-<span>-<flags>".
  std::string trace_id;
  std::string span_id;
  std::string trace_flags = "01";

  // Facts of a chat completion, set by its handler before the response goes out; read by
  // the access log and the metrics.
  std::string model;              ///< the model that served it
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t upstream_us = 0;        ///< time spent on the upstream (0 = none)
  int64_t ttft_us = 0;            ///< request start to the first token (0 = none)
  int32_t attempts = 0;           ///< upstream attempts
  const char* cache = "";         ///< "hit", "miss", "bypass" or "" (not in play)
  /// Why a request failed inside the node (a 5xx's cause for the access log; never sent).
  std::string error;

  /// The traceparent header value to send upstream.
  std::string traceparent() const {
    return trace_id.empty() ? std::string() : "00-" + trace_id + "-" + span_id + "-" + trace_flags;
  }

  /// The captured path parameter `name`, or "".
  const std::string& param(const std::string& name) const {
    static const std::string empty;
    for (auto& [k, v] : params)
      if (k == name)
        return v;
    return empty;
  }
};

} // namespace parley::net
