#include "support/admin_client.hpp"
#include "support/sse.hpp"
#include "support/wait.hpp"

#include <catch2/catch.hpp>
#include <sqlite3.h>

#include <thread>

using namespace parley::test;
namespace http = boost::beast::http;

namespace {

void fast_echo(parley::config::settings& s) { s.chat.echo_tokens_per_second = 0; }

struct tenant_key {
  std::string tenant_id, key;
};

tenant_key provision(uint16_t port, const std::string& slug, const json& config = json::object()) {
  auto t = create_tenant(port, slug, {{"config", config}});
  auto k = create_key(port, t["id"]);
  return {t["id"], k["key"]};
}

http_reply chat(uint16_t port, const std::string& key, const json& body) {
  return fetch(port, http::verb::post, "/v1/chat/completions", body.dump(), bearer(key));
}

json user(const std::string& text) { return {{"role", "user"}, {"content", text}}; }

void expect_error(const http_reply& r, int status, const std::string& code, const std::string& param = "") {
  INFO(r.body);
  REQUIRE(r.status == status);
  auto j = json::parse(r.body);
  if (!code.empty())
    CHECK(j["error"]["code"] == code);
  if (!param.empty())
    CHECK(j["error"]["param"] == param);
}

/// Rows of a query against the node's SQLite file (read-only connection).
std::vector<std::vector<std::string>> query(const std::string& db, const std::string& sql) {
  sqlite3* h = nullptr;
  REQUIRE(sqlite3_open_v2(db.c_str(), &h, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  std::vector<std::vector<std::string>> rows;
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(h, sql.c_str(), -1, &st, nullptr) == SQLITE_OK);
  while (sqlite3_step(st) == SQLITE_ROW) {
    std::vector<std::string> row;
    for (int i = 0; i < sqlite3_column_count(st); ++i) {
      auto t = sqlite3_column_text(st, i);
      row.push_back(t ? reinterpret_cast<const char*>(t) : "");
    }
    rows.push_back(row);
  }
  sqlite3_finalize(st);
  sqlite3_close(h);
  return rows;
}

} // namespace

TEST_CASE("a chat completion through the echo model answers OpenAI's JSON shape",
          "[chat][integration]") {
  server_fixture srv(fast_echo);
  auto tk = provision(srv.port(), "chat-json");
  auto r = chat(srv.port(), tk.key, {{"model", "parley-echo"}, {"messages", {user("hello chat world")}}});
  INFO(r.body);
  REQUIRE(r.status == 200);
  auto j = json::parse(r.body);
  CHECK(j["object"] == "chat.completion");
  CHECK(j["model"] == "parley-echo");
  CHECK(j["id"].get<std::string>().rfind("chatcmpl-", 0) == 0);
  CHECK(j["choices"][0]["message"]["role"] == "assistant");
  CHECK(j["choices"][0]["message"]["content"] == "hello chat world");
  CHECK(j["choices"][0]["finish_reason"] == "stop");
  CHECK(j["usage"]["completion_tokens"] == 3);
  CHECK(j["usage"]["total_tokens"] ==
        j["usage"]["prompt_tokens"].get<int>() + j["usage"]["completion_tokens"].get<int>());
  CHECK(j["id"] == "chatcmpl-" + r.header("x-request-id"));
}

TEST_CASE("a streamed completion sends SSE chunks, one usage chunk and [DONE]",
          "[chat][integration]") {
  server_fixture srv(fast_echo);
  auto tk = provision(srv.port(), "chat-sse");
  auto r = chat(srv.port(), tk.key,
                {{"model", "parley-echo"},
                 {"stream", true},
                 {"stream_options", {{"include_usage", true}}},
                 {"messages", {user("one two three")}}});
  REQUIRE(r.status == 200);
  CHECK(r.header("content-type") == "text/event-stream");
  auto events = sse_data(r.body);
  REQUIRE(events.size() >= 4);
  CHECK(events.back() == "[DONE]");
  std::string text;
  int usage_chunks = 0;
  std::string finish;
  for (std::size_t i = 0; i + 1 < events.size(); ++i) {
    auto c = json::parse(events[i]);
    CHECK(c["object"] == "chat.completion.chunk");
    if (!c["usage"].is_null()) {
      ++usage_chunks;
      CHECK(c["choices"].empty());
      CHECK(i + 2 == events.size()); // the last chunk before [DONE]
      CHECK(c["usage"]["completion_tokens"] == 3);
      continue;
    }
    auto& ch = c["choices"][0];
    text += ch["delta"].value("content", "");
    if (!ch["finish_reason"].is_null())
      finish = ch["finish_reason"];
  }
  CHECK(text == "one two three");
  CHECK(finish == "stop");
  CHECK(usage_chunks == 1);

  // Without include_usage: no usage field at all.
  auto plain = chat(srv.port(), tk.key, {{"model", "parley-echo"}, {"stream", true}, {"messages", {user("x")}}});
  for (auto& e : sse_data(plain.body))
    if (e != "[DONE]")
      CHECK_FALSE(json::parse(e).contains("usage"));
  // The connection is reusable after a stream (chunked encoding, keep-alive).
  http_client c(srv.port());
  for (int i = 0; i < 3; ++i) {
    auto rr = c.request(http::verb::post, "/v1/chat/completions",
                        json{{"model", "parley-echo"}, {"stream", true}, {"messages", {user("again")}}}.dump(),
                        bearer(tk.key));
    CHECK(sse_data(rr.body).back() == "[DONE]");
  }
}

TEST_CASE("max_tokens cuts the reply with finish_reason length", "[chat][integration]") {
  server_fixture srv(fast_echo);
  auto tk = provision(srv.port(), "chat-max");
  auto r = chat(srv.port(), tk.key,
                {{"model", "parley-echo"}, {"max_tokens", 2}, {"messages", {user("a b c d e")}}});
  auto j = json::parse(r.body);
  CHECK(j["choices"][0]["message"]["content"] == "a b");
  CHECK(j["choices"][0]["finish_reason"] == "length");
  CHECK(j["usage"]["completion_tokens"] == 2);
}

TEST_CASE("bad chat requests answer 400 or 404 in OpenAI's shape", "[chat][integration]") {
  server_fixture srv(fast_echo);
  auto tk = provision(srv.port(), "chat-bad", {{"allowed_models", {"parley-echo"}}});
  auto port = srv.port();
  expect_error(chat(port, tk.key, {{"model", "parley-echo"}}), 400, "", "messages");
  expect_error(chat(port, tk.key, {{"model", "parley-echo"}, {"messages", json::array()}}), 400, "", "messages");
  expect_error(chat(port, tk.key, {{"model", "parley-echo"}, {"messages", {{{"role", "robot"}, {"content", "x"}}}}}),
               400, "", "messages[0].role");
  expect_error(chat(port, tk.key, {{"model", "parley-echo"}, {"messages", {{{"role", "user"}, {"content", 5}}}}}),
               400, "", "messages[0].content");
  expect_error(chat(port, tk.key, {{"model", "parley-echo"}, {"n", 2}, {"messages", {user("x")}}}), 400, "", "n");
  expect_error(chat(port, tk.key, {{"model", "parley-echo"}, {"max_tokens", 0}, {"messages", {user("x")}}}), 400,
               "", "max_tokens");
  expect_error(chat(port, tk.key, {{"model", "parley-echo"}, {"stream_options", {{"include_usage", true}}},
                                   {"messages", {user("x")}}}),
               400, "", "stream_options");
  expect_error(chat(port, tk.key, {{"model", "parley-echo"}, {"temperature", 3}, {"messages", {user("x")}}}), 400,
               "", "temperature");
  expect_error(fetch(port, http::verb::post, "/v1/chat/completions", "{oops", bearer(tk.key)), 400, "invalid_json");
  expect_error(chat(port, tk.key, {{"messages", {user("x")}}}), 400, "");
  expect_error(chat(port, tk.key, {{"model", "gpt-unknown"}, {"messages", {user("x")}}}), 404, "model_not_found",
               "model");
  // Content parts are accepted; their text is what the echo model sees.
  auto parts = chat(port, tk.key, {{"model", "parley-echo"},
                                   {"messages", {{{"role", "user"}, {"content", {{{"type", "text"}, {"text", "from parts"}}}}}}}});
  CHECK(json::parse(parts.body)["choices"][0]["message"]["content"] == "from parts");
}

TEST_CASE("a tenant cannot use a model outside its allowed_models", "[chat][integration]") {
  server_fixture srv(fast_echo);
  auto tk = provision(srv.port(), "chat-allowed", {{"allowed_models", {"some-other-model"}}});
  expect_error(chat(srv.port(), tk.key, {{"model", "parley-echo"}, {"messages", {user("x")}}}), 404, "model_not_found");
  // The default model is used when the request names none.
  auto tk2 = provision(srv.port(), "chat-default", {{"default_model", "parley-echo"}});
  auto r = chat(srv.port(), tk2.key, {{"messages", {user("defaulted")}}});
  REQUIRE(r.status == 200);
  CHECK(json::parse(r.body)["model"] == "parley-echo");
}

TEST_CASE("a conversation keeps its history in order, in the database, across turns",
          "[chat][conversations][integration]") {
  server_fixture srv(fast_echo);
  auto tk = provision(srv.port(), "conv", {{"system_prompt", "Be terse."}});
  auto c = fetch(srv.port(), http::verb::post, "/v1/conversations", json{{"metadata", {{"topic", "t"}}}}.dump(),
                 bearer(tk.key));
  INFO(c.body);
  REQUIRE(c.status == 200);
  std::string cid = json::parse(c.body)["id"];
  CHECK(json::parse(c.body)["metadata"]["topic"] == "t");
  auto r1 = chat(srv.port(), tk.key, {{"model", "parley-echo"}, {"conversation", cid}, {"messages", {user("first")}}});
  REQUIRE(r1.status == 200);
  CHECK(r1.header("x-parley-conversation-id") == cid);
  auto r2 = chat(srv.port(), tk.key, {{"model", "parley-echo"}, {"conversation", cid}, {"stream", true},
                                      {"messages", {user("second")}}});
  REQUIRE(r2.status == 200);
  CHECK(sse_data(r2.body).back() == "[DONE]");
  // The second turn's prompt carried the history: more prompt tokens than the first.
  auto p1 = json::parse(r1.body)["usage"]["prompt_tokens"].get<int>();

  auto items = fetch(srv.port(), http::verb::get, "/v1/conversations/" + cid + "/items", {}, bearer(tk.key));
  REQUIRE(items.status == 200);
  auto ij = json::parse(items.body);
  REQUIRE(ij["data"].size() == 4);
  std::vector<std::string> roles, texts;
  for (auto& it : ij["data"]) {
    roles.push_back(it["role"]);
    texts.push_back(it["content"][0]["text"]);
  }
  CHECK(roles == std::vector<std::string>{"user", "assistant", "user", "assistant"});
  CHECK(texts == std::vector<std::string>{"first", "first", "second", "second"});

  auto rows = query(srv.dir().path() + "/parley.db",
                    "SELECT seq, role FROM messages WHERE conversation_id = '" + cid + "' ORDER BY seq");
  REQUIRE(rows.size() == 4);
  CHECK(rows[0] == std::vector<std::string>{"1", "user"});
  CHECK(rows[3] == std::vector<std::string>{"4", "assistant"});

  auto r3 = chat(srv.port(), tk.key, {{"model", "parley-echo"}, {"conversation", cid}, {"messages", {user("third")}}});
  CHECK(json::parse(r3.body)["usage"]["prompt_tokens"].get<int>() > p1);

  auto list = json::parse(fetch(srv.port(), http::verb::get, "/v1/conversations", {}, bearer(tk.key)).body);
  CHECK(list["data"].size() == 1);
  auto del = fetch(srv.port(), http::verb::delete_, "/v1/conversations/" + cid, {}, bearer(tk.key));
  REQUIRE(del.status == 200);
  CHECK(json::parse(del.body)["deleted"] == true);
  expect_error(fetch(srv.port(), http::verb::get, "/v1/conversations/" + cid, {}, bearer(tk.key)), 404, "not_found");
  expect_error(chat(srv.port(), tk.key, {{"model", "parley-echo"}, {"conversation", cid}, {"messages", {user("x")}}}),
               404, "not_found");
  CHECK(query(srv.dir().path() + "/parley.db", "SELECT count(*) FROM messages WHERE conversation_id = '" + cid + "'")[0][0] == "0");
}

TEST_CASE("another tenant's conversation answers 404 on every conversation route",
          "[chat][conversations][integration]") {
  server_fixture srv(fast_echo);
  auto a = provision(srv.port(), "iso-a");
  auto b = provision(srv.port(), "iso-b");
  auto c = fetch(srv.port(), http::verb::post, "/v1/conversations", "{}", bearer(a.key));
  std::string cid = json::parse(c.body)["id"];
  REQUIRE(chat(srv.port(), a.key, {{"model", "parley-echo"}, {"conversation", cid}, {"messages", {user("secret")}}}).status == 200);
  expect_error(fetch(srv.port(), http::verb::get, "/v1/conversations/" + cid, {}, bearer(b.key)), 404, "not_found");
  expect_error(fetch(srv.port(), http::verb::get, "/v1/conversations/" + cid + "/items", {}, bearer(b.key)), 404,
               "not_found");
  expect_error(fetch(srv.port(), http::verb::delete_, "/v1/conversations/" + cid, {}, bearer(b.key)), 404,
               "not_found");
  expect_error(chat(srv.port(), b.key, {{"model", "parley-echo"}, {"conversation", cid}, {"messages", {user("x")}}}),
               404, "not_found");
  CHECK(json::parse(fetch(srv.port(), http::verb::get, "/v1/conversations", {}, bearer(b.key)).body)["data"].empty());
  // A's conversation is untouched.
  auto items = json::parse(fetch(srv.port(), http::verb::get, "/v1/conversations/" + cid + "/items", {}, bearer(a.key)).body);
  CHECK(items["data"].size() == 2);
}

TEST_CASE("a passivated conversation reloads its history on the next turn",
          "[chat][conversations][integration]") {
  server_fixture srv([](parley::config::settings& s) {
    s.chat.echo_tokens_per_second = 0;
    s.chat.conversation_idle_seconds = 1;
  });
  auto tk = provision(srv.port(), "passive");
  std::string cid = json::parse(fetch(srv.port(), http::verb::post, "/v1/conversations", "{}", bearer(tk.key)).body)["id"];
  auto r1 = chat(srv.port(), tk.key, {{"model", "parley-echo"}, {"conversation", cid}, {"messages", {user("before sleep")}}});
  auto p1 = json::parse(r1.body)["usage"]["prompt_tokens"].get<int>();
  // The idle timeout is a real time: wait (bounded) until the node counts the passivation.
  REQUIRE(wait_until(deadline_in(std::chrono::seconds(10)), [&] {
    return metric(srv.port(), "parley_actor_passivations_total{kind=\"conversation\"}") >= 1;
  }, std::chrono::milliseconds(100)));
  auto r2 = chat(srv.port(), tk.key, {{"model", "parley-echo"}, {"conversation", cid}, {"messages", {user("before sleep")}}});
  REQUIRE(r2.status == 200);
  // Same new message, but now with two history messages in the prompt.
  CHECK(json::parse(r2.body)["usage"]["prompt_tokens"].get<int>() > p1);
  auto items = json::parse(fetch(srv.port(), http::verb::get, "/v1/conversations/" + cid + "/items", {}, bearer(tk.key)).body);
  CHECK(items["data"].size() == 4);
}

TEST_CASE("concurrent turns of one conversation run one at a time, in order",
          "[chat][conversations][integration]") {
  server_fixture srv([](parley::config::settings& s) { s.chat.echo_tokens_per_second = 200; });
  auto tk = provision(srv.port(), "queued");
  std::string cid = json::parse(fetch(srv.port(), http::verb::post, "/v1/conversations", "{}", bearer(tk.key)).body)["id"];
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int i = 0; i < 4; ++i)
    clients.emplace_back([&, i] {
      auto r = chat(srv.port(), tk.key, {{"model", "parley-echo"}, {"conversation", cid},
                                         {"messages", {user("turn " + std::to_string(i) + " a b c")}}});
      if (r.status == 200)
        ++ok;
    });
  for (auto& t : clients)
    t.join();
  CHECK(ok == 4);
  auto rows = query(srv.dir().path() + "/parley.db",
                    "SELECT role, content FROM messages WHERE conversation_id = '" + cid + "' ORDER BY seq");
  REQUIRE(rows.size() == 8);
  // Strictly alternating: every user message is followed by its own echo.
  for (std::size_t i = 0; i < rows.size(); i += 2) {
    CHECK(rows[i][0] == "user");
    CHECK(rows[i + 1][0] == "assistant");
    CHECK(json::parse(rows[i][1])["content"] == json::parse(rows[i + 1][1])["content"]);
  }
}

TEST_CASE("a client that disconnects mid-stream cancels its completion", "[chat][integration]") {
  server_fixture srv([](parley::config::settings& s) {
    s.chat.echo_tokens_per_second = 5;
  });
  auto tk = provision(srv.port(), "cancel");
  std::string words;
  for (int i = 0; i < 50; ++i)
    words += "w" + std::to_string(i) + " ";
  {
    http_client c(srv.port());
    send_chat_raw(c, tk.key, json{{"model", "parley-echo"}, {"stream", true}, {"messages", {user(words)}}}.dump());
    read_until(c, "\"content\":\"w0\""); // the completion is streaming
  } // disconnects after about the first of 50 tokens
  CHECK(wait_until(deadline_in(std::chrono::seconds(3)),
                   [&] { return srv.logs().find("\"msg\":\"client went away\"") != std::string::npos; },
                   std::chrono::milliseconds(100)));
  // The cancelled attempt is counted once, as an error, with only the tokens produced. A
  // cancelled turn's rows are committed after it ended: wait for them (bounded).
  std::vector<std::vector<std::string>> rows;
  wait_until(deadline_in(std::chrono::seconds(3)), [&] {
    rows = query(srv.dir().path() + "/parley.db",
                 "SELECT requests, errors, completion_tokens FROM usage WHERE tenant_id = '" + tk.tenant_id + "'");
    return !rows.empty();
  }, std::chrono::milliseconds(100));
  REQUIRE(rows.size() == 1);
  CHECK(rows[0][0] == "1");
  CHECK(rows[0][1] == "1");
  CHECK(std::stoi(rows[0][2]) < 20);
}
