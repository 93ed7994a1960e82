#include "support/pg_schema.hpp"

#include <catch2/catch.hpp>
#include <pqxx/pqxx>

#include <cstdlib>
#include <random>

namespace parley::test {

pg_schema::pg_schema() {
  const char* dsn = std::getenv("PARLEY_TEST_PG_DSN");
  REQUIRE(dsn != nullptr);
  dsn_ = dsn;
  std::random_device rd;
  name_ = "t_" + std::to_string(rd()) + "_" + std::to_string(rd());
  pqxx::connection c(dsn_);
  pqxx::work w(c);
  w.exec("CREATE SCHEMA " + name_);
  w.commit();
}

pg_schema::~pg_schema() {
  try {
    pqxx::connection c(dsn_);
    pqxx::work w(c);
    w.exec("DROP SCHEMA " + name_ + " CASCADE");
    w.commit();
  } catch (...) {
  }
}

std::string pg_schema::scoped_dsn() const {
  auto sep = dsn_.find('?') == std::string::npos ? "?" : "&";
  return dsn_ + sep + "options=-csearch_path%3D" + name_;
}

} // namespace parley::test
