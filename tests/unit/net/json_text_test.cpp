// The hot-path JSON helpers agree with nlohmann's parser on everything they accept.
#include "json/json_text.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

using namespace parley::net::jsontext;
using json = nlohmann::json;

TEST_CASE("append_string writes JSON string literals that parse back to the same bytes", "[net][unit]") {
  for (std::string s : {std::string(""), std::string("plain"), std::string("quote \" and \\ backslash"),
                        std::string("new\nline\ttab\rcr"), std::string("\x01\x1f control"),
                        std::string("caf\xc3\xa9 \xf0\x9f\x98\x80 utf-8"), std::string(1000, 'x')}) {
    std::string out;
    append_string(out, s);
    INFO(out);
    CHECK(json::parse(out).get<std::string>() == s);
  }
}

TEST_CASE("scan_chunk reads a streamed chunk's content, finish reason and usage", "[net][unit]") {
  chunk_fields f;
  REQUIRE(scan_chunk(R"({"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",
    "choices":[{"index":0,"delta":{"role":"assistant","content":"He said \"hi\"\n\u00e9\ud83d\ude00 \/"},
    "logprobs":null,"finish_reason":null}],"usage":null})", f));
  CHECK(f.has_content);
  CHECK(f.content == "He said \"hi\"\n\xc3\xa9\xf0\x9f\x98\x80 /");
  CHECK_FALSE(f.has_finish);
  CHECK_FALSE(f.has_usage);
  CHECK_FALSE(f.error);

  chunk_fields g;
  REQUIRE(scan_chunk(R"({"choices":[{"index":0,"delta":{},"finish_reason":"length"},{"index":1,"delta":{"content":"ignored"}}],
    "usage":{"prompt_tokens":12,"completion_tokens":6,"total_tokens":18,"prompt_tokens_details":{"cached_tokens":0}}})", g));
  CHECK_FALSE(g.has_content);
  CHECK(g.has_finish);
  CHECK(g.finish_reason == "length");
  CHECK(g.has_usage);
  CHECK(g.prompt_tokens == 12);
  CHECK(g.completion_tokens == 6);

  chunk_fields e;
  REQUIRE(scan_chunk(R"({"error":{"message":"overloaded","type":"server_error","code":null}})", e));
  CHECK(e.error);
  CHECK(e.error_message == "overloaded");

  chunk_fields n;
  REQUIRE(scan_chunk(R"({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1.5e0},"x":[true,false,null,-1.25e-3,{"a":[]}]})", n));
  CHECK(n.prompt_tokens == 3);
  CHECK(n.completion_tokens == -1); // not an integer: left unset
}

TEST_CASE("scan_chunk refuses what it does not fully understand, so the full parser decides", "[net][unit]") {
  for (const char* bad : {"", "[]", "null", "{", R"({"choices":[{"delta":{"content":"x"}}])",
                          R"({"choices":[{"delta":{"content":"bad \q escape"}}]})",
                          R"({"choices":[{"delta":{"content":"lone \udc00 surrogate"}}]})",
                          "{\"a\":\"raw\ncontrol\"}", R"({"a":1} trailing)", R"({"a":tru})"}) {
    INFO(bad);
    chunk_fields f;
    CHECK_FALSE(scan_chunk(bad, f));
  }
}
