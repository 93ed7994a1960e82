#include "support/http_client.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <csignal>

using namespace parley::test;
using json = nlohmann::json;
namespace http = boost::beast::http;

TEST_CASE("a reply the client received survives kill -9 and the conversation continues",
          "[chat][conversations][integration]") {
  temp_dir d;
  const std::string admin = "crash-admin-key-0123456789abcdef0123456";
  std::string config = "[http]\nlisten = \"127.0.0.1:0\"\n[data]\ndir = \"" + d.path() +
                       "\"\n[chat]\necho_tokens_per_second = 0\n";
  std::map<std::string, std::string> env{{"PARLEY_ADMIN_KEY", admin}};
  std::map<std::string, std::string> ah{{"Authorization", "Bearer " + admin}};
  uint16_t port = 0;
  auto proc = start_parley(d, config, port, env);
  auto t = json::parse(fetch(port, http::verb::post, "/admin/v1/tenants", json{{"slug", "crash"}, {"name", "C"}}.dump(), ah).body);
  std::string tid = t["id"];
  std::string key = json::parse(fetch(port, http::verb::post, "/admin/v1/tenants/" + tid + "/keys",
                                      json{{"name", "k"}}.dump(), ah).body)["key"];
  std::map<std::string, std::string> kh{{"Authorization", "Bearer " + key}};
  std::string cid = json::parse(fetch(port, http::verb::post, "/v1/conversations", "{}", kh).body)["id"];
  auto r = fetch(port, http::verb::post, "/v1/chat/completions",
                 json{{"model", "parley-echo"}, {"conversation", cid}, {"stream", true},
                      {"messages", {{{"role", "user"}, {"content", "remember this"}}}}}.dump(), kh);
  REQUIRE(r.status == 200);
  REQUIRE(r.body.find("data: [DONE]") != std::string::npos);

  // The client has the complete reply: crash the node without any chance to flush.
  proc->signal(SIGKILL);
  REQUIRE(proc->wait_exit(std::chrono::seconds(5)) == std::optional<int>(128 + SIGKILL));

  uint16_t port2 = 0;
  auto again = start_parley(d, config, port2, env);
  auto items = json::parse(fetch(port2, http::verb::get, "/v1/conversations/" + cid + "/items", {}, kh).body);
  REQUIRE(items["data"].size() == 2);
  CHECK(items["data"][1]["role"] == "assistant");
  CHECK(items["data"][1]["content"][0]["text"] == "remember this");
  auto next = fetch(port2, http::verb::post, "/v1/chat/completions",
                    json{{"model", "parley-echo"}, {"conversation", cid},
                         {"messages", {{{"role", "user"}, {"content", "and this"}}}}}.dump(), kh);
  REQUIRE(next.status == 200);
  auto after = json::parse(fetch(port2, http::verb::get, "/v1/conversations/" + cid + "/items", {}, kh).body);
  CHECK(after["data"].size() == 4);
  again->signal(SIGTERM);
  CHECK(again->wait_exit(std::chrono::seconds(10)) == std::optional<int>(0));
}
