#pragma once

#include "parley/actors/chat.hpp"

#include <caf/actor.hpp>

#include <memory>
#include <string>
#include <vector>

namespace parley::actors {

/// One upstream call, as a provider receives it.
struct upstream_call {
  std::string request_id;
  std::string model;            ///< the upstream's model name
  std::vector<chat_message> messages; ///< the whole prompt (system prompt and history included)
  int64_t max_tokens = 0;       ///< 0 = not set
  std::string extra_json;       ///< other OpenAI fields to pass through
  std::string client_model;     ///< the model as the client named it
  bool client_streaming = false;///< the client reads a stream (else: one JSON answer)
  /// Models the tenant may use (empty = any): fallbacks to other models stay within these.
  std::vector<std::string> allowed_models;
  std::string traceparent;      ///< W3C trace context to send upstream ("" = none)
};

/// Where a call reports, in order: zero or more on_delta, then exactly one of on_done or
/// on_failed. on_served may come once, before the first delta, when a fallback model
/// serves the call. A provider that makes several upstream attempts per call (the resilient
/// route: retries, fallbacks) reports each with on_attempt when it starts and, unless it is
/// the one that ends the call, on_attempt_failed when it fails; a provider that does not is
/// one attempt. Called from any thread, never concurrently for one call.
class call_listener {
public:
  virtual ~call_listener() = default;
  virtual void on_delta(std::string content) = 0;
  virtual void on_done(chat_done d) = 0;
  virtual void on_failed(chat_failure f) = 0;
  virtual void on_served(const std::string& model) { (void)model; }
  /// Attempt `n` (from 1) starts on `deployment`, serving `model` (the client-facing name).
  virtual void on_attempt(int32_t n, const std::string& deployment, const std::string& model) {
    (void)n, (void)deployment, (void)model;
  }
  /// Attempt `n` failed; the call goes on (a retry or a fallback) or ends with on_failed.
  virtual void on_attempt_failed(int32_t n, const chat_failure& f) { (void)n, (void)f; }
};

/// A running call; cancel() stops it (idempotent, any thread). After cancel the listener
/// may still receive events already in flight, and then nothing.
class call_handle {
public:
  virtual ~call_handle() = default;
  virtual void cancel() = 0;
};

/// The provider port: how actors call an LLM without knowing HTTP. Implementations: the
/// built-in echo model (actors), OpenAI-compatible upstreams, and the resilient route that
/// balances, retries and falls back over those (net).
///
/// A call reports to `listener` (see call_listener); chat_done carries usage and
/// finish_reason. start() may report a failure at once, before it returns (failing fast).
///
/// Thread safety: start() may be called from any actor or thread, concurrently.
class provider_port {
public:
  virtual ~provider_port() = default;
  virtual std::shared_ptr<call_handle> start(upstream_call call,
                                             std::shared_ptr<call_listener> listener) = 0;
};

/// A model this node serves: its client-facing name and where it goes.
struct route {
  std::string model;            ///< client-facing name
  std::string upstream_model;   ///< name sent upstream
  std::shared_ptr<provider_port> provider;
  int64_t context_tokens = 8192;///< prompt budget: history is trimmed to fit
  std::string owned_by;
  /// Completion cap of the model: max_tokens sent upstream never exceeds it (0 = none).
  int64_t max_output_tokens = 0;
};

/// Rough token estimate of a text (about 4 characters per token, as OpenAI documents for
/// English); used for budgets and when an upstream reports no usage.
int64_t estimate_tokens(const std::string& text);

} // namespace parley::actors
