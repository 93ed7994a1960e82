#pragma once

#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/atom.hpp>
#include <caf/meta/type_name.hpp>
#include <caf/optional.hpp>
#include <nlohmann/json_fwd.hpp>

#include "parley/persistence/result.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

/// The chat message types exchanged between the relay (net), the tenant actor, the
/// conversation and turn actors, and providers.
namespace parley::actors {

using chat_atom = caf::atom_constant<caf::atom("chat")>;
using delta_atom = caf::atom_constant<caf::atom("delta")>;
using done_atom = caf::atom_constant<caf::atom("done")>;
using failed_atom = caf::atom_constant<caf::atom("failed")>;
using cancel_atom = caf::atom_constant<caf::atom("cancel")>;
using loaded_atom = caf::atom_constant<caf::atom("loaded")>;
using saved_atom = caf::atom_constant<caf::atom("saved")>;
using idle_atom = caf::atom_constant<caf::atom("idle")>;
using forget_atom = caf::atom_constant<caf::atom("forget")>;
/// A turn (stateless or conversation) ended; sent to the tenant actor to settle its counts.
using ended_atom = caf::atom_constant<caf::atom("ended")>;
/// What a stopping conversation actor's running turn was charged (to the tenant actor).
using charged_atom = caf::atom_constant<caf::atom("charged")>;
/// Today's spent tokens of a tenant, loaded from the usage table (to the tenant actor).
using budget_atom = caf::atom_constant<caf::atom("budget")>;
/// Empty the tenant's response cache (admin).
using flush_atom = caf::atom_constant<caf::atom("flush")>;
/// The tenant's current rate-limit state, for the headers of non-chat responses.
using limits_atom = caf::atom_constant<caf::atom("limits")>;
/// Which model serves a completion, when a fallback changed it (sent before the first delta).
using served_atom = caf::atom_constant<caf::atom("served")>;

/// One chat message: role and the OpenAI message object as JSON text (content may be a
/// string or an array of parts; tool fields pass through).
struct chat_message {
  std::string role;
  std::string json;   ///< the whole message object
  std::string text;   ///< its text content, for token estimates and the echo model
  /// Its estimated prompt cost: text, non-text parts at their documented cost (images),
  /// tool calls and other fields, and the per-message framing.
  int64_t tokens = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, chat_message& x) {
  return f(caf::meta::type_name("chat_message"), x.role, x.json, x.text, x.tokens);
}

/// A validated chat completion request, as the tenant actor receives it.
struct chat_request {
  std::string request_id;
  std::string tenant_id;
  std::string key_id;
  std::string model;            ///< as the client named it
  std::vector<chat_message> messages;
  bool stream = false;
  bool include_usage = false;
  int64_t max_tokens = 0;       ///< 0 = not set
  std::string conversation_id;  ///< "" = stateless
  std::string extra_json;       ///< other OpenAI fields to pass through ("{}" when none)
  /// Prompt tokens of the request beyond its messages (tools, functions, response_format,
  /// prediction, ...): estimated from extra_json, counted at admission.
  int64_t extra_tokens = 0;
  std::string tenant_config;    ///< the tenant's config (JSON text) as authentication saw it
  /// Its version (the tenant row's updated_at): the tenant actor ignores a config older than
  /// one it has applied, and sets both fields to its own before the turn starts.
  int64_t tenant_config_version = 0;
  /// Set by the tenant actor at admission: the most completion tokens this call may produce
  /// within the tenant's daily budget (0 = no cap). The stream is cut off there.
  int64_t completion_cap = 0;
  /// Response cache: 0 = not cacheable, 1 = use the cache (temperature 0, or the client opted
  /// in), 2 = the client asked to bypass it. cache_key is set for mode 1.
  int8_t cache_mode = 0;
  std::string cache_key;
  std::string traceparent;      ///< W3C trace context of the request, sent upstream
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, chat_request& x) {
  return f(caf::meta::type_name("chat_request"), x.request_id, x.tenant_id, x.key_id, x.model,
           x.messages, x.stream, x.include_usage, x.max_tokens, x.conversation_id, x.extra_json,
           x.extra_tokens, x.tenant_config, x.tenant_config_version, x.completion_cap,
           x.cache_mode, x.cache_key, x.traceparent);
}

/// The end of a completion.
struct chat_done {
  std::string finish_reason;    ///< "stop", "length", ...
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  std::string model;            ///< the model that served it (as the client named it)
  std::string conversation_id;
  int64_t upstream_us = 0;      ///< from the first upstream attempt to the end (0 = none)
  int64_t ttft_us = 0;          ///< from the first attempt to the first token (0 = none)
  int32_t attempts = 0;         ///< upstream attempts made (retries and fallbacks included)
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, chat_done& x) {
  return f(caf::meta::type_name("chat_done"), x.finish_reason, x.prompt_tokens,
           x.completion_tokens, x.model, x.conversation_id, x.upstream_us, x.ttft_us, x.attempts);
}

/// Why a completion failed. `kind` maps to an HTTP error in net's error table.
enum class chat_error_kind : uint8_t {
  invalid_request = 1, ///< 400 (e.g. prompt over the model's context)
  model_not_found,     ///< 404
  not_found,           ///< 404 (conversation)
  overloaded,          ///< 503
  upstream_error,      ///< 502
  upstream_timeout,    ///< 504
  unavailable,         ///< 503 (store or tenant isolated)
  internal,            ///< 500
  cancelled,           ///< the client went away
  rate_limited,        ///< 429 rate_limit_exceeded (requests/tokens per minute, concurrency)
  quota_exceeded,      ///< 429 insufficient_quota
};

/// What went wrong with an upstream call, for retry and fallback decisions (the client sees
/// only `kind` and `message`).
enum class failure_cause : uint8_t {
  none = 0,
  connect,            ///< DNS, TCP connect (refused, timed out) or TLS handshake failed
  reset,              ///< the connection broke before the response's first byte
  status,             ///< the upstream answered with an error status (upstream_status)
  connect_timeout,    ///< DNS + TCP connect took too long
  tls_timeout,        ///< the TLS handshake took too long
  first_byte_timeout, ///< request sent, no response header in time
  idle_timeout,       ///< a stream went quiet for too long
  total_timeout,      ///< a non-streaming call took too long in all
  broken,             ///< the stream broke off or was malformed after it began
  breaker_open,       ///< refused at once: every deployment's circuit breaker is open
  budget,             ///< a retry was due but the retry budget was spent
};

struct chat_failure {
  chat_error_kind kind = chat_error_kind::internal;
  std::string message;   ///< client-safe
  int upstream_status = 0;
  int64_t retry_after_ms = 0; ///< for 429s and 503s: when to retry (0 = not said)
  failure_cause cause = failure_cause::none;
  int32_t attempts = 0;       ///< upstream attempts made
  int64_t upstream_us = 0;    ///< time spent on the upstream
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, chat_failure& x) {
  return f(caf::meta::type_name("chat_failure"), x.kind, x.message, x.upstream_status,
           x.retry_after_ms, x.cause, x.attempts, x.upstream_us);
}

/// A tenant's rate-limit state after admitting (or refusing) a request, for the response
/// headers. A limit of 0 means that limit is not configured.
struct rate_snapshot {
  int64_t limit_requests = 0;
  int64_t remaining_requests = 0;
  int64_t reset_requests_ms = 0;
  int64_t limit_tokens = 0;
  int64_t remaining_tokens = 0;
  int64_t reset_tokens_ms = 0;
  int8_t cache = 0; ///< 0 = cache not in play, 1 = hit, 2 = miss, 3 = bypass
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, rate_snapshot& x) {
  return f(caf::meta::type_name("rate_snapshot"), x.limit_requests, x.remaining_requests,
           x.reset_requests_ms, x.limit_tokens, x.remaining_tokens, x.reset_tokens_ms, x.cache);
}

/// A conversation's history as loaded from the store (or why it could not be).
struct history_load {
  chat_error_kind error = chat_error_kind{}; ///< 0 = loaded
  std::vector<chat_message> messages;
  int64_t next_seq = 1;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, history_load& x) {
  return f(caf::meta::type_name("history_load"), x.error, x.messages, x.next_seq);
}

/// Per-message framing of the prompt (role and separators), in tokens.
constexpr int64_t message_overhead_tokens = 4;

} // namespace parley::actors

namespace parley::actors {

/// Builds a chat_message from an OpenAI message object (JSON text): role, the JSON as is, and
/// its text (a string content, or the `text` of its text parts joined by newlines).
chat_message to_chat_message(const std::string& json_text);
/// The same from a parsed message object (no second parse).
chat_message to_chat_message(const nlohmann::json& message);

} // namespace parley::actors
