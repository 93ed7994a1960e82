// A stateless completion (turn_call): it calls the provider, forwards events to the relay,
// records usage once, and tells the tenant actor when it ends.
#include "internal.hpp"

#include "parley/persistence/ids.hpp"

#include <nlohmann/json.hpp>

#include <mutex>

namespace parley::actors {

namespace {
/// OpenAI's documented image cost: 85 tokens at detail "low"; a 1024x1024 image at "high"
/// (and "auto", which may pick high) is 85 + 4 tiles x 170. The size is not known without
/// fetching the image, so every non-low image is counted at that.
constexpr int64_t image_tokens_low = 85;
constexpr int64_t image_tokens_high = 765;
/// Per-message framing (role and separators).
constexpr int64_t message_overhead_tokens = 4;

/// The estimated prompt cost of one content part that is not text.
int64_t part_tokens(const nlohmann::json& part) {
  auto type = part.value("type", "");
  if (type == "image_url") {
    auto img = part.find("image_url");
    bool low = img != part.end() && img->is_object() && img->value("detail", "") == "low";
    return low ? image_tokens_low : image_tokens_high;
  }
  // Audio, files and anything newer: their encoded payload, as text (conservative).
  return estimate_tokens(part.dump());
}

/// Role, text content (a string content, or the `text` of its text parts joined by
/// newlines) and the estimated prompt cost of a message object.
void read_role_and_text(const nlohmann::json& j, chat_message& m) {
  m.role = j.value("role", "");
  m.tokens = message_overhead_tokens;
  int64_t other = 0;
  for (auto& [k, v] : j.items())
    if (k != "role" && k != "content")
      other += estimate_tokens(v.dump()); // tool_calls, function_call, name, ...
  auto c = j.find("content");
  if (c != j.end()) {
    if (c->is_string()) {
      m.text = c->get<std::string>();
    } else if (c->is_array()) {
      for (auto& part : *c) {
        if (part.is_object() && part.value("type", "") == "text" && part.contains("text") &&
            part["text"].is_string()) {
          if (!m.text.empty())
            m.text += "\n";
          m.text += part["text"].get<std::string>();
        } else if (part.is_object()) {
          other += part_tokens(part);
        }
      }
    }
  }
  m.tokens += estimate_tokens(m.text) + other;
}
} // namespace

chat_message to_chat_message(const std::string& json_text) {
  chat_message m;
  m.json = json_text; // the caller's text as is
  auto j = nlohmann::json::parse(json_text, nullptr, false);
  if (j.is_object())
    read_role_and_text(j, m);
  return m;
}

chat_message to_chat_message(const nlohmann::json& j) {
  chat_message m;
  if (!j.is_object())
    return m;
  m.json = j.dump();
  read_role_and_text(j, m);
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
    used += m.tokens;
  if (used > budget_tokens)
    return false;
  // Newest history first, as far as the budget allows; then back in order.
  std::size_t keep = 0;
  for (auto it = history.rbegin(); it != history.rend(); ++it) {
    auto cost = it->tokens;
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

/// One stateless completion, as a listener of its provider call: it forwards the events to
/// the relay, cuts the stream off at the tenant's budget, feeds the response cache, records
/// usage once and tells the tenant when it ends. No actor of its own: events go from the
/// provider's thread straight to the relay (one message per token, not two), and the tenant
/// actor holds the handle to cancel it. Thread-safe: provider events and cancel() may come
/// from different threads; one mutex orders them.
class turn_call final : public call_listener,
                        public call_handle,
                        public std::enable_shared_from_this<turn_call> {
public:
  turn_call(chat_request req, caf::actor relay, tenant_actor tenant,
            std::shared_ptr<const chat_services> svc)
    : req_(std::move(req)), relay_(std::move(relay)), tenant_(std::move(tenant)),
      svc_(std::move(svc)) {
    if (svc_->actors)
      live_.attach(&svc_->actors->turns);
    req_.messages.clear(); // the prompt lives in the upstream call now
  }

  void begin(const route& r, upstream_call call, int64_t prompt_estimate) {
    prompt_estimate_ = prompt_estimate;
    auto handle = r.provider->start(std::move(call), shared_from_this());
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!finished_) {
        call_ = std::move(handle);
        return;
      }
    }
    handle->cancel(); // cancelled before start() returned (outside our lock: see cancel())
  }

  /// Refuses before any upstream call (the prompt does not fit).
  void refuse(chat_failure f) {
    std::lock_guard<std::mutex> lock(mu_);
    caf::anon_send(relay_, failed_atom::value, std::move(f));
    finish_locked(chat_done{}, true);
  }

  // call_listener
  void on_delta(std::string content) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_)
      return;
    completion_estimate_ += estimate_tokens(content);
    ++produced_;
    if (!req_.cache_key.empty())
      deltas_.push_back(content);
    caf::anon_send(relay_, delta_atom::value, std::move(content));
    if (req_.completion_cap > 0 && produced_ >= req_.completion_cap) {
      // The tenant's daily budget ends here: stop the upstream and end cleanly.
      if (svc_->counters)
        svc_->counters->budget_cutoffs.fetch_add(1, std::memory_order_relaxed);
      // (This thread is inside the call's own event delivery: cancelling it here is safe.)
      if (call_)
        call_->cancel();
      chat_done d{"length", prompt_estimate_, produced_, model(), ""};
      caf::anon_send(relay_, done_atom::value, d);
      finish_locked(d, false);
    }
  }

  void on_served(const std::string& model) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_)
      return;
    served_ = model;
    caf::anon_send(relay_, served_atom::value, model);
  }

  void on_done(chat_done d) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_)
      return;
    d.model = model(); // the client's name for it
    if (!req_.cache_key.empty())
      caf::anon_send(tenant_, cache_atom::value, req_.cache_key, std::move(deltas_),
                     d.finish_reason, d.prompt_tokens, d.completion_tokens);
    caf::anon_send(relay_, done_atom::value, d);
    finish_locked(d, false);
  }

  void on_failed(chat_failure f) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_)
      return;
    caf::anon_send(relay_, failed_atom::value, std::move(f));
    finish_locked(chat_done{"error", prompt_estimate_, completion_estimate_, "", ""}, true);
  }

  // call_handle: the client went away (or the tenant stops). What the upstream already
  // produced still counts.
  void cancel() override {
    std::shared_ptr<call_handle> call;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_)
        return;
      call = call_;
      finish_locked(chat_done{"cancelled", prompt_estimate_, completion_estimate_, "", ""}, true);
    }
    // Outside our lock: the call may be delivering an event to us right now, holding its own
    // lock and waiting for ours; it finds us finished and lets go.
    if (call)
      call->cancel();
  }

private:
  std::string model() const { return served_.empty() ? req_.model : served_; }

  /// Ends the turn exactly once: usage, the tenant's count.
  void finish_locked(const chat_done& d, bool failed) {
    if (finished_)
      return;
    finished_ = true;
    record_usage(*svc_, req_, d, failed);
    caf::anon_send(tenant_, ended_atom::value, req_.request_id,
                   d.prompt_tokens + d.completion_tokens);
    call_.reset(); // the call holds us as its listener: break the cycle
  }

  std::mutex mu_;
  live_count live_;
  chat_request req_;
  caf::actor relay_;
  tenant_actor tenant_;
  std::shared_ptr<const chat_services> svc_;
  std::shared_ptr<call_handle> call_;
  int64_t prompt_estimate_ = 0;
  int64_t completion_estimate_ = 0;
  int64_t produced_ = 0; ///< deltas forwarded (one token each, as streaming upstreams send them)
  std::vector<std::string> deltas_; ///< kept only when the result goes into the response cache
  std::string served_; ///< the fallback model that serves the call ("" = the one asked for)
  bool finished_ = false;
};

} // namespace

std::shared_ptr<call_handle> start_turn(chat_request req, const route& r,
                                        std::shared_ptr<const tenants::tenant_config> cfg,
                                        caf::actor relay, tenant_actor tenant,
                                        std::shared_ptr<const chat_services> svc) {
  upstream_call call;
  call.request_id = req.request_id;
  call.model = r.upstream_model;
  call.max_tokens = req.max_tokens;
  call.extra_json = req.extra_json;
  call.client_model = req.model;
  call.client_streaming = req.stream;
  call.allowed_models = cfg->allowed_models;
  call.traceparent = req.traceparent;
  bool fits = build_prompt(*cfg, {}, req.messages, r.context_tokens, call.messages);
  auto t = std::make_shared<turn_call>(std::move(req), std::move(relay), std::move(tenant),
                                       std::move(svc));
  if (!fits) {
    t->refuse(chat_failure{chat_error_kind::invalid_request,
                           "The messages exceed the model's context of " +
                             std::to_string(r.context_tokens) + " tokens.",
                           0});
    return t;
  }
  int64_t prompt_estimate = 0;
  for (auto& m : call.messages)
    prompt_estimate += m.tokens;
  t->begin(r, std::move(call), prompt_estimate);
  return t;
}

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

} // namespace detail
} // namespace parley::actors
