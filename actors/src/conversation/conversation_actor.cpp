// The conversation actor: one per live conversation. It loads the history on activation and
// runs one turn at a time (later turns queue in order), as an explicit state machine:
//
//   idle --(a turn is queued, history ready)--> saving_user --(saved: ok)--> calling
//   calling --(ended: the turn engine finished and committed reply + usage)--> idle
//
// Every store acknowledgement and turn end carries its turn's id, and the actor acts only on
// those of the turn in its current phase. The user's messages are committed before the
// upstream call; the reply is committed (with the turn's usage) before the client sees its
// end. A client gone while its messages are being committed does not break the next turn:
// the acknowledgement still advances the history, then the turn ends without a call. Ending
// a turn always cancels its engine; the next turn starts only once the engine has ended.
//
// Passivation: an idle conversation quits after an idle timeout so that it costs no memory,
// but only with its tenant's agreement, because the tenant may have sent it a turn that it
// has not received yet (a turn sent right behind the timer's message would otherwise be lost
// with the mailbox: the relay answers 500 and the tenant's in-flight count never comes back).
//
//   1. The idle timer fires while the actor is idle with an empty queue: it asks its tenant
//      (passivate_atom, turns_received), turns_received counting every turn it was sent.
//   2. The tenant, which counts the turns it sent this actor, agrees only if the counts are
//      equal -- no turn is on its way -- and forgets the actor in the same handler, so that no
//      turn is ever sent to it again (the next one spawns a fresh actor, which loads the
//      history). If a turn is on its way, it answers no: the actor serves it, and when idle
//      again re-arms its timer and asks again later.
//   3. On agreement the actor quits. It is still idle with an empty queue: only the tenant
//      sends it turns, and every turn it sent had been received before the question.
//
// The handshake does not rely on message ordering between the tenant's turns and its answer,
// and a fresh actor for the same conversation can exist only once the old one can no longer
// receive turns (it quits on the agreement it is about to read, having nothing to serve).
//
// Stopping otherwise (the conversation is deleted: the tenant sends an exit; or a crash: an
// exception in a handler, an exit with an error) loses what the actor holds -- its queue and
// the turns still in its mailbox -- without a word. The tenant settles those: it keeps the
// request ids of the turns it sent us and has not seen end, and at our down message settles
// each of them once and tells its client a clean failure. The only thing it could not know
// is what the running turn's engine charged (its end would come back to us): our state's
// destructor, which runs before the down message is sent, cancels the engine and tells the
// tenant (charged_atom).
#include "internal.hpp"
#include "turn/turn_core.hpp"

#include "parley/persistence/ids.hpp"

#include <algorithm>
#include <deque>

namespace parley::actors::detail {
namespace {

struct pending_turn {
  uint64_t id = 0;
  chat_request req;
  turn_sink_actor relay;
  bool client_gone = false;
};

struct conversation_state {
  live_count live;
  std::string tenant_id;
  std::string conversation_id;
  tenant_actor tenant;
  std::shared_ptr<const chat_services> svc;

  enum class history_phase { unloaded, loading, ready, missing } history_state = history_phase::unloaded;
  std::vector<chat_message> history;
  int64_t next_seq = 1;

  enum class turn_phase { idle, saving_user, calling } phase = turn_phase::idle;
  std::vector<pending_turn> queue; ///< the front is the running turn unless idle (usually 0-1 long)
  uint64_t next_turn_id = 1;
  uint64_t turns_received = 0; ///< every turn the tenant sent us (the passivation handshake)
  std::vector<chat_message> fresh; ///< the running turn's new messages
  std::shared_ptr<turn_handle> call; ///< the running turn's engine (calling)
  uint64_t idle_generation = 0;
  /// Cancels that overtook their turn (the relay cancels as soon as it holds the tenant's
  /// answer; the tenant sends us the turn right after that answer): the newest few.
  std::deque<std::string> cancelled_early;
  static constexpr std::size_t max_cancelled_early = 64;
  static inline const char* name = "parley.conversation";

  ~conversation_state() {
    // Stopping (deleted, a crash, or the tenant stops): the running turn's engine stops with
    // us. Its end would come back to us and be lost with our mailbox, so the tenant learns
    // now what the turn's ledger rows charge; this runs before our down message is sent, at
    // which the tenant settles every turn we have not ended (see the top of this file).
    if (call) {
      call->cancel();
      if (tenant && !queue.empty())
        caf::anon_send(tenant, charged_atom::value, queue.front().req.request_id, call->charged());
    }
  }
};

using self_ptr = conversation_actor::stateful_pointer<conversation_state>;

void advance(self_ptr self);

/// Ends the front turn: the tenant settles its admission with what it used.
void finish_front(self_ptr self, turn_outcome o) {
  auto& st = self->state;
  st.queue.erase(st.queue.begin());
  st.phase = conversation_state::turn_phase::idle;
  st.call.reset();
  st.fresh.clear();
  self->send(st.tenant, ended_atom::value, std::move(o));
}

turn_outcome no_usage(const pending_turn& t) {
  turn_outcome o;
  o.turn_id = t.id;
  o.request_id = t.req.request_id;
  return o;
}

/// Fails the front turn before its engine ran.
void fail_front(self_ptr self, chat_failure f) {
  auto& st = self->state;
  auto& t = st.queue.front();
  auto o = no_usage(t);
  o.tell = !t.client_gone; // by the tenant, once it settled the turn
  o.failure = std::move(f);
  o.relay = t.relay;
  finish_front(self, std::move(o));
}

void arm_idle_timer(self_ptr self) {
  auto& st = self->state;
  self->delayed_send(self, st.svc->conversation_idle, idle_atom::value, ++st.idle_generation);
}

/// Loads history off the scheduler; the result comes back as a loaded_atom message.
void start_load(self_ptr self) {
  auto& st = self->state;
  st.history_state = conversation_state::history_phase::loading;
  auto me = caf::actor_cast<conversation_actor>(self);
  auto svc = st.svc;
  auto tenant_id = st.tenant_id, conv_id = st.conversation_id;
  bool queued = svc->executor->try_post([=] {
    history_load h;
    auto conv = svc->store->get_conversation(tenant_id, conv_id);
    if (!conv.ok()) {
      h.error = conv.code() == persistence::persistence_errc::not_found ? chat_error_kind::not_found
                                                                          : chat_error_kind::unavailable;
    } else {
      int64_t after = 0;
      for (;;) {
        auto page = svc->store->list_messages(tenant_id, conv_id, after, 500);
        if (!page.ok()) {
          h.error = chat_error_kind::unavailable;
          break;
        }
        for (auto& m : *page) {
          h.messages.push_back(to_chat_message(m.content_json));
          after = m.seq;
        }
        if (page->size() < 500)
          break;
      }
      h.next_seq = after + 1;
    }
    caf::anon_send(me, loaded_atom::value, std::move(h));
  });
  if (!queued)
    caf::anon_send(me, loaded_atom::value, history_load{chat_error_kind::overloaded, {}, 1});
}

/// Commits the front turn's user messages off the scheduler; the outcome comes back as a
/// saved_atom message with the turn's id.
void save_user_messages(self_ptr self) {
  auto& st = self->state;
  auto& turn = st.queue.front();
  st.phase = conversation_state::turn_phase::saving_user;
  st.fresh = turn.req.messages;
  persistence::turn_write w;
  auto now = persistence::now_millis();
  for (std::size_t i = 0; i < st.fresh.size(); ++i) {
    persistence::message_record r;
    r.conversation_id = st.conversation_id;
    r.tenant_id = st.tenant_id;
    r.seq = st.next_seq + static_cast<int64_t>(i);
    r.role = st.fresh[i].role;
    r.content_json = st.fresh[i].json;
    r.prompt_tokens = st.fresh[i].tokens;
    r.created_at = now;
    w.messages.push_back(std::move(r));
  }
  auto me = caf::actor_cast<conversation_actor>(self);
  auto id = turn.id;
  bool queued = st.svc->writer->submit(std::move(w), [me, id](persistence::status r) {
    caf::anon_send(me, saved_atom::value, id, r.code());
  });
  if (!queued)
    caf::anon_send(me, saved_atom::value, id, persistence::persistence_errc::unavailable);
}

/// Starts the front turn's engine on the committed history.
void start_engine(self_ptr self) {
  auto& st = self->state;
  auto& turn = st.queue.front();
  auto r = st.svc->routes->find(turn.req.model);
  if (!r)
    return fail_front(self, {chat_error_kind::model_not_found,
                             "The model `" + turn.req.model + "` does not exist.", 0});
  st.phase = conversation_state::turn_phase::calling;
  turn_spec spec;
  spec.req = turn.req;
  spec.req.messages.clear(); // committed: they are the newest history now
  spec.r = *r;
  spec.cfg = std::make_shared<tenants::tenant_config>(tenants::parse_stored_config(turn.req.tenant_config));
  spec.relay = turn.relay;
  spec.turn_id = turn.id;
  spec.history = st.history;
  spec.reply_seq = st.next_seq;
  auto me = caf::actor_cast<conversation_actor>(self);
  st.call = start_turn(std::move(spec), st.svc, [me](turn_outcome o) {
    caf::anon_send(me, ended_atom::value, std::move(o));
  });
}

/// Runs the next queued turn, if none is running.
void advance(self_ptr self) {
  auto& st = self->state;
  while (st.phase == conversation_state::turn_phase::idle && !st.queue.empty()) {
    switch (st.history_state) {
      case conversation_state::history_phase::unloaded:
        return start_load(self);
      case conversation_state::history_phase::loading:
        return;
      case conversation_state::history_phase::missing:
        fail_front(self, {chat_error_kind::not_found,
                          "No conversation found with id '" + st.conversation_id + "'.", 0});
        continue;
      case conversation_state::history_phase::ready:
        break;
    }
    if (st.queue.front().client_gone) {
      finish_front(self, no_usage(st.queue.front()));
      continue;
    }
    return save_user_messages(self);
  }
  if (st.phase == conversation_state::turn_phase::idle)
    arm_idle_timer(self);
}

conversation_actor::behavior_type conversation_impl(self_ptr self, std::string tenant_id,
                                                    std::string conversation_id, tenant_actor tenant,
                                                    std::shared_ptr<const chat_services> svc) {
  auto& st = self->state;
  st.tenant_id = std::move(tenant_id);
  st.conversation_id = std::move(conversation_id);
  st.tenant = std::move(tenant);
  st.svc = std::move(svc);
  if (st.svc->actors)
    st.live.attach(&st.svc->actors->conversations);
  using phase = conversation_state::turn_phase;
  return {
    [=](chat_atom, chat_request& req, turn_sink_actor relay) {
      auto& s = self->state;
      ++s.turns_received;
      auto early = std::find(s.cancelled_early.begin(), s.cancelled_early.end(), req.request_id);
      bool gone = early != s.cancelled_early.end();
      if (gone)
        s.cancelled_early.erase(early);
      s.queue.push_back({s.next_turn_id++, std::move(req), std::move(relay), gone});
      advance(self);
    },
    [=](loaded_atom, history_load& h) {
      auto& s = self->state;
      if (h.error != chat_error_kind{}) {
        // Not found stays not found; anything else fails the waiting turns and retries later.
        bool missing = h.error == chat_error_kind::not_found;
        s.history_state = missing ? conversation_state::history_phase::missing
                                  : conversation_state::history_phase::unloaded;
        if (!missing)
          while (!s.queue.empty())
            fail_front(self, {h.error, "The conversation store is unavailable; retry later.", 0, 1000});
        return advance(self);
      }
      s.history = std::move(h.messages);
      s.next_seq = h.next_seq;
      s.history_state = conversation_state::history_phase::ready;
      advance(self);
    },
    [=](saved_atom, uint64_t turn_id, persistence::persistence_errc code) {
      auto& s = self->state;
      if (s.phase != phase::saving_user || s.queue.front().id != turn_id)
        return; // not the acknowledgement this state waits for
      if (code != persistence::persistence_errc::ok) {
        log::event(s.svc->logger, spdlog::level::err, "conversation write failed")
          .str("tenant_id", s.tenant_id)
          .str("conversation_id", s.conversation_id)
          .str("error", persistence::to_string(code));
        // Reload before the next turn: our idea of the next seq may be stale.
        s.history_state = conversation_state::history_phase::unloaded;
        fail_front(self, {chat_error_kind::unavailable,
                          "The conversation could not be saved; retry later.", 0, 1000});
        return advance(self);
      }
      // Committed: the user's messages are history now, whether or not the client stayed.
      s.next_seq += static_cast<int64_t>(s.fresh.size());
      s.history.insert(s.history.end(), s.fresh.begin(), s.fresh.end());
      if (s.queue.front().client_gone) {
        finish_front(self, no_usage(s.queue.front()));
        return advance(self);
      }
      start_engine(self);
      if (s.phase == phase::idle)
        advance(self); // the engine could not start (fail_front ended the turn)
    },
    [=](ended_atom, turn_outcome& o) {
      auto& s = self->state;
      if (s.phase != phase::calling || s.queue.front().id != o.turn_id)
        return; // a stale end: not the running turn's
      if (o.reply_seq > 0 && o.store == persistence::persistence_errc::ok && o.completed) {
        s.history.push_back(o.reply);
        s.next_seq = o.reply_seq + 1;
      } else if (o.store != persistence::persistence_errc::ok) {
        s.history_state = conversation_state::history_phase::unloaded; // reload: seq may be stale
      }
      o.reply = chat_message{};
      finish_front(self, std::move(o));
      advance(self);
    },
    [=](cancel_atom, const std::string& request_id) {
      auto& s = self->state;
      for (auto it = s.queue.begin(); it != s.queue.end(); ++it) {
        if (it->req.request_id != request_id)
          continue;
        it->client_gone = true;
        if (it != s.queue.begin() || s.phase == phase::idle) {
          // Not started: forget it now.
          auto o = no_usage(*it);
          s.queue.erase(it);
          self->send(s.tenant, ended_atom::value, std::move(o));
        } else if (s.phase == phase::calling && s.call) {
          // Its engine stops and ends the turn (what the upstream produced still counts);
          // a reply already being committed completes instead.
          s.call->cancel();
        }
        // saving_user: the acknowledgement ends it.
        return;
      }
      s.cancelled_early.push_back(request_id);
      if (s.cancelled_early.size() > conversation_state::max_cancelled_early)
        s.cancelled_early.pop_front();
    },
    [=](idle_atom, uint64_t generation) {
      auto& s = self->state;
      if (generation != s.idle_generation || s.phase != phase::idle || !s.queue.empty())
        return;
      // Passivate only with the tenant's agreement (see the top of this file).
      self->request(s.tenant, caf::infinite, passivate_atom::value, s.turns_received)
        .then(
          [=](bool agreed) {
            if (!agreed)
              return; // a turn is on its way: we serve it and ask again when idle
            // The tenant forgot us: no turn reached us since we asked, and none will.
            if (auto* counters = self->state.svc->actors)
              counters->conversation_passivations.fetch_add(1, std::memory_order_relaxed);
            self->quit(); // history reloads in the actor of the next turn
          },
          [=](caf::error&) {
            // The tenant is gone: we are linked to it and stop with it.
          });
    },
  };
}

} // namespace

conversation_actor spawn_conversation(caf::local_actor* parent, std::string tenant_id,
                                      std::string conversation_id, tenant_actor tenant,
                                      std::shared_ptr<const chat_services> svc) {
  // Linked: a conversation dies with its tenant (shutdown); the tenant traps children's exits.
  return parent->spawn<caf::linked>(conversation_impl, std::move(tenant_id),
                                    std::move(conversation_id), std::move(tenant), std::move(svc));
}

} // namespace parley::actors::detail
