// The one Catch2 main of parley_tests. Besides what the command line asks, a test case (or a
// section of one) that makes no assertion fails: a test that checks nothing proves nothing.
// (Catch2 2.13 takes one -w per command line; ctest passes -w NoTests, so this one is here.)
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

int main(int argc, char* argv[]) {
  Catch::Session session;
  if (int rc = session.applyCommandLine(argc, argv); rc != 0)
    return rc;
  auto& data = session.configData();
  data.warnings = static_cast<Catch::WarnAbout::What>(data.warnings | Catch::WarnAbout::NoAssertions);
  return session.run();
}
