#include "parley/net/metrics.hpp"

#include "parley/net/exchange.hpp"

namespace parley::net {

request_metrics::request_metrics(metrics::registry& reg, bool tenant_label)
  : tenant_label_(tenant_label),
    requests_(reg.counter_family("parley_http_requests_total",
                                 "HTTP requests answered, by route pattern, method, status class and tenant",
                                 {"route", "method", "status_class", "tenant"})),
    duration_(reg.histogram_family("parley_http_request_duration_seconds",
                                   "Time from the request's arrival to its last byte written, by route",
                                   {"route"})),
    upstream_(reg.histogram_family("parley_upstream_duration_seconds",
                                   "Time chat completions spent on the upstream (all attempts), by served model",
                                   {"model"})),
    ttft_(reg.histogram_family("parley_time_to_first_token_seconds",
                               "Time from a chat request's arrival to its first token, by served model",
                               {"model"})),
    tokens_(reg.counter_family("parley_tokens_total",
                               "Tokens of chat completions by tenant, served model and kind (prompt, completion)",
                               {"tenant", "model", "kind"})),
    overhead_(reg.histogram_family("parley_overhead_duration_seconds",
                                   "Time parley added to upstream chat completions (total minus upstream time)")
                .with()) {}

void request_metrics::record(const exchange& ex, unsigned status, double seconds) {
  auto& ctx = ex.ctx();
  static const char* classes[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
  const char* cls = status >= 100 && status < 600 ? classes[status / 100 - 1] : "5xx";
  // Unmatched paths share one label: clients cannot grow the series.
  std::string_view route = ctx.route.empty() ? std::string_view("-") : std::string_view(ctx.route);
  std::string_view tenant = tenant_label_ ? std::string_view(ctx.tenant_id) : std::string_view("-");
  auto method = ex.req().method_string();
  requests_.with({route, std::string_view(method.data(), method.size()), cls, tenant}).inc();
  duration_.with({route}).observe(seconds);
  if (ctx.model.empty())
    return;
  if (ctx.upstream_us > 0) {
    double up = static_cast<double>(ctx.upstream_us) / 1e6;
    upstream_.with({ctx.model}).observe(up);
    overhead_.observe(seconds > up ? seconds - up : 0.0);
  }
  if (ctx.ttft_us > 0)
    ttft_.with({ctx.model}).observe(static_cast<double>(ctx.ttft_us) / 1e6);
  if (ctx.prompt_tokens > 0)
    tokens_.with({tenant, ctx.model, "prompt"}).inc(static_cast<uint64_t>(ctx.prompt_tokens));
  if (ctx.completion_tokens > 0)
    tokens_.with({tenant, ctx.model, "completion"}).inc(static_cast<uint64_t>(ctx.completion_tokens));
}

void add_metrics_route(router& r, std::shared_ptr<const metrics::registry> reg, access who) {
  r.add(http::verb::get, "/metrics", std::move(who), [reg](const exchange_ptr& ex) {
    response res{http::status::ok, ex->req().version()};
    res.set(http::field::content_type, metrics::content_type);
    reg->render_into(res.body());
    ex->respond(std::move(res));
  });
}

} // namespace parley::net
