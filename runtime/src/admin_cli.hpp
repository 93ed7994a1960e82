#pragma once

#include "parley/config/settings.hpp"

#include <CLI/CLI.hpp>

#include <string>

/// `parley migrate` and `parley admin ...`: offline commands that work directly against the
/// configured store (no running server needed).
namespace parley::runtime::detail {

/// Options the admin subcommands fill in.
struct admin_options {
  bool json = false;
  std::string tenant_id, key_id, slug, name, status, config_json, scopes;
  int limit = 20;
  std::string after;
  bool include_deleted = false;
  int64_t expires_in = 0;
  int64_t grace = 0;
  CLI::App* tenant_create = nullptr;
  CLI::App* tenant_list = nullptr;
  CLI::App* tenant_get = nullptr;
  CLI::App* tenant_update = nullptr;
  CLI::App* tenant_delete = nullptr;
  CLI::App* key_create = nullptr;
  CLI::App* key_list = nullptr;
  CLI::App* key_revoke = nullptr;
  CLI::App* key_rotate = nullptr;
  CLI::App* cluster = nullptr;
};

/// Declares `admin tenant ...`, `admin key ...` and `admin cluster` under `admin`.
void add_admin_commands(CLI::App& admin, admin_options& o);
/// Runs the parsed admin command; returns the exit status (0, 1 on an operation error).
int run_admin(const admin_options& o, const config::settings& s);
/// Applies pending migrations; prints what it applied.
int run_migrate(const config::settings& s);

} // namespace parley::runtime::detail
