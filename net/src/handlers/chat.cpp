#include "parley/net/chat_api.hpp"
#include "parley/net/chat_request.hpp"
#include "json/json_text.hpp"
#include "parley/net/tenant_locator.hpp"

#include "parley/persistence/ids.hpp"
#include "parley/tenants/response_cache.hpp"

#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <set>
#include <vector>

namespace parley::net {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;
using actors::chat_error_kind;

api_error to_api(const actors::chat_failure& f) {
  switch (f.kind) {
    case chat_error_kind::invalid_request: return {api_errc::invalid_request, f.message, "messages"};
    case chat_error_kind::model_not_found: return {api_errc::model_not_found, f.message, "model"};
    case chat_error_kind::not_found: return {api_errc::not_found, f.message, "conversation"};
    case chat_error_kind::overloaded: return {api_errc::overloaded, f.message, ""};
    case chat_error_kind::upstream_error: return {api_errc::bad_gateway, f.message, ""};
    case chat_error_kind::upstream_timeout: return {api_errc::gateway_timeout, f.message, ""};
    case chat_error_kind::unavailable: return {api_errc::unavailable, f.message, ""};
    case chat_error_kind::rate_limited: return {api_errc::rate_limited, f.message, ""};
    case chat_error_kind::quota_exceeded: return {api_errc::quota_exceeded, f.message, ""};
    case chat_error_kind::cancelled:
    case chat_error_kind::internal: break;
  }
  return {api_errc::internal, "", ""};
}

/// A duration as OpenAI's rate-limit headers write it: "250ms", "6s", "1m0s".
std::string go_duration(int64_t ms) {
  if (ms < 1000)
    return std::to_string(ms) + "ms";
  auto s = (ms + 999) / 1000;
  if (s < 60)
    return std::to_string(s) + "s";
  return std::to_string(s / 60) + "m" + std::to_string(s % 60) + "s";
}

// -- the relay actor ------------------------------------------------------------------

struct relay_state {
  exchange_ptr ex;
  actors::chat_request req; // messages dropped after hand-off; ids and flags kept
  actors::turn_control_actor producer;
  actors::tenant_actor tenant; ///< the turn's owner: it settles the turn and tells us its end
  std::string content;
  bool streaming = false;
  bool cancelled = false;
  int64_t created = 0;
  caf::local_actor* self = nullptr; ///< the relay (for the destructor)
  /// The actors we monitor: our producer, and the tenant once a conversation producer stopped.
  std::vector<caf::actor_addr> watched;
  static inline const char* name = "parley.relay";

  /// A monitor stays in the monitored actor until it is removed (CAF 0.17 does not remove it
  /// when the monitoring actor stops), and it keeps the stopped relay's memory alive (a weak
  /// reference). A tenant or a conversation serves request after request, so every relay
  /// removes its monitors when it stops: here, which CAF runs on every exit (quit, an
  /// exception, a kill) before the relay terminates.
  ~relay_state() {
    for (auto& a : watched)
      self->demonitor(a);
  }

  /// Monitors `who` until we stop (its down, if it stops first, reaches our down handler).
  template <class Handle>
  void watch(const Handle& who) {
    self->monitor(who);
    watched.push_back(who.address());
  }

  std::string id() const { return "chatcmpl-" + req.request_id; }

  void send_event(const json& j) {
    ex->stream_write("data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n");
  }

  /// One chunk event written as text (the hot path of a stream: no JSON tree per token).
  /// `delta` is the delta object's JSON; `finish` nullptr writes null.
  void send_chunk(std::string_view delta, const std::string* finish) {
    std::string c;
    c.reserve(160 + delta.size() + req.model.size());
    c += "data: {\"id\":";
    jsontext::append_string(c, id());
    c += ",\"object\":\"chat.completion.chunk\",\"created\":";
    c += std::to_string(created);
    c += ",\"model\":";
    jsontext::append_string(c, req.model);
    c += ",\"choices\":[{\"index\":0,\"delta\":";
    c.append(delta.data(), delta.size());
    c += ",\"logprobs\":null,\"finish_reason\":";
    if (finish)
      jsontext::append_string(c, *finish);
    else
      c += "null";
    c += "}]";
    if (req.include_usage)
      c += ",\"usage\":null";
    c += "}\n\n";
    ex->stream_write(std::move(c));
  }

  void start_stream() {
    if (streaming)
      return;
    streaming = true;
    response h{http::status::ok, ex->req().version()};
    h.set(http::field::content_type, "text/event-stream");
    h.set(http::field::cache_control, "no-store"); // a tenant's completion: never kept by caches
    h.set("X-Accel-Buffering", "no");
    if (!req.conversation_id.empty())
      h.set("x-parley-conversation-id", req.conversation_id);
    ex->begin_stream(std::move(h));
    send_chunk(R"({"role":"assistant","content":"","refusal":null})", nullptr);
  }
};

/// The node's grace period is over: end the answer now (the relay's own message).
using shutdown_atom = caf::atom_constant<caf::atom("shutdown")>;

/// The relay: the bridge between one HTTP exchange and the actors. It asks the tenant to
/// admit the request and then receives the turn's events (which the tenant starts only after
/// its answer is on its way), the client's going away, and the end of the node's grace period.
using relay_actor = actors::turn_sink_actor::extend<caf::reacts_to<actors::cancel_atom, std::string>,
                                                    caf::reacts_to<shutdown_atom>>;
using relay_ptr = relay_actor::stateful_pointer<relay_state>;

/// A delta: one SSE chunk, or appended to the JSON answer.
void on_delta(relay_ptr self, const std::string& content) {
  auto& s = self->state;
  auto& ctx = s.ex->ctx();
  if (ctx.ttft_us == 0) // time to first token as the client sees it
    ctx.ttft_us = std::max<int64_t>(1, std::chrono::duration_cast<std::chrono::microseconds>(
                                         std::chrono::steady_clock::now() - ctx.start).count());
  if (s.cancelled)
    return;
  if (s.req.stream) {
    s.start_stream();
    std::string delta = "{\"content\":";
    jsontext::append_string(delta, content);
    delta += '}';
    s.send_chunk(delta, nullptr);
  } else {
    s.content += content;
  }
}

/// A fallback model serves the call (before its first delta): chunks and the answer name it.
void on_served(relay_ptr self, const std::string& model) {
  auto& s = self->state;
  if (!s.streaming)
    s.req.model = model;
}

/// The end: the last chunks and [DONE], or the JSON body. Then the relay is finished.
void on_done(relay_ptr self, const actors::chat_done& d) {
  auto& s = self->state;
  auto& ctx = s.ex->ctx();
  ctx.model = d.model.empty() ? s.req.model : d.model;
  ctx.prompt_tokens = d.prompt_tokens;
  ctx.completion_tokens = d.completion_tokens;
  ctx.upstream_us = d.upstream_us;
  ctx.attempts = d.attempts;
  if (!s.cancelled) {
    json usage = {{"prompt_tokens", d.prompt_tokens},
                  {"completion_tokens", d.completion_tokens},
                  {"total_tokens", d.prompt_tokens + d.completion_tokens}};
    if (s.req.stream) {
      s.start_stream();
      s.send_chunk("{}", &d.finish_reason);
      if (s.req.include_usage)
        s.send_event({{"id", s.id()},
                      {"object", "chat.completion.chunk"},
                      {"created", s.created},
                      {"model", s.req.model},
                      {"choices", json::array()},
                      {"usage", usage}});
      s.ex->stream_write("data: [DONE]\n\n");
      s.ex->end_stream();
    } else {
      // The answer as text: one pass, no JSON tree.
      std::string body;
      body.reserve(256 + s.content.size() + s.req.model.size());
      body += "{\"id\":";
      jsontext::append_string(body, s.id());
      body += ",\"object\":\"chat.completion\",\"created\":";
      body += std::to_string(s.created);
      body += ",\"model\":";
      jsontext::append_string(body, s.req.model);
      body += ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":";
      jsontext::append_string(body, s.content);
      body += ",\"refusal\":null},\"logprobs\":null,\"finish_reason\":";
      jsontext::append_string(body, d.finish_reason);
      body += "}],\"usage\":{\"prompt_tokens\":";
      body += std::to_string(d.prompt_tokens);
      body += ",\"completion_tokens\":";
      body += std::to_string(d.completion_tokens);
      body += ",\"total_tokens\":";
      body += std::to_string(d.prompt_tokens + d.completion_tokens);
      body += "}}";
      if (!s.req.conversation_id.empty())
        s.ex->add_header("x-parley-conversation-id", s.req.conversation_id);
      response res{http::status::ok, s.ex->req().version()};
      res.set(http::field::content_type, "application/json");
      res.body() = std::move(body);
      s.ex->respond(std::move(res));
    }
  }
  self->quit();
}

/// A failure: an OpenAI error, or -- mid-stream, the status being sent -- an error event.
void on_failed(relay_ptr self, const actors::chat_failure& f) {
  auto& s = self->state;
  auto& ctx = s.ex->ctx();
  ctx.model = s.req.model;
  ctx.upstream_us = f.upstream_us;
  ctx.attempts = f.attempts;
  if (!s.cancelled) {
    auto err = to_api(f);
    if (s.streaming) {
      s.send_event({{"error", {{"message", err.message.empty() ? "upstream error" : err.message},
                               {"type", type_of(err.code)},
                               {"param", nullptr},
                               {"code", code_of(err.code)}}}});
      s.ex->stream_write("data: [DONE]\n\n");
      s.ex->end_stream();
    } else {
      s.ex->respond_error(err);
    }
  }
  self->quit();
}

/// Stops the turn's producer once the client reads nothing more from us: now if it is known,
/// else when the tenant's answer names it (see ask_tenant).
void stop_producing(relay_ptr self) {
  auto& s = self->state;
  s.cancelled = true;
  if (s.producer) {
    self->send(s.producer, actors::cancel_atom::value, s.req.request_id);
    self->quit();
  }
  // Else: the tenant's answer has not come yet; it tells us the producer, then we cancel
  // it. A cached answer needs no cancelling: it ends by itself.
}

/// The grace period is over: a stream ends with an error event and [DONE], an answer not yet
/// begun is a 503; then the turn is cancelled (its ledger row says so, charged for what was
/// sent). The client is told to retry: another node, or this one after its restart, serves it.
void on_shutdown(relay_ptr self) {
  auto& s = self->state;
  if (s.cancelled)
    return;
  api_error err{api_errc::shutting_down, "", ""};
  if (s.streaming) {
    s.ex->stream_write("data: " + error_body(err) + "\n\n");
    s.ex->stream_write("data: [DONE]\n\n");
    s.ex->end_stream();
  } else {
    s.ex->add_header("Retry-After", "1");
    s.ex->respond_error(err);
  }
  stop_producing(self);
}

/// The tenant's refusal or unavailability, answered to the client.
void refused(relay_ptr self, tenant_locator& tenants, const caf::error& e) {
  auto& s = self->state;
  if (e.category() == caf::atom("chat")) {
    // Refused at admission (model, limits, budget): the reason and the rate-limit state.
    actors::chat_failure why{static_cast<chat_error_kind>(e.code()), "", 0};
    actors::rate_snapshot limits;
    if (e.context().match_elements<actors::chat_failure, actors::rate_snapshot>()) {
      why = e.context().get_as<actors::chat_failure>(0);
      limits = e.context().get_as<actors::rate_snapshot>(1);
    }
    add_rate_headers(*s.ex, limits);
    if (why.retry_after_ms > 0)
      s.ex->add_header("Retry-After", std::to_string((why.retry_after_ms + 999) / 1000));
    if (!s.cancelled)
      s.ex->respond_error(to_api(why));
    self->quit();
    return;
  }
  // A cached tenant actor that stopped meanwhile: the next request looks it up afresh.
  tenants.forget(s.req.tenant_id);
  s.ex->ctx().error = self->system().render(e);
  if (e.category() == caf::atom("parley") || e.category() == caf::atom("system"))
    tenants.remote().failed.fetch_add(1, std::memory_order_relaxed);
  // In a cluster: the owner node cannot be reached, this node holds no lease, or the
  // ownership is changing hands. Retrying shortly is the right move for all of them.
  s.ex->add_header("Retry-After", "1");
  s.ex->respond_error({api_errc::unavailable,
                       e == actors::actor_errc::tenant_isolated
                         ? "This tenant is temporarily isolated after repeated failures; retry later."
                         : "The tenant is unavailable; retry later.",
                       ""});
  self->quit();
}

/// Asks the tenant actor to admit the request. A tenant actor found in the locator's cache
/// may have stopped since (a crash, or a restart under load): then it is looked up afresh,
/// once, so that a restart costs only the requests it had in flight.
void ask_tenant(relay_ptr self, std::shared_ptr<tenant_locator> tenants, actors::chat_request req,
                bool may_retry) {
  auto tenant_id = req.tenant_id;
  std::shared_ptr<actors::chat_request> again;
  if (may_retry && tenants->cached(tenant_id))
    again = std::make_shared<actors::chat_request>(req);
  auto fail_now = [=](const caf::error& e) {
    if (again && e == caf::sec::request_receiver_down) {
      tenants->forget(tenant_id);
      return ask_tenant(self, tenants, std::move(*again), false);
    }
    refused(self, *tenants, e);
  };
  tenants->find(self, tenant_id, [=](actors::tenant_actor t) mutable {
    // No timeout: a CAF request timeout is a timer on CAF's clock thread for every request
    // (a wake-up of another thread each). The tenant answers every chat request first thing,
    // and should it stop, the request fails at once with request_receiver_down.
    // A tenant on another node (a cluster): a lost connection fails a request only at its
    // deadline in CAF 0.17, so that one has the cluster's call timeout.
    bool remote = t.node() != self->node();
    auto request_id_sent = req.request_id;
    auto sent = remote ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
    if (remote)
      tenants->remote().forwarded.fetch_add(1, std::memory_order_relaxed);
    auto admitted = [=](actors::turn_control_actor producer, const actors::rate_snapshot& limits) {
      auto& s = self->state;
      if (remote)
        if (auto* h = tenants->remote().latency)
          h->observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - sent).count());
      add_rate_headers(*s.ex, limits);
      static const char* cache_names[] = {"", "hit", "miss", "bypass"};
      if (limits.cache > 0 && limits.cache < 4) {
        s.ex->add_header("x-parley-cache", cache_names[limits.cache]);
        s.ex->ctx().cache = cache_names[limits.cache];
      }
      s.producer = producer;
      s.tenant = t;
      if (!producer)
        return; // a cached answer follows: nothing to cancel or watch
      if (s.cancelled) {
        self->send(producer, actors::cancel_atom::value, s.req.request_id);
        self->quit();
        return;
      }
      // If the producer dies without a word (a crash), we must still answer (see the
      // down handler in relay_impl).
      s.watch(producer);
    };
    auto sink = caf::actor_cast<actors::turn_sink_actor>(self);
    auto gateway = remote && req.conversation_id.empty() ? tenants->gateway()
                                                         : actors::turn_gateway_actor{};
    if (gateway) {
      // A stateless completion for a tenant another node owns: the owner admits it, this
      // node runs it (the gateway keeps the deadline, and settles a late admission).
      self->request(gateway, caf::infinite, actors::chat_atom::value, t, std::move(req), sink)
        .then(admitted, fail_now);
      return;
    }
    caf::duration deadline = remote ? caf::duration(tenants->timeout()) : caf::duration(caf::infinite);
    self->request(t, deadline, actors::chat_atom::value, std::move(req), sink)
      .then(admitted, [=](const caf::error& e) {
        // A remote admission past its deadline may still be admitted by the owner later:
        // tell it that this request is gone, so that it stops the turn instead of running
        // (and charging) it for nobody.
        if (remote && e == caf::sec::request_timeout)
          self->send(t, actors::cancel_atom::value, request_id_sent);
        fail_now(e);
      });
  }, fail_now);
}

relay_actor::behavior_type relay_impl(relay_ptr self, exchange_ptr ex, actors::chat_request req,
                                      std::shared_ptr<tenant_locator> tenants) {
  auto& st = self->state;
  st.self = self;
  st.ex = std::move(ex);
  st.created = persistence::now_millis() / 1000;
  auto me = caf::actor_cast<relay_actor>(self);
  // The client going away reaches us as a message; from then on nobody reads our output.
  st.ex->watch([me] { caf::anon_send(me, actors::cancel_atom::value, std::string("client")); }, {},
               [me] { caf::anon_send(me, shutdown_atom::value); });
  // The turn's owner died before we heard the end: nobody will tell us any more. A tenant
  // on another node (a cluster) whose node went away or shut down is not a bug here: the
  // client is told to retry (the next owner serves it).
  auto ended_unexpectedly = [=] {
    auto& s = self->state;
    bool remote = s.tenant && s.tenant.node() != self->node();
    const char* msg = remote ? "The tenant's node went away before the completion ended; retry."
                             : "The completion ended unexpectedly.";
    if (s.streaming) {
      s.send_event({{"error", {{"message", msg},
                               {"type", "server_error"}, {"param", nullptr},
                               {"code", remote ? "service_unavailable" : "internal_error"}}}});
      s.ex->stream_write("data: [DONE]\n\n");
      s.ex->end_stream();
    } else if (remote) {
      s.ex->add_header("Retry-After", "1");
      s.ex->respond_error({api_errc::unavailable, msg, ""});
    } else {
      s.ex->respond_error({api_errc::internal, msg, ""});
    }
    self->quit();
  };
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& s = self->state;
    if (s.cancelled)
      return;
    if (dm.source == s.producer.address() && s.tenant && s.tenant.node() != self->node() &&
        s.producer.node() == self->node() && s.req.conversation_id.empty()) {
      // Our producer was this node's turn gateway (a stateless turn run here for a tenant on
      // another node), and it stopped: the turn stopped with it.
      ended_unexpectedly();
      return;
    }
    if (dm.source == s.producer.address() && dm.source != s.tenant.address()) {
      // Our producer was a conversation actor, and it stopped (deleted, or a crash): the turn
      // is still its tenant's, which settles it and tells us how it ended -- the end the
      // conversation handed it before stopping, or a failure it settles at the conversation's
      // down. From now on we watch the tenant instead, in case it is gone too (then this
      // handler runs at once).
      s.watch(s.tenant);
      return;
    }
    if (dm.source == s.tenant.address())
      ended_unexpectedly();
  });
  st.req = req;
  st.req.messages.clear();
  ask_tenant(self, std::move(tenants), std::move(req), true);
  return {
    [=](actors::delta_atom, std::string& content) { on_delta(self, content); },
    [=](actors::served_atom, std::string& model) { on_served(self, model); },
    [=](actors::done_atom, actors::chat_done& d) { on_done(self, d); },
    [=](actors::failed_atom, actors::chat_failure& f) { on_failed(self, f); },
    [=](actors::cancel_atom, const std::string&) { stop_producing(self); },
    [=](shutdown_atom) { on_shutdown(self); },
  };
}

} // namespace

void add_rate_headers(exchange& ex, const actors::rate_snapshot& r) {
  std::string policy, current;
  auto add = [&](const char* name, int64_t limit, int64_t remaining, int64_t reset_ms) {
    if (limit <= 0)
      return;
    std::string n(name);
    ex.add_header("x-ratelimit-limit-" + n, std::to_string(limit));
    ex.add_header("x-ratelimit-remaining-" + n, std::to_string(remaining));
    ex.add_header("x-ratelimit-reset-" + n, go_duration(reset_ms));
    policy += (policy.empty() ? "" : ", ") + std::string("\"") + n + "\";q=" + std::to_string(limit) + ";w=60";
    current += (current.empty() ? "" : ", ") + std::string("\"") + n + "\";r=" +
               std::to_string(remaining) + ";t=" + std::to_string((reset_ms + 999) / 1000);
  };
  add("requests", r.limit_requests, r.remaining_requests, r.reset_requests_ms);
  add("tokens", r.limit_tokens, r.remaining_tokens, r.reset_tokens_ms);
  if (!policy.empty()) {
    ex.add_header("RateLimit-Policy", policy);
    ex.add_header("RateLimit", current);
  }
}

namespace {

class rate_headers_filter final : public middleware {
public:
  rate_headers_filter(caf::actor_system& sys, std::shared_ptr<tenant_locator> tenants)
    : sys_(sys), tenants_(std::move(tenants)) {}
  const char* name() const noexcept override { return "rate_headers"; }

  filter_status on_request(const exchange_ptr& ex) override {
    auto* needs = ex->ctx().needs;
    if (!needs || needs->who != access::kind::tenant || !ex->ctx().principal ||
        ex->ctx().route == "/v1/chat/completions")
      return filter_status::proceed;
    auto tenant_id = ex->ctx().tenant_id;
    auto config = ex->ctx().principal->config_json;
    auto version = ex->ctx().principal->config_version;
    auto tenants = tenants_;
    // Parked until the tenant actor answers; the exchange resumes either way.
    sys_.spawn([ex, tenants, tenant_id, config, version](caf::event_based_actor* self) {
      auto resume = [ex](const caf::error&) { ex->resume(); };
      tenants->find(self, tenant_id, [=](actors::tenant_actor t) {
        self->request(t, 5s, actors::limits_atom::value, config, version)
          .then([ex](const actors::rate_snapshot& snap) {
            add_rate_headers(*ex, snap);
            ex->resume();
          }, resume);
      }, resume);
    });
    return filter_status::stop;
  }

private:
  caf::actor_system& sys_;
  std::shared_ptr<tenant_locator> tenants_;
};

} // namespace

std::unique_ptr<middleware> make_rate_headers(caf::actor_system& sys,
                                              std::shared_ptr<tenant_locator> tenants) {
  return std::make_unique<rate_headers_filter>(sys, std::move(tenants));
}

void add_chat_routes(router& r, chat_deps d) {
  auto* sys = &d.sys;
  auto tenants = d.tenants;
  auto in_flight = d.in_flight;
  auto max_in_flight = d.max_in_flight;
  auto* counters = d.counters;
  r.add(http::verb::post, "/v1/chat/completions", access::tenant("chat"), [=](const exchange_ptr& ex) {
    // Node-wide load shedding: refuse at once rather than queue without bound.
    if (in_flight->load(std::memory_order_relaxed) >= max_in_flight) {
      if (counters)
        counters->shed_node.fetch_add(1, std::memory_order_relaxed);
      ex->add_header("Retry-After", "1");
      ex->respond_error({api_errc::overloaded, "The server is overloaded; retry later.", ""});
      return;
    }
    actors::chat_request req;
    if (auto bad = parse_chat_request(ex->req().body(), ex->req()["x-parley-cache"], req))
      return ex->respond_error(*bad);
    auto& ctx = ex->ctx();
    req.request_id = ctx.request_id;
    req.tenant_id = ctx.tenant_id;
    req.key_id = ctx.key_id;
    req.traceparent = ctx.traceparent();
    req.tenant_config = ctx.principal ? ctx.principal->config_json : "";
    req.tenant_config_version = ctx.principal ? ctx.principal->config_version : 0;
    if (req.model.empty() && ctx.principal)
      req.model = ctx.principal->config.default_model;
    // The relay is the only bridge: it holds the exchange and answers through it.
    in_flight->fetch_add(1, std::memory_order_relaxed);
    auto relay = sys->spawn(relay_impl, ex, std::move(req), tenants);
    relay->attach_functor([in_flight] { in_flight->fetch_sub(1, std::memory_order_relaxed); });
  });
}

} // namespace parley::net
