// The turn engine shared by stateless completions and conversation turns. See turn_core.hpp.
#include "turn/turn_core.hpp"

#include "parley/persistence/ids.hpp"

#include <nlohmann/json.hpp>

#include <mutex>

namespace parley::actors::detail {

int64_t system_prompt_tokens(const tenants::tenant_config& cfg) {
  return cfg.system_prompt.empty() ? 0 : estimate_tokens(cfg.system_prompt) + message_overhead_tokens;
}

bool build_prompt(const tenants::tenant_config& cfg, const std::vector<chat_message>& history,
                  const std::vector<chat_message>& fresh, int64_t budget_tokens,
                  std::vector<chat_message>& out) {
  out.clear();
  int64_t used = 0;
  if (!cfg.system_prompt.empty()) {
    out.push_back(to_chat_message(nlohmann::json{{"role", "system"}, {"content", cfg.system_prompt}}));
    used += out.back().tokens;
  }
  for (auto& m : fresh)
    used += m.tokens;
  if (used > budget_tokens)
    return false;
  // Newest history first, as far as the budget allows; then back in order.
  std::size_t keep = 0;
  for (auto it = history.rbegin(); it != history.rend(); ++it) {
    if (used + it->tokens > budget_tokens)
      break;
    used += it->tokens;
    ++keep;
  }
  out.insert(out.end(), history.end() - static_cast<std::ptrdiff_t>(keep), history.end());
  out.insert(out.end(), fresh.begin(), fresh.end());
  return true;
}

namespace {

/// One turn, as the listener of its provider call. Provider events and cancel() may come from
/// different threads; one mutex orders them. After the turn finished, only the commit's
/// completion touches it (fields fixed by then).
class turn_core final : public call_listener,
                        public turn_handle,
                        public std::enable_shared_from_this<turn_core> {
public:
  turn_core(turn_spec spec, std::shared_ptr<const chat_services> svc, turn_end_fn on_end)
    : spec_(std::move(spec)), svc_(std::move(svc)), on_end_(std::move(on_end)) {
    if (svc_->actors)
      live_.attach(&svc_->actors->turns);
    outcome_.turn_id = spec_.turn_id;
    outcome_.request_id = spec_.req.request_id;
    outcome_.cache_key = spec_.req.cache_key;
    attempt_.served = spec_.req.model;
  }

  /// Builds the prompt and calls the provider; a prompt over the model's context fails the
  /// turn before any upstream attempt.
  void begin() {
    upstream_call call;
    call.request_id = spec_.req.request_id;
    call.model = spec_.r.upstream_model;
    call.max_tokens = spec_.req.max_tokens;
    call.extra_json = std::move(spec_.req.extra_json);
    call.client_model = spec_.req.model;
    call.client_streaming = spec_.req.stream;
    call.allowed_models = spec_.cfg->allowed_models;
    call.traceparent = spec_.req.traceparent;
    bool fits = build_prompt(*spec_.cfg, spec_.history, spec_.req.messages, spec_.r.context_tokens,
                             call.messages);
    spec_.history.clear();
    spec_.req.messages.clear();
    if (!fits) {
      std::lock_guard<std::mutex> lock(mu_);
      outcome_.failure = chat_failure{chat_error_kind::invalid_request,
                                      "The messages exceed the model's context of " +
                                        std::to_string(spec_.r.context_tokens) + " tokens.",
                                      0};
      return finish_locked(outcome_kind::failed);
    }
    for (auto& m : call.messages)
      prompt_estimate_ += m.tokens;
    {
      std::lock_guard<std::mutex> lock(mu_);
      attempt_.open = true; // attempt 1, unless the provider numbers its own attempts
    }
    auto handle = spec_.r.provider->start(std::move(call), shared_from_this());
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!finished_) {
        call_ = std::move(handle);
        return;
      }
    }
    handle->cancel(); // cancelled before start() returned (outside our lock: see cancel())
  }

  // -- call_listener --------------------------------------------------------------------

  void on_attempt(int32_t n, const std::string& deployment, const std::string& model) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_)
      return;
    if (attempt_.open && attempt_.n != n)
      close_attempt("error", 0);
    attempt_ = {n, deployment, model.empty() ? spec_.req.model : model, true};
    numbered_ = true;
  }

  void on_attempt_failed(int32_t n, const chat_failure& f) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_ || !attempt_.open || attempt_.n != n)
      return;
    close_attempt("error", f.upstream_status);
  }

  void on_delta(std::string content) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_)
      return;
    completion_estimate_ += estimate_tokens(content);
    ++produced_;
    if (keeps_text())
      reply_ += content;
    if (!spec_.req.cache_key.empty())
      outcome_.deltas.push_back(content);
    caf::anon_send(spec_.relay, delta_atom::value, std::move(content));
    if (spec_.req.completion_cap > 0 && produced_ >= spec_.req.completion_cap) {
      // The tenant's daily budget ends here: stop the upstream, keep what was said.
      if (svc_->counters)
        svc_->counters->budget_cutoffs.fetch_add(1, std::memory_order_relaxed);
      // (This thread is inside the call's own event delivery: cancelling it here is safe.)
      if (call_)
        call_->cancel();
      complete_locked(chat_done{"length", prompt_estimate_, produced_, "", ""});
    }
  }

  void on_served(const std::string& model) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_)
      return;
    served_ = model;
    caf::anon_send(spec_.relay, served_atom::value, model);
  }

  void on_done(chat_done d) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_)
      return;
    complete_locked(std::move(d));
  }

  void on_failed(chat_failure f) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_)
      return;
    auto status = f.upstream_status;
    // A provider that numbers its attempts and failed before making one (every circuit
    // breaker open) made no upstream attempt: no ledger row.
    bool attempted = numbered_ || f.cause != failure_cause::breaker_open;
    outcome_.failure = std::move(f); // told once the ledger row is committed and settled
    if (attempt_.open && attempted)
      close_attempt("error", status);
    finish_locked(outcome_kind::failed);
  }

  // -- call_handle: the client went away, or the owner stops ------------------------------

  void cancel() override {
    std::shared_ptr<call_handle> call;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_)
        return;
      call = call_;
      if (attempt_.open)
        close_attempt("cancelled", 0);
      cancelled_ = true;
      finish_locked(outcome_kind::cancelled);
    }
    // Outside our lock: the call may be delivering an event to us right now, holding its own
    // lock and waiting for ours; it finds us finished and lets go.
    if (call)
      call->cancel();
  }

  int64_t charged() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return charged_;
  }

private:
  enum class outcome_kind { completed, failed, cancelled };

  struct attempt_state {
    int32_t n = 1;
    std::string deployment;
    std::string served;
    bool open = false;
  };

  bool keeps_text() const { return spec_.reply_seq > 0; }
  std::string model() const { return served_.empty() ? spec_.req.model : served_; }

  /// The running attempt ended: its ledger row. It is charged what the client received
  /// (the prompt, and the completion so far) once tokens flowed, or when it was cut short
  /// while the upstream worked on it; a failure before any token costs nothing.
  void close_attempt(const char* outcome, int status, int64_t prompt = -1, int64_t completion = -1) {
    attempt_.open = false;
    bool charged = produced_ > 0 || std::string_view(outcome) == "cancelled";
    persistence::usage_entry u;
    u.request_id = spec_.req.request_id;
    u.attempt = attempt_.n;
    u.tenant_id = spec_.req.tenant_id;
    u.key_id = spec_.req.key_id;
    u.model = spec_.req.model;
    u.served_model = served_.empty() ? attempt_.served : served_;
    u.deployment = attempt_.deployment;
    u.prompt_tokens = prompt >= 0 ? prompt : (charged ? prompt_estimate_ : 0);
    u.completion_tokens = completion >= 0 ? completion : (charged ? completion_estimate_ : 0);
    u.outcome = outcome;
    u.upstream_status = status;
    u.at = persistence::now_millis();
    outcome_.tokens += u.prompt_tokens + u.completion_tokens;
    charged_ = outcome_.tokens;
    rows_.push_back(std::move(u));
  }

  /// The upstream finished (or was cut off at the budget).
  void complete_locked(chat_done d) {
    d.model = model(); // the client's name for it
    d.conversation_id = spec_.req.conversation_id;
    close_attempt("ok", 0, d.prompt_tokens, d.completion_tokens);
    outcome_.done = d;
    if (keeps_text()) {
      outcome_.reply = to_chat_message(nlohmann::json{{"role", "assistant"}, {"content", reply_}});
      outcome_.reply_seq = spec_.reply_seq;
    }
    finish_locked(outcome_kind::completed);
  }

  /// Ends the turn exactly once: commits the ledger rows (and a conversation's reply), then
  /// tells the relay (a completed turn's end waits for the commit) and the owner.
  void finish_locked(outcome_kind kind) {
    if (finished_)
      return;
    finished_ = true;
    call_.reset(); // the call holds us as its listener: break the cycle
    outcome_.completed = kind == outcome_kind::completed;
    persistence::turn_write w;
    w.usage = std::move(rows_);
    if (outcome_.completed && keeps_text()) {
      persistence::message_record m;
      m.conversation_id = spec_.req.conversation_id;
      m.tenant_id = spec_.req.tenant_id;
      m.seq = spec_.reply_seq;
      m.role = "assistant";
      m.content_json = outcome_.reply.json;
      m.completion_tokens = outcome_.done.completion_tokens;
      m.created_at = persistence::now_millis();
      w.messages.push_back(std::move(m));
    }
    if (!svc_->writer || (w.usage.empty() && w.messages.empty()))
      return committed(persistence::ok_status());
    auto self = shared_from_this();
    if (!svc_->writer->submit(std::move(w), [self](persistence::status s) { self->committed(s); }))
      committed(persistence::status(persistence::persistence_errc::unavailable, "writer queue full"));
  }

  /// The commit's outcome (on the writer's thread, or inline). Reads only what was fixed when
  /// the turn finished.
  /// The relay is told the end by the owner's owner, the tenant, once it has settled the turn
  /// (outcome.tell): see turn_outcome.
  void committed(const persistence::status& s) {
    outcome_.store = s.code();
    outcome_.relay = spec_.relay;
    if (outcome_.completed) {
      outcome_.tell = true;
      if (!s.ok()) {
        outcome_.completed = false;
        outcome_.failure = chat_failure{chat_error_kind::unavailable,
                                        "The completion could not be recorded; retry later.", 0, 1000};
      }
    } else {
      outcome_.tell = !cancelled_; // a failure; a cancelled turn's client is gone
    }
    auto end = std::move(on_end_);
    if (end)
      end(std::move(outcome_));
    else
      tell_end(outcome_);
  }

  mutable std::mutex mu_;
  live_count live_;
  turn_spec spec_;
  std::shared_ptr<const chat_services> svc_;
  turn_end_fn on_end_;
  std::shared_ptr<call_handle> call_;
  attempt_state attempt_;
  std::vector<persistence::usage_entry> rows_; ///< closed attempts, in order
  turn_outcome outcome_;
  bool cancelled_ = false; ///< ended by cancel(): nobody to tell
  /// outcome_.tokens as of the last closed attempt, readable while the commit's completion
  /// hands outcome_ on (charged()).
  int64_t charged_ = 0;
  int64_t prompt_estimate_ = 0;
  int64_t completion_estimate_ = 0;
  int64_t produced_ = 0; ///< deltas forwarded (one token each, as streaming upstreams send them)
  std::string reply_;    ///< a conversation turn's reply text
  std::string served_;   ///< the fallback model that serves the call ("" = the one asked for)
  bool numbered_ = false; ///< the provider reports its attempts (on_attempt)
  bool finished_ = false;
};

} // namespace

void tell_end(const turn_outcome& o) {
  if (!o.tell || !o.relay)
    return;
  if (o.completed)
    caf::anon_send(o.relay, done_atom::value, o.done);
  else
    caf::anon_send(o.relay, failed_atom::value, o.failure);
}

std::shared_ptr<turn_handle> start_turn(turn_spec spec, std::shared_ptr<const chat_services> svc,
                                        turn_end_fn on_end) {
  auto t = std::make_shared<turn_core>(std::move(spec), std::move(svc), std::move(on_end));
  t->begin();
  return t;
}

} // namespace parley::actors::detail
