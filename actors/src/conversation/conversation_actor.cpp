// The conversation actor: one per live conversation. It loads the history on activation,
// runs one turn at a time (later turns queue in order), commits the user message before the
// upstream call and the assistant reply before the client sees the end of it, and passivates
// after an idle timeout so that an idle conversation costs no memory.
#include "internal.hpp"

#include "parley/persistence/ids.hpp"

#include <nlohmann/json.hpp>

#include <deque>

namespace parley::actors::detail {
namespace {

struct pending_turn {
  chat_request req;
  caf::actor relay;
};

struct conversation_state {
  live_count live;
  std::string tenant_id;
  std::string conversation_id;
  caf::actor tenant;
  std::shared_ptr<const chat_services> svc;

  enum class phase { unloaded, loading, ready, failed } load = phase::unloaded;
  std::vector<chat_message> history;
  int64_t next_seq = 1;

  std::vector<pending_turn> queue; ///< usually empty or one: no deque (its empty form allocates ~600 B)
  bool busy = false;              ///< the front turn is running
  std::shared_ptr<call_handle> call;
  std::string reply;              ///< assistant text of the running turn
  int64_t produced = 0;           ///< deltas of the running turn
  std::string served;             ///< the fallback model serving the running turn, if any
  std::vector<chat_message> fresh;///< the running turn's new messages (committed)
  int64_t prompt_estimate = 0;
  chat_done pending_done;         ///< the upstream finished; waiting for the reply's commit
  chat_message pending_reply;
  uint64_t idle_generation = 0;
  static inline const char* name = "parley.conversation";
};

using state_ptr = caf::stateful_actor<conversation_state>*;

void process_next(state_ptr self);

void end_turn(state_ptr self, const chat_done& d, bool failed) {
  auto& st = self->state;
  auto turn = std::move(st.queue.front());
  st.queue.erase(st.queue.begin());
  st.busy = false;
  st.call.reset();
  st.reply.clear();
  st.produced = 0;
  st.fresh.clear();
  record_usage(*st.svc, turn.req, d, failed);
  self->send(st.tenant, ended_atom::value, turn.req.request_id, d.prompt_tokens + d.completion_tokens);
  process_next(self);
}

void fail_turn(state_ptr self, chat_failure f) {
  auto& st = self->state;
  self->send(st.queue.front().relay, failed_atom::value, std::move(f));
  end_turn(self, chat_done{"error", st.prompt_estimate, estimate_tokens(st.reply), "", ""}, true);
}

void arm_idle_timer(state_ptr self) {
  auto& st = self->state;
  self->delayed_send(self, st.svc->conversation_idle, idle_atom::value, ++st.idle_generation);
}

/// Loads history off the scheduler; the result comes back as a loaded_atom message.
void start_load(state_ptr self) {
  auto& st = self->state;
  st.load = conversation_state::phase::loading;
  auto me = caf::actor_cast<caf::actor>(self);
  auto svc = st.svc;
  auto tenant_id = st.tenant_id, conv_id = st.conversation_id;
  bool queued = svc->executor->try_post([=] {
    std::vector<chat_message> history;
    int64_t next = 1;
    uint8_t err = 0;
    auto conv = svc->store->get_conversation(tenant_id, conv_id);
    if (!conv.ok()) {
      err = static_cast<uint8_t>(conv.code() == persistence::persistence_errc::not_found
                                   ? chat_error_kind::not_found
                                   : chat_error_kind::unavailable);
    } else {
      int64_t after = 0;
      for (;;) {
        auto page = svc->store->list_messages(tenant_id, conv_id, after, 500);
        if (!page.ok()) {
          err = static_cast<uint8_t>(chat_error_kind::unavailable);
          break;
        }
        for (auto& m : *page) {
          history.push_back(to_chat_message(m.content_json));
          after = m.seq;
        }
        if (page->size() < 500)
          break;
      }
      next = after + 1;
    }
    caf::anon_send(me, loaded_atom::value, err, std::move(history), next);
  });
  if (!queued)
    caf::anon_send(me, loaded_atom::value, static_cast<uint8_t>(chat_error_kind::overloaded),
                   std::vector<chat_message>{}, int64_t{1});
}

/// Commits messages off the scheduler; the outcome comes back as a saved_atom message.
void save(state_ptr self, std::vector<chat_message> msgs, std::vector<int64_t> tokens,
          bool assistant) {
  auto& st = self->state;
  std::vector<persistence::message_record> batch;
  auto now = persistence::now_millis();
  for (std::size_t i = 0; i < msgs.size(); ++i) {
    persistence::message_record r;
    r.conversation_id = st.conversation_id;
    r.tenant_id = st.tenant_id;
    r.seq = st.next_seq + static_cast<int64_t>(i);
    r.role = msgs[i].role;
    r.content_json = msgs[i].json;
    (assistant ? r.completion_tokens : r.prompt_tokens) = tokens[i];
    r.created_at = now;
    batch.push_back(std::move(r));
  }
  auto me = caf::actor_cast<caf::actor>(self);
  // Group commit: the writer combines appends of many conversations into one transaction.
  bool queued = st.svc->writer->append(std::move(batch), [me, assistant](persistence::status r) {
    caf::anon_send(me, saved_atom::value, assistant, r.ok(),
                   r.ok() ? std::string() : std::string(persistence::to_string(r.code())));
  });
  if (!queued)
    caf::anon_send(me, saved_atom::value, assistant, false, std::string("overloaded"));
}

void process_next(state_ptr self) {
  auto& st = self->state;
  if (st.busy)
    return;
  if (st.queue.empty()) {
    arm_idle_timer(self);
    return;
  }
  if (st.load == conversation_state::phase::unloaded)
    return start_load(self);
  if (st.load == conversation_state::phase::loading)
    return;
  st.busy = true;
  auto& turn = st.queue.front();
  if (st.load == conversation_state::phase::failed)
    return fail_turn(self, {chat_error_kind::not_found, "No conversation found with id '" +
                                                          st.conversation_id + "'.", 0});
  // The user's messages are committed before the upstream call.
  st.fresh = turn.req.messages;
  std::vector<int64_t> tokens;
  for (auto& m : st.fresh)
    tokens.push_back(estimate_tokens(m.text));
  save(self, st.fresh, tokens, false);
}

void call_upstream(state_ptr self) {
  auto& st = self->state;
  auto& turn = st.queue.front();
  auto r = st.svc->routes->find(turn.req.model);
  if (!r)
    return fail_turn(self, {chat_error_kind::model_not_found, "The model `" + turn.req.model +
                                                                "` does not exist.", 0});
  auto cfg = tenants::parse_stored_config(turn.req.tenant_config);
  upstream_call call;
  call.request_id = turn.req.request_id;
  call.model = r->upstream_model;
  call.max_tokens = turn.req.max_tokens;
  call.extra_json = turn.req.extra_json;
  call.client_model = turn.req.model;
  call.client_streaming = turn.req.stream;
  call.allowed_models = cfg.allowed_models;
  call.traceparent = turn.req.traceparent;
  if (!build_prompt(cfg, st.history, st.fresh, r->context_tokens, call.messages))
    return fail_turn(self, {chat_error_kind::invalid_request,
                            "The new messages exceed the model's context of " +
                              std::to_string(r->context_tokens) + " tokens.",
                            0});
  // The committed user messages are history from now on, whatever the upstream does.
  st.history.insert(st.history.end(), st.fresh.begin(), st.fresh.end());
  st.prompt_estimate = 0;
  for (auto& m : call.messages)
    st.prompt_estimate += estimate_tokens(m.text) + 4;
  st.served.clear();
  st.call = r->provider->start(std::move(call), actor_listener(caf::actor_cast<caf::actor>(self)));
}

/// The upstream finished (or was cut off): commit the reply, then tell the client.
void complete(state_ptr self, chat_done d) {
  auto& s = self->state;
  d.model = s.served.empty() ? s.queue.front().req.model : s.served;
  d.conversation_id = s.conversation_id;
  s.pending_done = d;
  s.pending_reply = to_chat_message(nlohmann::json{{"role", "assistant"}, {"content", s.reply}}.dump());
  s.call.reset();
  save(self, {s.pending_reply}, {d.completion_tokens}, true);
}

caf::behavior conversation_impl(state_ptr self, std::string tenant_id, std::string conversation_id,
                                caf::actor tenant, std::shared_ptr<const chat_services> svc) {
  auto& st = self->state;
  st.tenant_id = std::move(tenant_id);
  st.conversation_id = std::move(conversation_id);
  st.tenant = std::move(tenant);
  st.svc = std::move(svc);
  if (st.svc->actors)
    st.live.attach(&st.svc->actors->conversations);
  return {
    [=](chat_atom, chat_request& req, caf::actor relay) {
      self->state.queue.push_back({std::move(req), std::move(relay)});
      process_next(self);
    },
    [=](loaded_atom, uint8_t err, std::vector<chat_message>& history, int64_t next_seq) {
      auto& s = self->state;
      if (err != 0) {
        s.load = conversation_state::phase::unloaded;
        // Not found stays not found; anything else fails the waiting turns and retries later.
        auto kind = static_cast<chat_error_kind>(err);
        if (kind == chat_error_kind::not_found)
          s.load = conversation_state::phase::failed;
        while (!s.queue.empty()) {
          s.busy = true;
          fail_turn(self, {kind, kind == chat_error_kind::not_found
                                   ? "No conversation found with id '" + s.conversation_id + "'."
                                   : "The conversation store is unavailable; retry later.",
                           0});
        }
        return;
      }
      s.history = std::move(history);
      s.next_seq = next_seq;
      s.load = conversation_state::phase::ready;
      process_next(self);
    },
    [=](saved_atom, bool assistant, bool ok, const std::string& why) {
      auto& s = self->state;
      if (!s.busy || s.queue.empty())
        return;
      if (!ok) {
        log::event(s.svc->logger, spdlog::level::err, "conversation write failed")
          .str("tenant_id", s.tenant_id)
          .str("conversation_id", s.conversation_id)
          .str("error", why);
        // Reload before the next turn: our idea of the next seq may be stale.
        s.load = conversation_state::phase::unloaded;
        return fail_turn(self, {chat_error_kind::unavailable,
                                "The conversation could not be saved; retry later.", 0});
      }
      if (!assistant) {
        s.next_seq += static_cast<int64_t>(s.fresh.size());
        return call_upstream(self);
      }
      // The reply is durable: only now may the client see the end of it.
      s.next_seq += 1;
      self->send(s.queue.front().relay, done_atom::value, s.pending_done);
      s.history.push_back(s.pending_reply);
      auto done = s.pending_done;
      s.pending_reply = chat_message{};
      end_turn(self, done, false);
    },
    [=](delta_atom, std::string& content) {
      auto& s = self->state;
      if (!s.busy || s.queue.empty() || !s.pending_reply.role.empty())
        return;
      s.reply += content;
      ++s.produced;
      self->send(s.queue.front().relay, delta_atom::value, std::move(content));
      auto cap = s.queue.front().req.completion_cap;
      if (cap > 0 && s.produced >= cap) {
        // The tenant's daily budget ends here: stop the upstream, keep what was said.
        if (s.svc->counters)
          s.svc->counters->budget_cutoffs.fetch_add(1, std::memory_order_relaxed);
        if (s.call)
          s.call->cancel();
        complete(self, chat_done{"length", s.prompt_estimate, s.produced, "", ""});
      }
    },
    [=](served_atom, std::string& model) {
      auto& s = self->state;
      if (!s.busy || s.queue.empty() || !s.pending_reply.role.empty())
        return;
      s.served = model;
      self->send(s.queue.front().relay, served_atom::value, std::move(model));
    },
    [=](done_atom, chat_done& d) {
      auto& s = self->state;
      if (!s.busy || s.queue.empty() || !s.pending_reply.role.empty())
        return;
      complete(self, std::move(d));
    },
    [=](failed_atom, chat_failure& f) {
      auto& s = self->state;
      if (!s.busy || s.queue.empty())
        return;
      fail_turn(self, std::move(f));
    },
    [=](cancel_atom, const std::string& request_id) {
      auto& s = self->state;
      for (auto it = s.queue.begin(); it != s.queue.end(); ++it) {
        if (it->req.request_id != request_id)
          continue;
        if (it == s.queue.begin() && s.busy) {
          // The running turn: stop the upstream. The user message stays committed; the
          // partial reply is dropped (the client never saw its end).
          // While the reply is being committed, let the commit finish the turn.
          if (!s.pending_reply.role.empty())
            return;
          if (s.call)
            s.call->cancel();
          end_turn(self, chat_done{"cancelled", s.prompt_estimate, estimate_tokens(s.reply), "", ""},
                   true);
        } else {
          auto request_id = it->req.request_id;
          s.queue.erase(it);
          self->send(s.tenant, ended_atom::value, request_id, int64_t{0});
        }
        return;
      }
    },
    [=](idle_atom, uint64_t generation) {
      auto& s = self->state;
      if (generation == s.idle_generation && !s.busy && s.queue.empty()) {
        if (s.svc->actors)
          s.svc->actors->conversation_passivations.fetch_add(1, std::memory_order_relaxed);
        self->quit(); // passivate: the tenant forgets us; history reloads on the next turn
      }
    },
  };
}

} // namespace

caf::actor spawn_conversation(caf::local_actor* parent, std::string tenant_id,
                              std::string conversation_id, caf::actor tenant,
                              std::shared_ptr<const chat_services> svc) {
  // Linked: a conversation dies with its tenant (shutdown); the tenant traps children's exits.
  return parent->spawn<caf::linked>(conversation_impl, std::move(tenant_id), std::move(conversation_id),
                       std::move(tenant), std::move(svc));
}

} // namespace parley::actors::detail
