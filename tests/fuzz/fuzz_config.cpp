// fuzz_config: the configuration loader, parley::config::load (parley/config/loader.hpp).
//
// Input layout: a TOML file, optionally followed by a line "#ENV" (a TOML comment, so the
// file stays valid) and then PARLEY_*=value lines, which become the environment overrides.
// load() only reads from a path, so the TOML part is written to a file in a private temporary
// directory each time.
//
// Expected: settings, or parley::config::config_error (the documented refusal). A finding is
// anything else -- another exception type (uncaught, so libFuzzer reports it), a crash, a
// sanitizer report -- or a loaded tree that validate() or describe() then refuses.
#include "parley/config/loader.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <unistd.h>

namespace {

std::string g_dir;
std::string g_file;

void remove_dir() {
  std::error_code ec;
  std::filesystem::remove_all(g_dir, ec);
}

std::map<std::string, std::string> parse_env(std::string_view text) {
  std::map<std::string, std::string> env;
  while (!text.empty()) {
    auto nl = text.find('\n');
    auto line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    auto eq = line.find('=');
    if (eq != std::string_view::npos)
      env[std::string(line.substr(0, eq))] = std::string(line.substr(eq + 1));
  }
  return env;
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::string tmpl = (std::filesystem::temp_directory_path() / "parley-fuzz-config.XXXXXX").string();
  if (!mkdtemp(tmpl.data())) {
    std::perror("fuzz_config: mkdtemp");
    std::abort();
  }
  g_dir = tmpl;
  g_file = g_dir + "/parley.toml";
  std::atexit(remove_dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  static constexpr std::string_view marker = "\n#ENV\n";
  auto split = input.find(marker);
  auto toml = input.substr(0, split);
  auto env = split == std::string_view::npos ? std::map<std::string, std::string>{}
                                             : parse_env(input.substr(split + marker.size()));

  FILE* f = std::fopen(g_file.c_str(), "wb");
  if (!f || std::fwrite(toml.data(), 1, toml.size(), f) != toml.size() || std::fclose(f) != 0) {
    std::perror("fuzz_config: writing the config file");
    std::abort();
  }

  parley::config::settings s;
  try {
    s = parley::config::load(g_file, env);
  } catch (const parley::config::config_error&) {
    return 0; // refused with a message naming the key: the expected outcome for bad input
  }
  // Accepted: the tree must stay valid and printable (the CLI and `parley config` do this).
  try {
    parley::config::validate(s);
    (void)parley::config::describe(s);
    parley::config::split_host_port(s.http.listen, "http.listen");
  } catch (const parley::config::config_error& e) {
    std::fprintf(stderr, "fuzz_config: load() accepted a tree that is then refused: %s\n", e.what());
    std::abort();
  }
  return 0;
}
