#include "parley/net/api_error.hpp"
#include "parley/net/router.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

using namespace parley::net;
using parley::persistence::persistence_errc;

TEST_CASE("error bodies have OpenAI's shape with type, code and param", "[net][unit]") {
  auto j = nlohmann::json::parse(error_body({api_errc::invalid_api_key, "", ""}));
  REQUIRE(j.contains("error"));
  auto& e = j["error"];
  CHECK(e["type"] == "invalid_request_error");
  CHECK(e["code"] == "invalid_api_key");
  CHECK(e["param"].is_null());
  CHECK(e["message"].get<std::string>().size() > 0);

  auto k = nlohmann::json::parse(error_body({api_errc::invalid_request, "bad messages", "messages"}));
  CHECK(k["error"]["message"] == "bad messages");
  CHECK(k["error"]["param"] == "messages");
  CHECK(k["error"]["code"].is_null());
}

TEST_CASE("the error table maps each code to its HTTP status", "[net][unit]") {
  CHECK(status_of(api_errc::invalid_request) == http::status::bad_request);
  CHECK(status_of(api_errc::invalid_api_key) == http::status::unauthorized);
  CHECK(status_of(api_errc::permission_denied) == http::status::forbidden);
  CHECK(status_of(api_errc::not_found) == http::status::not_found);
  CHECK(status_of(api_errc::model_not_found) == http::status::not_found);
  CHECK(status_of(api_errc::method_not_allowed) == http::status::method_not_allowed);
  CHECK(status_of(api_errc::conflict) == http::status::conflict);
  CHECK(status_of(api_errc::payload_too_large) == http::status::payload_too_large);
  CHECK(status_of(api_errc::headers_too_large) == http::status::request_header_fields_too_large);
  CHECK(status_of(api_errc::rate_limited) == http::status::too_many_requests);
  CHECK(std::string(code_of(api_errc::rate_limited)) == "rate_limit_exceeded");
  CHECK(std::string(code_of(api_errc::quota_exceeded)) == "insufficient_quota");
  CHECK(status_of(api_errc::internal) == http::status::internal_server_error);
  CHECK(std::string(type_of(api_errc::internal)) == "server_error");
  CHECK(status_of(api_errc::overloaded) == http::status::service_unavailable);
  CHECK(status_of(api_errc::gateway_timeout) == http::status::gateway_timeout);
  CHECK(status_of(api_errc::shutting_down) == http::status::service_unavailable);
  CHECK(std::string(code_of(api_errc::shutting_down)) == "server_shutdown");
}

TEST_CASE("store errors map to client errors without their internal detail", "[net][unit]") {
  auto nf = from_store({persistence_errc::not_found, "SELECT secret FROM x"}, "No such tenant.");
  CHECK(nf.code == api_errc::not_found);
  CHECK(nf.message == "No such tenant.");
  CHECK(from_store({persistence_errc::conflict, "dup"}).code == api_errc::conflict);
  CHECK(from_store({persistence_errc::unavailable, "conn refused"}).code == api_errc::unavailable);
  CHECK(from_store({persistence_errc::timeout, ""}).code == api_errc::unavailable);
  auto in = from_store({persistence_errc::internal, "password=x"});
  CHECK(in.code == api_errc::internal);
  CHECK(error_body(in).find("password") == std::string::npos);
}

TEST_CASE("query parameters are found and percent-decoded", "[net][unit]") {
  CHECK(query_param("/a?limit=5&after=x%20y", "after") == "x y");
  CHECK(query_param("/a?limit=5&after=x", "limit") == "5");
  CHECK(query_param("/a?limit=5", "after").empty());
  CHECK(query_param("/a", "after").empty());
  CHECK(path_of("/a/b?c=d") == "/a/b");
}
