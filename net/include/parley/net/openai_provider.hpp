#pragma once

#include "parley/actors/provider.hpp"
#include "parley/config/logging.hpp"
#include "parley/net/http.hpp"
#include "parley/net/io_pool.hpp"

#include <memory>
#include <string>

namespace parley::net {

/// Timeouts and pool bounds of an upstream client.
struct upstream_client_settings {
  int connect_timeout_ms = 5000;       ///< DNS + TCP connect
  int tls_timeout_ms = 5000;           ///< TLS handshake
  int first_byte_timeout_ms = 60000;   ///< request written -> response header
  int idle_timeout_ms = 30000;         ///< longest gap between two reads of the body
  std::size_t max_idle_connections = 64;
};

/// A provider for any OpenAI-compatible endpoint (OpenAI, Azure OpenAI, vLLM, llama.cpp
/// server, Ollama): `base_url` like "https://api.openai.com/v1". Beast asynchronous client on
/// the calling io thread's context of `io`, a keep-alive connection pool per context, HTTPS with the system CA store, certificate and host
/// name verification and SNI; the upstream is always called in streaming mode and its SSE
/// body parsed incrementally, so tokens flow to the client as they arrive. The API key goes
/// only into the upstream's Authorization header: never into logs, errors or responses.
/// Failures carry a failure_cause (connect, reset, status with Retry-After, each timeout)
/// for the resilient route above it; this client itself never retries, except a request on
/// a pooled keep-alive connection that the upstream had closed meanwhile, which is sent once
/// more on a fresh connection (nothing reached the upstream's application).
/// Throws std::invalid_argument for a URL that is not http(s)://host[:port][/path].
///
/// Thread safety: start() and the returned handles' cancel() may be called from any thread.
std::shared_ptr<actors::provider_port>
make_openai_provider(io_pool& io, const std::string& base_url, std::string api_key,
                     upstream_client_settings settings, log::logger_ptr logger);

} // namespace parley::net
