// The built-in `parley-echo` model: a deterministic demo and test model that streams the
// user's last message back word by word at a configurable rate, with usage numbers estimated
// like a real model's. It needs no network, so `scripts/run` works with zero services.
#include "parley/actors/spawn.hpp"

#include <caf/all.hpp>

#include <sstream>

namespace parley::actors {
namespace {

using tick_atom = caf::atom_constant<caf::atom("echotick")>;

struct echo_state {
  std::vector<std::string> words;
  std::size_t next = 0;
  int64_t prompt_tokens = 0;
  std::string finish = "stop";
  std::shared_ptr<call_listener> listener;
  std::chrono::microseconds pace{0};
  static inline const char* name = "parley.echo_call";
};

caf::behavior echo_call(caf::stateful_actor<echo_state>* self, upstream_call call,
                        std::shared_ptr<call_listener> listener, int tokens_per_second) {
  auto& st = self->state;
  st.listener = std::move(listener);
  if (tokens_per_second > 0)
    st.pace = std::chrono::microseconds(1'000'000 / tokens_per_second);
  std::string last_user;
  for (auto& m : call.messages) {
    st.prompt_tokens += m.tokens; // text, other parts and the per-message framing
    if (m.role == "user")
      last_user = m.text;
  }
  std::istringstream in(last_user);
  std::string w;
  while (in >> w)
    st.words.push_back(st.words.empty() ? w : " " + w);
  if (st.words.empty())
    st.words.push_back("(empty)");
  if (call.max_tokens > 0 && static_cast<int64_t>(st.words.size()) > call.max_tokens) {
    st.words.resize(static_cast<std::size_t>(call.max_tokens));
    st.finish = "length";
  }
  auto model = call.client_model.empty() ? call.model : call.client_model;
  self->send(self, tick_atom::value);
  return {
    [=](tick_atom) {
      auto& s = self->state;
      if (s.next < s.words.size()) {
        s.listener->on_delta(s.words[s.next++]);
        if (s.pace.count() > 0)
          self->delayed_send(self, s.pace, tick_atom::value);
        else
          self->send(self, tick_atom::value);
        return;
      }
      chat_done d;
      d.finish_reason = s.finish;
      d.prompt_tokens = s.prompt_tokens;
      d.completion_tokens = static_cast<int64_t>(s.words.size());
      d.model = model;
      s.listener->on_done(std::move(d));
      self->quit();
    },
  };
}

class echo_handle final : public call_handle {
public:
  explicit echo_handle(caf::actor a) : actor_(std::move(a)) {}
  void cancel() override { caf::anon_send_exit(actor_, caf::exit_reason::user_shutdown); }

private:
  caf::actor actor_;
};

class echo_provider final : public provider_port {
public:
  echo_provider(caf::actor_system& sys, int tokens_per_second)
    : sys_(sys), tps_(tokens_per_second) {}

  std::shared_ptr<call_handle> start(upstream_call call,
                                     std::shared_ptr<call_listener> listener) override {
    return std::make_shared<echo_handle>(sys_.spawn(echo_call, std::move(call), std::move(listener), tps_));
  }

private:
  caf::actor_system& sys_;
  int tps_;
};

} // namespace

std::shared_ptr<provider_port> make_echo_provider(caf::actor_system& sys, int tokens_per_second) {
  return std::make_shared<echo_provider>(sys, tokens_per_second);
}

} // namespace parley::actors
