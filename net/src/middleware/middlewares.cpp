#include "parley/net/middlewares.hpp"

#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <random>

namespace parley::net {
namespace {

bool sane_request_id(std::string_view id) {
  if (id.empty() || id.size() > 128)
    return false;
  return std::all_of(id.begin(), id.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '.' || c == '_' || c == ':' || c == '-';
  });
}

/// parley's own id for the request, and the client's X-Request-ID beside it if it is sane.
void assign_request_ids(request_context& ctx, std::string_view incoming) {
  ctx.request_id = generate_request_id();
  if (sane_request_id(incoming))
    ctx.client_request_id.assign(incoming);
}

class request_id_filter final : public middleware {
public:
  const char* name() const noexcept override { return "request_id"; }

  filter_status on_request(const exchange_ptr& ex) override {
    auto& ctx = ex->ctx();
    assign_request_ids(ctx, ex->req()["x-request-id"]);
    // W3C trace context: keep a valid incoming trace id (and its flags), else start a trace;
    // either way this hop gets its own span id, the parent of the upstream call.
    auto tp = ex->req()["traceparent"];
    std::string trace, flags;
    if (parse_traceparent(tp, trace, flags)) {
      ctx.trace_id = std::move(trace);
      ctx.trace_flags = std::move(flags);
    } else {
      ctx.trace_id = generate_trace_id();
    }
    ctx.span_id = generate_span_id();
    return filter_status::proceed;
  }

  void on_response(exchange& ex, response& res) override {
    // Local replies written before on_request ran (parse errors) still get an id.
    auto& ctx = ex.ctx();
    if (ctx.request_id.empty())
      assign_request_ids(ctx, ex.req()["x-request-id"]);
    if (ctx.client_request_id.empty()) {
      res.set("x-request-id", ctx.request_id);
    } else {
      res.set("x-request-id", ctx.client_request_id);
      res.set("x-parley-request-id", ctx.request_id);
    }
  }
};

class security_headers_filter final : public middleware {
public:
  const char* name() const noexcept override { return "security_headers"; }
  filter_status on_request(const exchange_ptr&) override { return filter_status::proceed; }
  void on_response(exchange&, response& res) override {
    res.set("X-Content-Type-Options", "nosniff");
    res.set("X-Frame-Options", "DENY");
    res.set("Referrer-Policy", "no-referrer");
    res.set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'");
    if (res.find(http::field::cache_control) == res.end())
      res.set(http::field::cache_control, "no-store");
    res.set(http::field::server, "parley");
  }
};

class cors_filter final : public middleware {
public:
  explicit cors_filter(std::vector<std::string> origins) : origins_(std::move(origins)) {
    any_ = std::find(origins_.begin(), origins_.end(), "*") != origins_.end();
  }

  const char* name() const noexcept override { return "cors"; }

  filter_status on_request(const exchange_ptr& ex) override {
    auto& req = ex->req();
    auto origin = req[http::field::origin];
    if (origins_.empty() || origin.empty())
      return filter_status::proceed;
    bool preflight = req.method() == http::verb::options &&
                     req.find(http::field::access_control_request_method) != req.end();
    if (!allowed(origin)) {
      if (preflight) {
        ex->respond_error({api_errc::origin_not_allowed, "", ""});
        return filter_status::stop;
      }
      return filter_status::proceed; // no CORS headers: the browser blocks the read
    }
    if (!preflight)
      return filter_status::proceed;
    response res{http::status::no_content, req.version()};
    res.set(http::field::access_control_allow_methods, "GET, POST, PATCH, DELETE, OPTIONS");
    auto requested = req[http::field::access_control_request_headers];
    // Any request header may be sent: the API authenticates with bearer keys, not cookies.
    res.set(http::field::access_control_allow_headers,
            requested.empty() ? std::string_view("authorization, content-type, x-request-id")
                              : requested);
    res.set(http::field::access_control_max_age, "600");
    ex->respond(std::move(res));
    return filter_status::stop;
  }

  void on_response(exchange& ex, response& res) override {
    auto origin = ex.req()[http::field::origin];
    if (origins_.empty() || origin.empty() || !allowed(origin))
      return;
    res.set(http::field::access_control_allow_origin, any_ ? std::string_view("*") : origin);
    if (!any_)
      res.set(http::field::vary, "Origin");
    res.set(http::field::access_control_expose_headers,
            "x-request-id, x-parley-request-id, retry-after, x-ratelimit-limit-requests, "
            "x-ratelimit-remaining-requests, x-ratelimit-reset-requests, "
            "x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, "
            "x-ratelimit-reset-tokens, x-parley-cache");
  }

private:
  bool allowed(std::string_view origin) const {
    return any_ || std::find(origins_.begin(), origins_.end(), origin) != origins_.end();
  }

  std::vector<std::string> origins_;
  bool any_ = false;
};

} // namespace

bool parse_traceparent(std::string_view v, std::string& trace_id, std::string& flags) {
  // version "00": 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>, lower case; an
  // all-zero trace or parent id is invalid. Later versions may append fields after a '-'.
  auto hex = [](std::string_view s) {
    return std::all_of(s.begin(), s.end(), [](char c) {
      return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
    });
  };
  if (v.size() < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-')
    return false;
  auto version = v.substr(0, 2), trace = v.substr(3, 32), parent = v.substr(36, 16),
       fl = v.substr(53, 2);
  if (!hex(version) || version == "ff" || !hex(trace) || !hex(parent) || !hex(fl))
    return false;
  if (version == "00" && v.size() != 55)
    return false;
  if (v.size() > 55 && v[55] != '-')
    return false;
  if (trace.find_first_not_of('0') == std::string_view::npos ||
      parent.find_first_not_of('0') == std::string_view::npos)
    return false;
  trace_id.assign(trace);
  flags.assign(fl);
  return true;
}

namespace {
std::mt19937_64& id_generator() {
  // A per-thread generator seeded once from the CSPRNG: ids must be unique, not secret.
  thread_local std::mt19937_64 gen = [] {
    std::array<unsigned char, 8> seed{};
    if (RAND_bytes(seed.data(), static_cast<int>(seed.size())) != 1)
      seed.fill(0x5a);
    uint64_t s = 0;
    for (auto b : seed)
      s = (s << 8) | b;
    return std::mt19937_64{s ^ static_cast<uint64_t>(std::random_device{}())};
  }();
  return gen;
}

void put_hex(char* out, uint64_t v, int digits) {
  static constexpr char hex[] = "0123456789abcdef";
  for (int i = digits - 1; i >= 0; --i, v >>= 4)
    out[i] = hex[v & 15];
}
} // namespace

std::string generate_request_id() {
  // 12 hex digits of milliseconds since the epoch, then 20 random ones: ids sort by time, so
  // the usage ledger's primary key grows at its right edge instead of dirtying a random page
  // of its index per row, and 80 random bits keep ids from colliding within a millisecond.
  auto ms = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                    std::chrono::system_clock::now().time_since_epoch())
                                    .count());
  auto& gen = id_generator();
  std::string out(32, '0');
  put_hex(out.data(), ms & 0xffffffffffffULL, 12);
  put_hex(out.data() + 12, gen() >> 48, 4);
  put_hex(out.data() + 16, gen(), 16);
  return out;
}

std::string generate_trace_id() {
  auto& gen = id_generator();
  std::string out(32, '0');
  put_hex(out.data(), gen(), 16);
  put_hex(out.data() + 16, gen(), 16);
  return out;
}

std::string generate_span_id() {
  std::string out(16, '0');
  put_hex(out.data(), id_generator()(), 16);
  return out;
}

std::unique_ptr<middleware> make_request_id() { return std::make_unique<request_id_filter>(); }
std::unique_ptr<middleware> make_security_headers() {
  return std::make_unique<security_headers_filter>();
}
std::unique_ptr<middleware> make_cors(std::vector<std::string> allowed_origins) {
  return std::make_unique<cors_filter>(std::move(allowed_origins));
}

} // namespace parley::net
