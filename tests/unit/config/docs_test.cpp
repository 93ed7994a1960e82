#include "parley/config/loader.hpp"

#include <catch2/catch.hpp>

#include <fstream>
#include <sstream>

TEST_CASE("docs/configuration.md documents every key with its environment name",
          "[config][unit]") {
  std::ifstream in(std::string(PARLEY_SOURCE_DIR) + "/docs/configuration.md");
  REQUIRE(in);
  std::stringstream ss;
  ss << in.rdbuf();
  auto doc = ss.str();
  for (auto& k : parley::config::known_keys()) {
    INFO(k.section << "." << k.key);
    CHECK(doc.find("`" + k.section + "." + k.key + "`") != std::string::npos);
    CHECK(doc.find("`" + k.env + "`") != std::string::npos);
  }
}
