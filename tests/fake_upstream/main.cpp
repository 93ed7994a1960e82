// parley_fake_upstream: a scripted OpenAI-compatible upstream for parley's integration tests.
// It answers POST /v1/chat/completions (JSON or SSE) by echoing the last user message, and
// follows a per-request script given as a message starting with `SCRIPT:{json}`:
//   latency_ms, tokens_per_second, reply, status (+ retry_after, ratelimit_headers),
//   reset_before_first_byte, reset_after_tokens, stall_after_tokens + stall_ms.
// GET /_stats reports counters and the last request's body and headers. A test tool: one
// thread per connection with blocking I/O, loopback only, and it exits after --max-seconds.
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <csignal>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using json = nlohmann::json;

namespace {

std::mutex mu;
json stats = {{"chat_requests", 0}, {"streams_completed", 0}, {"client_disconnects", 0},
              {"last_request", nullptr}, {"last_headers", json::object()}};

void bump(const char* name) {
  std::lock_guard<std::mutex> lock(mu);
  stats[name] = stats[name].get<int>() + 1;
}

std::string text_of(const json& m) {
  if (!m.contains("content"))
    return {};
  auto& c = m["content"];
  if (c.is_string())
    return c.get<std::string>();
  std::string out;
  if (c.is_array())
    for (auto& p : c)
      if (p.is_object() && p.value("type", "") == "text")
        out += p.value("text", "");
  return out;
}

/// Closes with a TCP reset instead of a FIN.
void reset(tcp::socket& s) {
  beast::error_code ec;
  s.set_option(asio::socket_base::linger(true, 0), ec);
  s.close(ec);
}

void send(tcp::socket& s, const std::string& data) { asio::write(s, asio::buffer(data)); }
void chunk(tcp::socket& s, const std::string& data) {
  std::ostringstream o;
  o << std::hex << data.size() << "\r\n" << data << "\r\n";
  send(s, o.str());
}

void serve_chat(tcp::socket& sock, const http::request<http::string_body>& req, bool& keep) {
  bump("chat_requests");
  json body = json::parse(req.body(), nullptr, false);
  {
    std::lock_guard<std::mutex> lock(mu);
    stats["last_request"] = body.is_discarded() ? json(nullptr) : body;
    json h = json::object();
    for (const char* name : {"authorization", "traceparent", "x-request-id", "content-type"})
      if (auto it = req.find(name); it != req.end())
        h[name] = std::string(it->value());
    stats["last_headers"] = h;
  }
  json script = json::object();
  std::string last_user;
  int64_t prompt_tokens = 0;
  if (body.is_object() && body["messages"].is_array())
    for (auto& m : body["messages"]) {
      auto t = text_of(m);
      std::istringstream in(t);
      std::string w;
      while (in >> w)
        ++prompt_tokens;
      if (m.value("role", "") == "user")
        last_user = t;
    }
  if (last_user.rfind("SCRIPT:", 0) == 0) {
    // SCRIPT:{...} rest -- the JSON object ends at its matching brace.
    int depth = 0;
    std::size_t end = 7;
    for (; end < last_user.size(); ++end) {
      if (last_user[end] == '{') ++depth;
      if (last_user[end] == '}' && --depth == 0) break;
    }
    script = json::parse(last_user.substr(7, end - 6), nullptr, false);
    if (!script.is_object())
      script = json::object();
    last_user = end + 1 < last_user.size() ? last_user.substr(end + 1) : "";
    while (!last_user.empty() && last_user.front() == ' ')
      last_user.erase(0, 1);
  }
  std::string reply = script.value("reply", "echo: " + last_user);
  std::vector<std::string> tokens;
  {
    std::istringstream in(reply);
    std::string w;
    while (in >> w)
      tokens.push_back(tokens.empty() ? w : " " + w);
  }
  int64_t max_tokens = body.value("max_tokens", body.value("max_completion_tokens", int64_t{0}));
  std::string finish = "stop";
  if (max_tokens > 0 && static_cast<int64_t>(tokens.size()) > max_tokens) {
    tokens.resize(static_cast<std::size_t>(max_tokens));
    finish = "length";
  }
  std::string model = body.value("model", "fake-model");
  if (script.value("latency_ms", 0) > 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(script.value("latency_ms", 0)));
  if (script.value("reset_before_first_byte", false)) {
    reset(sock);
    keep = false;
    return;
  }
  if (int status = script.value("status", 0); status >= 400) {
    http::response<http::string_body> res{static_cast<http::status>(status), 11};
    res.set(http::field::content_type, "application/json");
    if (script.contains("retry_after"))
      res.set(http::field::retry_after, std::to_string(script.value("retry_after", 1)));
    if (script.value("ratelimit_headers", false))
      res.set("x-ratelimit-remaining-requests", "0");
    res.body() = script.contains("error_body")
                   ? script["error_body"].dump()
                   : json{{"error", {{"message", "fake error"}, {"type", "server_error"},
                                     {"param", nullptr}, {"code", nullptr}}}}.dump();
    res.keep_alive(true);
    res.prepare_payload();
    http::write(sock, res);
    return;
  }
  json usage = {{"prompt_tokens", prompt_tokens},
                {"completion_tokens", tokens.size()},
                {"total_tokens", prompt_tokens + static_cast<int64_t>(tokens.size())}};
  auto created = std::time(nullptr);
  if (!body.value("stream", false)) {
    std::string text;
    for (auto& t : tokens) text += t;
    http::response<http::string_body> res{http::status::ok, 11};
    res.set(http::field::content_type, "application/json");
    res.body() = json{{"id", "chatcmpl-fake"}, {"object", "chat.completion"}, {"created", created},
                      {"model", model},
                      {"choices", {{{"index", 0},
                                    {"message", {{"role", "assistant"}, {"content", text}, {"refusal", nullptr}}},
                                    {"logprobs", nullptr}, {"finish_reason", finish}}}},
                      {"usage", usage}}.dump();
    res.keep_alive(true);
    res.prepare_payload();
    http::write(sock, res);
    return;
  }
  bool include_usage = body.contains("stream_options") && body["stream_options"].value("include_usage", false);
  std::string head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n";
  if (script.value("ratelimit_headers", false))
    head += "x-ratelimit-remaining-requests: 0\r\n";
  send(sock, head + "\r\n");
  auto frame = [&](json delta, json fin) {
    json c = {{"id", "chatcmpl-fake"}, {"object", "chat.completion.chunk"}, {"created", created},
              {"model", model},
              {"choices", {{{"index", 0}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", fin}}}}};
    if (include_usage) c["usage"] = nullptr;
    chunk(sock, "data: " + c.dump() + "\n\n");
  };
  int tps = script.value("tokens_per_second", 0);
  int stall_after = script.value("stall_after_tokens", -1);
  int reset_after = script.value("reset_after_tokens", -1);
  frame({{"role", "assistant"}, {"content", ""}}, nullptr);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (static_cast<int>(i) == reset_after) {
      reset(sock);
      keep = false;
      return;
    }
    if (static_cast<int>(i) == stall_after)
      std::this_thread::sleep_for(std::chrono::milliseconds(script.value("stall_ms", 1000)));
    if (tps > 0)
      std::this_thread::sleep_for(std::chrono::microseconds(1'000'000 / tps));
    frame({{"content", tokens[i]}}, nullptr);
  }
  frame(json::object(), finish);
  if (include_usage) {
    json u = {{"id", "chatcmpl-fake"}, {"object", "chat.completion.chunk"}, {"created", created},
              {"model", model}, {"choices", json::array()}, {"usage", usage}};
    chunk(sock, "data: " + u.dump() + "\n\n");
  }
  chunk(sock, "data: [DONE]\n\n");
  send(sock, "0\r\n\r\n");
  bump("streams_completed");
}

void serve(tcp::socket sock) {
  beast::flat_buffer buf;
  try {
    for (;;) {
      http::request<http::string_body> req;
      beast::error_code ec;
      http::read(sock, buf, req, ec);
      if (ec)
        return;
      bool keep = req.keep_alive();
      std::string target(req.target());
      if (req.method() == http::verb::post && target.find("/chat/completions") != std::string::npos) {
        serve_chat(sock, req, keep);
      } else {
        http::response<http::string_body> res{http::status::ok, 11};
        res.set(http::field::content_type, "application/json");
        if (target == "/_stats") {
          std::lock_guard<std::mutex> lock(mu);
          res.body() = stats.dump();
        } else if (target == "/_reset") {
          std::lock_guard<std::mutex> lock(mu);
          for (auto k : {"chat_requests", "streams_completed", "client_disconnects"})
            stats[k] = 0;
          res.body() = "{}";
        } else if (target.find("/models") != std::string::npos) {
          res.body() = R"({"object":"list","data":[{"id":"fake-model","object":"model","created":0,"owned_by":"fake"}]})";
        } else {
          res.result(http::status::not_found);
          res.body() = R"({"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}})";
        }
        res.keep_alive(keep);
        res.prepare_payload();
        http::write(sock, res);
      }
      if (!keep)
        return;
    }
  } catch (const std::exception&) {
    bump("client_disconnects"); // a write to a client that went away
  }
}

} // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:0";
  int max_seconds = 600;
  for (int i = 1; i + 1 < argc; ++i) {
    std::string a = argv[i];
    if (a == "--listen") listen = argv[++i];
    else if (a == "--max-seconds") max_seconds = std::stoi(argv[++i]);
  }
  std::signal(SIGPIPE, SIG_IGN);
  auto colon = listen.rfind(':');
  asio::io_context ioc;
  tcp::acceptor acc(ioc, tcp::endpoint(asio::ip::make_address(listen.substr(0, colon)),
                                       static_cast<unsigned short>(std::stoi(listen.substr(colon + 1)))));
  std::cout << json{{"listening", acc.local_endpoint().port()}}.dump() << std::endl;
  std::thread([max_seconds] {
    std::this_thread::sleep_for(std::chrono::seconds(max_seconds));
    std::_Exit(0); // safety stop: never outlive a test run
  }).detach();
  for (;;) {
    tcp::socket s(ioc);
    acc.accept(s);
    s.set_option(tcp::no_delay(true));
    std::thread(serve, std::move(s)).detach();
  }
}
