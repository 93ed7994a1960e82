#pragma once

#include "parley/net/api_error.hpp"
#include "parley/net/http.hpp"
#include "parley/net/request_context.hpp"

#include <nlohmann/json_fwd.hpp>

#include <atomic>
#include <functional>
#include <memory>
#include <string>

namespace parley::net {

class http_session;
class pipeline;

/// One request and its (future) response. Created by the session for each request and
/// shared by whoever is working on it: the middleware chain, a handler, a store job or a
/// relay actor. Holding it keeps the connection alive; the exchange ends when its response
/// has been handed to the session and the last holder drops it.
///
/// Thread safety: req() and ctx() belong to the code currently processing the request
/// (one at a time, by hand-off). respond*() and resume() may be called from any thread: they
/// post to the session's strand. Exactly one response per exchange; later ones are ignored.
class exchange : public std::enable_shared_from_this<exchange> {
public:
  exchange(std::shared_ptr<http_session> session, request req, std::shared_ptr<const pipeline> p);
  ~exchange();

  const request& req() const noexcept { return req_; }
  request& req() noexcept { return req_; }
  request_context& ctx() noexcept { return ctx_; }
  const request_context& ctx() const noexcept { return ctx_; }

  /// Sends `res` (any thread). Middleware on_response hooks run on the strand first.
  void respond(response res);
  /// Sends an error in OpenAI's shape with its status.
  void respond_error(const api_error& e);
  /// Sends `body` serialized as JSON with `status`.
  void respond_json(http::status status, const nlohmann::json& body);
  /// Extra headers for the eventual response (any code holding the exchange, before respond).
  void add_header(std::string name, std::string value);

  /// True once a response was handed over.
  bool responded() const noexcept { return responded_.load(std::memory_order_acquire); }

  /// Continues the middleware chain after a filter returned stop without answering (for
  /// example after an asynchronous key lookup). Any thread.
  void resume();

  // -- streaming (SSE) ------------------------------------------------------------
  /// Starts a streamed response: writes `header` with chunked transfer encoding (any thread).
  /// Counts as the exchange's one response; later chunks follow with stream_write().
  void begin_stream(response header);
  /// Queues one chunk of the streamed body, in order (any thread). When the session's queue
  /// grows over its bound (a client that does not read), the stream is aborted and the
  /// `on_gone` callback fires: memory per stream stays bounded.
  void stream_write(std::string data);
  /// Ends the streamed body (the last chunk), then the connection serves its next request.
  void end_stream();

  /// Callbacks for whoever produces the response; all run on the session's strand and must
  /// only hand off (e.g. send a message to an actor). `on_gone`: the client disconnected or
  /// a write failed, before the response completed. `on_written`: one stream chunk was
  /// written to the socket (flow-control credit). `on_shutdown`: the server's grace period is
  /// over while this response is unanswered or still streaming -- end it now (an error
  /// answer, or a stream's final error event and end); the connection closes after it, and
  /// whatever is still unfinished a few seconds later is cut. Each fires at most once, and
  /// neither after the other. Set them before responding.
  void watch(std::function<void()> on_gone, std::function<void()> on_written = {},
             std::function<void()> on_shutdown = {});

  /// Index of the next middleware to run (used by the pipeline).
  std::size_t next_filter = 0;

  /// Executor of the session's io thread (its "strand"), for code that must hop onto it.
  asio::any_io_executor executor() const;

private:
  friend class pipeline;
  template <class Stream>
  friend class basic_http_session;
  std::shared_ptr<http_session> session_;
  std::shared_ptr<const pipeline> pipeline_;
  request req_;
  request_context ctx_;
  std::vector<std::pair<std::string, std::string>> extra_headers_;
  std::function<void()> on_gone_;
  std::function<void()> on_written_;
  std::function<void()> on_shutdown_;
  std::atomic<bool> responded_{false};
  std::atomic<bool> client_left_{false}; ///< the client went away before its answer
};

using exchange_ptr = std::shared_ptr<exchange>;

} // namespace parley::net
