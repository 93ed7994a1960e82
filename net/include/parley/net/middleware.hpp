#pragma once

#include "parley/net/exchange.hpp"

namespace parley::net {

/// What a middleware tells the chain.
enum class filter_status {
  proceed, ///< run the next middleware (or the route handler)
  stop,    ///< this middleware answered, or will call exchange::resume() later
};

/// One step of the request pipeline, in the spirit of Envoy's HTTP filters. The runtime builds
/// the ordered list at start-up; there is no registration by static objects.
///
/// Thread safety: both hooks run on the session strand of the request and must not block.
/// One instance serves all connections concurrently, so any state must be thread-safe.
class middleware {
public:
  virtual ~middleware() = default;
  /// A short name for logs ("request_id").
  virtual const char* name() const noexcept = 0;
  /// Inspects or answers the request. Return proceed to continue the chain; return stop
  /// after ex.respond*(), or when the middleware will call ex.resume() asynchronously.
  virtual filter_status on_request(const exchange_ptr& ex) = 0;
  /// Decorates every response (including local replies and errors) before it is written.
  /// Runs for all middleware in reverse order, whether or not on_request ran.
  virtual void on_response(exchange& ex, response& res) {}
};

} // namespace parley::net
