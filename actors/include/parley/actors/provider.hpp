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
};

/// A running call; cancel() stops it (idempotent, any thread). After cancel the listener
/// may still receive events already in flight, and then nothing.
class call_handle {
public:
  virtual ~call_handle() = default;
  virtual void cancel() = 0;
};

/// The provider port: how actors call an LLM without knowing HTTP. Implementations: the
/// built-in echo model (actors) and OpenAI-compatible upstreams (net).
///
/// A call reports to `listener`, in order: zero or more (delta_atom, std::string content),
/// then exactly one of (done_atom, chat_done) -- with usage, and finish_reason -- or
/// (failed_atom, chat_failure). Events are plain CAF messages sent from any thread.
///
/// Thread safety: start() may be called from any actor or thread, concurrently.
class provider_port {
public:
  virtual ~provider_port() = default;
  virtual std::shared_ptr<call_handle> start(upstream_call call, caf::actor listener) = 0;
};

/// A model this node serves: its client-facing name and where it goes.
struct route {
  std::string model;            ///< client-facing name
  std::string upstream_model;   ///< name sent upstream
  std::shared_ptr<provider_port> provider;
  int64_t context_tokens = 8192;///< prompt budget: history is trimmed to fit
  std::string owned_by;
};

/// Rough token estimate of a text (about 4 characters per token, as OpenAI documents for
/// English); used for budgets and when an upstream reports no usage.
int64_t estimate_tokens(const std::string& text);

} // namespace parley::actors
