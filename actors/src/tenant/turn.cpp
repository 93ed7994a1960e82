// The turn actor: one stateless completion. It calls the provider, forwards events to the
// relay, records usage once, and tells the tenant actor when it ends.
#include "internal.hpp"

#include "parley/persistence/ids.hpp"

#include <nlohmann/json.hpp>

namespace parley::actors {

chat_message to_chat_message(const std::string& json_text) {
  auto j = nlohmann::json::parse(json_text, nullptr, false);
  if (!j.is_object()) {
    chat_message m;
    m.json = json_text;
    return m;
  }
  auto m = to_chat_message(j);
  m.json = json_text; // keep the caller's text as is
  return m;
}

chat_message to_chat_message(const nlohmann::json& j) {
  chat_message m;
  if (!j.is_object())
    return m;
  m.json = j.dump();
  m.role = j.value("role", "");
  auto c = j.find("content");
  if (c == j.end())
    return m;
  if (c->is_string()) {
    m.text = c->get<std::string>();
  } else if (c->is_array()) {
    for (auto& part : *c)
      if (part.is_object() && part.contains("text") && part["text"].is_string()) {
        if (!m.text.empty())
          m.text += "\n";
        m.text += part["text"].get<std::string>();
      }
  }
  return m;
}

namespace detail {

bool build_prompt(const tenants::tenant_config& cfg, const std::vector<chat_message>& history,
                  const std::vector<chat_message>& fresh, int64_t budget_tokens,
                  std::vector<chat_message>& out) {
  out.clear();
  int64_t used = 0;
  if (!cfg.system_prompt.empty()) {
    out.push_back(to_chat_message(
      nlohmann::json{{"role", "system"}, {"content", cfg.system_prompt}}.dump()));
    used += estimate_tokens(cfg.system_prompt) + 4;
  }
  for (auto& m : fresh)
    used += estimate_tokens(m.text) + 4;
  if (used > budget_tokens)
    return false;
  // Newest history first, as far as the budget allows; then back in order.
  std::size_t keep = 0;
  for (auto it = history.rbegin(); it != history.rend(); ++it) {
    auto cost = estimate_tokens(it->text) + 4;
    if (used + cost > budget_tokens)
      break;
    used += cost;
    ++keep;
  }
  out.insert(out.end(), history.end() - static_cast<std::ptrdiff_t>(keep), history.end());
  out.insert(out.end(), fresh.begin(), fresh.end());
  return true;
}

void record_usage(const chat_services& svc, const chat_request& req, const chat_done& d,
                  bool failed) {
  if (!svc.usage)
    return;
  persistence::usage_delta u;
  u.tenant_id = req.tenant_id;
  u.key_id = req.key_id;
  u.model = req.model;
  u.period_start = persistence::now_millis() / 60000 * 60000;
  u.requests = 1;
  u.prompt_tokens = d.prompt_tokens;
  u.completion_tokens = d.completion_tokens;
  u.errors = failed ? 1 : 0;
  svc.usage->add(u);
}

namespace {

struct turn_state {
  live_count live;
  chat_request req;
  caf::actor relay;
  caf::actor tenant;
  std::shared_ptr<const chat_services> svc;
  std::shared_ptr<call_handle> call;
  int64_t prompt_estimate = 0;
  int64_t completion_estimate = 0;
  int64_t produced = 0; ///< deltas forwarded (one token each, as streaming upstreams send them)
  std::vector<std::string> deltas; ///< kept only when the result goes into the response cache
  bool finished = false;
  std::string served; ///< the fallback model that serves the call ("" = the one asked for)
  static inline const char* name = "parley.turn";

  /// Ends the turn exactly once: usage, the tenant's count, the actor.
  void finish(caf::event_based_actor* self, const chat_done& d, bool failed) {
    if (finished)
      return;
    finished = true;
    record_usage(*svc, req, d, failed);
    self->send(tenant, ended_atom::value, req.request_id, d.prompt_tokens + d.completion_tokens);
    self->quit();
  }
};

caf::behavior turn_impl(caf::stateful_actor<turn_state>* self, chat_request req, route r,
                        std::shared_ptr<const tenants::tenant_config> cfg, caf::actor relay,
                        caf::actor tenant, std::shared_ptr<const chat_services> svc) {
  auto& st = self->state;
  st.relay = std::move(relay);
  st.tenant = std::move(tenant);
  st.svc = std::move(svc);
  if (st.svc->actors)
    st.live.attach(&st.svc->actors->turns);
  upstream_call call;
  call.request_id = req.request_id;
  call.model = r.upstream_model;
  call.max_tokens = req.max_tokens;
  call.extra_json = req.extra_json;
  call.client_model = req.model;
  call.client_streaming = req.stream;
  call.allowed_models = cfg->allowed_models;
  call.traceparent = req.traceparent;
  if (!build_prompt(*cfg, {}, req.messages, r.context_tokens, call.messages)) {
    st.req = std::move(req);
    self->send(st.relay, failed_atom::value,
               chat_failure{chat_error_kind::invalid_request,
                            "The messages exceed the model's context of " +
                              std::to_string(r.context_tokens) + " tokens.",
                            0});
    st.finish(self, chat_done{}, true);
    return {};
  }
  for (auto& m : call.messages)
    st.prompt_estimate += estimate_tokens(m.text) + 4;
  st.req = std::move(req);
  st.call = r.provider->start(std::move(call), actor_listener(caf::actor_cast<caf::actor>(self)));
  return {
    [=](delta_atom, std::string& content) {
      auto& s = self->state;
      if (s.finished)
        return;
      s.completion_estimate += estimate_tokens(content);
      ++s.produced;
      if (!s.req.cache_key.empty())
        s.deltas.push_back(content);
      self->send(s.relay, delta_atom::value, std::move(content));
      if (s.req.completion_cap > 0 && s.produced >= s.req.completion_cap) {
        // The tenant's daily budget ends here: stop the upstream and end cleanly.
        if (s.svc->counters)
          s.svc->counters->budget_cutoffs.fetch_add(1, std::memory_order_relaxed);
        if (s.call)
          s.call->cancel();
        chat_done d{"length", s.prompt_estimate, s.produced, s.req.model, ""};
        self->send(s.relay, done_atom::value, d);
        s.finish(self, d, false);
      }
    },
    [=](served_atom, std::string& model) {
      // A fallback model serves this call: the client is told which.
      auto& s = self->state;
      s.served = model;
      self->send(s.relay, served_atom::value, std::move(model));
    },
    [=](done_atom, chat_done& d) {
      auto& s = self->state;
      d.model = s.served.empty() ? s.req.model : s.served; // the client's name for it
      if (!s.req.cache_key.empty())
        caf::anon_send(caf::actor_cast<tenant_actor>(s.tenant), cache_atom::value, s.req.cache_key,
                       std::move(s.deltas), d.finish_reason, d.prompt_tokens, d.completion_tokens);
      self->send(s.relay, done_atom::value, d);
      s.finish(self, d, false);
    },
    [=](failed_atom, chat_failure& f) {
      auto& s = self->state;
      self->send(s.relay, failed_atom::value, f);
      s.finish(self, chat_done{"error", s.prompt_estimate, s.completion_estimate, "", ""}, true);
    },
    [=](cancel_atom, const std::string&) {
      // The client went away: stop the upstream call; what it already produced still counts.
      auto& s = self->state;
      if (s.call)
        s.call->cancel();
      s.finish(self, chat_done{"cancelled", s.prompt_estimate, s.completion_estimate, "", ""}, true);
    },
  };
}

} // namespace

caf::actor spawn_replay(caf::local_actor* parent, tenants::cached_completion hit, std::string model,
                        caf::actor relay) {
  return parent->spawn([hit = std::move(hit), model = std::move(model),
                        relay = std::move(relay)](caf::event_based_actor* self) -> caf::behavior {
    for (auto& d : hit.deltas)
      self->send(relay, delta_atom::value, d);
    self->send(relay, done_atom::value,
               chat_done{hit.finish_reason, hit.prompt_tokens, hit.completion_tokens, model, ""});
    self->quit();
    return {};
  });
}

caf::actor spawn_turn(caf::local_actor* parent, chat_request req, route r,
                      std::shared_ptr<const tenants::tenant_config> cfg, caf::actor relay,
                      caf::actor tenant, std::shared_ptr<const chat_services> svc) {
  // Linked: a turn dies with its tenant (shutdown); the tenant traps its children's exits.
  return parent->spawn<caf::linked>(turn_impl, std::move(req), std::move(r), std::move(cfg), std::move(relay),
                       std::move(tenant), std::move(svc));
}

} // namespace detail
} // namespace parley::actors
