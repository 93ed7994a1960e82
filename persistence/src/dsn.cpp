#include "parley/persistence/open.hpp"

#include <regex>

namespace parley::persistence {

std::string redact_dsn(const std::string& dsn) {
  // URI form: scheme://user:password@host...
  static const std::regex uri(R"(^([a-z]+://[^:/@]*):[^@]*@)", std::regex::icase);
  // Keyword form: password=value or password='quoted value'
  static const std::regex kw(R"(password\s*=\s*('([^'\\]|\\.)*'|[^\s]+))", std::regex::icase);
  // Query-string form of URIs: ?password=...&
  static const std::regex query(R"(([?&]password=)[^&]*)", std::regex::icase);
  if (dsn.find("://") != std::string::npos)
    return std::regex_replace(std::regex_replace(dsn, uri, "$1:***@"), query, "$1***");
  return std::regex_replace(dsn, kw, "password=***");
}

} // namespace parley::persistence
