// The edge's defences as pure functions: canonical paths, routing by declared access, the
// untrusted JSON parser, the chat parameter allow-list, client address blocks.
#include "parley/config/cidr.hpp"
#include "parley/net/chat_request.hpp"
#include "parley/net/json_body.hpp"
#include "parley/net/router.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <fstream>
#include <set>
#include <sstream>

using namespace parley::net;

TEST_CASE("canonical paths pass and every other spelling is refused before routing",
          "[net][unit]") {
  for (const char* ok : {"/", "/v1/models", "/admin/v1/tenants/ten_1/keys", "/v1/models/a%3Ab",
                         "/v1/conversations?limit=5&after=x", "/v1/models/gpt-4o.mini"})
    CHECK(canonical_path_error(ok) == nullptr);
  for (const char* bad : {"", "*", "v1/models", "http://x/v1/models", "//admin/v1/tenants",
                          "/admin//v1/tenants", "/admin/v1/tenants/", "/admin/./v1/tenants",
                          "/v1/../admin/v1/tenants", "/admin/v1/%2e%2e/v1", "/admin/v1/%2E",
                          "/admin%2fv1/tenants", "/admin%2Fv1", "/admin%5cv1", "/v1/models%00",
                          "/v1/models/%zz", "/v1/models/%4", "/v1\\models", "/v1/models#x",
                          "/v1/mo dels", "/v1/mod\x01els", "/v1/mod\xc3\xa9ls"}) {
    INFO(bad);
    CHECK(canonical_path_error(bad) != nullptr);
  }
}

TEST_CASE("the router matches by method and pattern and carries each route's access",
          "[net][unit]") {
  router r;
  r.add(http::verb::get, "/admin/v1/tenants/{id}", access::admin(), [](const exchange_ptr&) {});
  r.add(http::verb::post, "/v1/chat/completions", access::tenant("chat"),
        [](const exchange_ptr&) {});
  auto m = r.match(http::verb::get, "/admin/v1/tenants/ten_1");
  REQUIRE(m.found);
  CHECK(m.found->who.who == access::kind::admin);
  REQUIRE(m.params.size() == 1);
  CHECK(m.params[0].second == "ten_1");
  auto chat = r.match(http::verb::post, "/v1/chat/completions");
  REQUIRE(chat.found);
  CHECK(chat.found->who.who == access::kind::tenant);
  CHECK(chat.found->who.scope == "chat");
  auto wrong_method = r.match(http::verb::delete_, "/v1/chat/completions");
  CHECK_FALSE(wrong_method.found);
  CHECK(wrong_method.allow == "POST");
  CHECK_FALSE(r.match(http::verb::get, "/admin/v1/tenants").found);
  CHECK_FALSE(r.match(http::verb::get, "/admin/v1/tenants/ten_1/x").found);
  // A route pattern must be canonical itself.
  CHECK_THROWS(r.add(http::verb::get, "/a//b", access::anyone(), [](const exchange_ptr&) {}));
}

namespace {
std::string nested(std::size_t depth) {
  return std::string(depth, '[') + std::string(depth, ']');
}
} // namespace

TEST_CASE("untrusted JSON deeper than 64 levels is refused while parsing", "[net][unit]") {
  nlohmann::json out;
  CHECK_FALSE(parse_untrusted_json(nested(64), out));
  auto e = parse_untrusted_json(nested(65), out);
  REQUIRE(e);
  CHECK(e->code == api_errc::invalid_request);
  // 60,000 levels anywhere in a body: refused, no stack overflow.
  auto deep = parse_untrusted_json(R"({"model":"m","messages":[{"role":"user","content":"x","x":)" +
                                     nested(60000) + "}]}",
                                   out);
  REQUIRE(deep);
  CHECK(deep->message.find("nested") != std::string::npos);
  std::string objects;
  for (int i = 0; i < 60000; ++i)
    objects += "{\"a\":";
  objects += "1" + std::string(60000, '}');
  CHECK(parse_untrusted_json(objects, out));
}

TEST_CASE("untrusted JSON with duplicate keys, huge numbers or bad UTF-8 is refused",
          "[net][unit]") {
  nlohmann::json out;
  CHECK(parse_untrusted_json(R"({"a":1,"a":2})", out));
  CHECK(parse_untrusted_json(R"({"x":{"a":1,"a":2}})", out));
  CHECK_FALSE(parse_untrusted_json(R"({"x":{"a":1},"y":{"a":2}})", out)); // same key, other objects
  CHECK(parse_untrusted_json(R"({"t":1e400})", out));
  CHECK(parse_untrusted_json(R"({"t":-1e400})", out));
  CHECK_FALSE(parse_untrusted_json(R"({"t":1e300})", out));
  CHECK(parse_untrusted_json("{\"s\":\"\xff\xfe\"}", out));
  CHECK(parse_untrusted_json("{\"s\":", out));
  auto e = parse_untrusted_json("not json", out);
  REQUIRE(e);
  CHECK(e->code == api_errc::invalid_json);
  json_limits small;
  small.max_string_bytes = 8;
  CHECK(parse_untrusted_json(R"({"s":"123456789"})", out, small));
  CHECK_FALSE(parse_untrusted_json(R"({"s":"12345678"})", out, small));
}

TEST_CASE("the chat parameter allow-list is exactly OpenAI's request schema plus conversation",
          "[net][unit]") {
  std::ifstream in(std::string(PARLEY_SOURCE_DIR) + "/net/spec/openai-schemas.json");
  REQUIRE(in);
  std::stringstream ss;
  ss << in.rdbuf();
  auto schema = nlohmann::json::parse(ss.str());
  auto& defs = schema["$defs"];
  std::set<std::string> expected{"conversation"};
  // CreateChatCompletionRequest is an allOf of a shared base and its own properties.
  std::function<void(const nlohmann::json&)> collect = [&](const nlohmann::json& s) {
    if (s.contains("$ref")) {
      auto ref = s["$ref"].get<std::string>();
      collect(defs[ref.substr(ref.rfind('/') + 1)]);
      return;
    }
    if (s.contains("allOf"))
      for (auto& part : s["allOf"])
        collect(part);
    if (s.contains("properties"))
      for (auto& [k, v] : s["properties"].items())
        expected.insert(k);
  };
  collect(defs["CreateChatCompletionRequest"]);
  std::set<std::string> listed(chat_parameters().begin(), chat_parameters().end());
  CHECK(listed == expected);
}

TEST_CASE("a chat request with an undocumented parameter is refused, documented ones pass",
          "[net][unit]") {
  parley::actors::chat_request req;
  auto e = parse_chat_request(
    R"({"model":"m","messages":[{"role":"user","content":"hi"}],"api_base":"http://evil"})", "", req);
  REQUIRE(e);
  CHECK(e->code == api_errc::unknown_parameter);
  CHECK(e->param == "api_base");
  parley::actors::chat_request ok;
  CHECK_FALSE(parse_chat_request(
    R"({"model":"m","messages":[{"role":"user","content":"hi"}],"seed":1,"tools":[]})", "", ok));
  CHECK(nlohmann::json::parse(ok.extra_json) == nlohmann::json{{"seed", 1}, {"tools", nlohmann::json::array()}});
  CHECK(ok.extra_tokens > 0);
}

TEST_CASE("a chat request's token estimate counts images, tool calls and tools", "[net][unit]") {
  parley::actors::chat_request text, image, low, tools;
  REQUIRE_FALSE(parse_chat_request(
    R"({"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]})", "", text));
  REQUIRE_FALSE(parse_chat_request(
    R"({"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"},
        {"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]})", "", image));
  REQUIRE_FALSE(parse_chat_request(
    R"({"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"},
        {"type":"image_url","image_url":{"url":"https://x/y.png","detail":"low"}}]}]})", "", low));
  REQUIRE_FALSE(parse_chat_request(
    R"({"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c1","type":"function",
        "function":{"name":"lookup","arguments":"{\"q\":\"a long argument string\"}"}}]}]})", "", tools));
  CHECK(image.messages[0].tokens == text.messages[0].tokens + 765);
  CHECK(low.messages[0].tokens == text.messages[0].tokens + 85);
  CHECK(tools.messages[0].tokens > 10);
}

TEST_CASE("address blocks match IPv4, IPv6 and IPv4-mapped addresses", "[config][unit]") {
  using parley::config::cidr;
  auto ten = cidr::parse("10.0.0.0/8");
  REQUIRE(ten);
  CHECK(ten->contains("10.1.2.3"));
  CHECK(ten->contains("::ffff:10.1.2.3"));
  CHECK_FALSE(ten->contains("11.0.0.1"));
  auto one = cidr::parse("127.0.0.1");
  REQUIRE(one);
  CHECK(one->contains("127.0.0.1"));
  CHECK_FALSE(one->contains("127.0.0.2"));
  auto v6 = cidr::parse("fd00::/8");
  REQUIRE(v6);
  CHECK(v6->contains("fd12::1"));
  CHECK_FALSE(v6->contains("fe80::1"));
  CHECK_FALSE(v6->contains("garbage"));
  for (const char* bad : {"", "10.0.0.0/33", "::/129", "10.0.0/8", "x", "10.0.0.0/", "1.2.3.4/-1"})
    CHECK_FALSE(cidr::parse(bad));
}
