#include "parley/runtime/cli.hpp"

#include "admin_cli.hpp"
#include "parley/config/loader.hpp"
#include "parley/runtime/app.hpp"
#include "parley/runtime/version.hpp"

#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <csignal>
#include <cstdlib>
#include <iostream>

namespace parley::runtime {
namespace {

namespace asio = boost::asio;

constexpr int exit_usage = 2;

/// Loads settings from file and environment, then applies command-line overrides.
config::settings load_settings(const std::string& file, const std::string& listen,
                               const std::string& upstream = {}, bool cluster = false) {
  auto s = config::load(file, config::process_environment());
  if (cluster)
    s.cluster.enabled = true;
  if (!listen.empty())
    s.http.listen = listen;
  if (!upstream.empty())
    s.upstream.url = upstream;
  config::validate(s);
  return s;
}

int serve(const config::settings& s) {
  auto logger = make_logger(s.log);
  app node(s, logger);
  try {
    node.start();
  } catch (const std::exception& e) {
    log::event(logger, spdlog::level::critical, "start-up failed").str("error", e.what());
    node.stop();
    logger->flush();
    std::cerr << "parley: start-up failed: " << e.what() << "\n";
    return 1;
  }

  // Signals are handled on the main thread's own io_context, apart from the HTTP threads.
  asio::io_context control;
  asio::signal_set signals(control, SIGINT, SIGTERM);
  asio::steady_timer poll(control);
  auto deadline = std::chrono::steady_clock::now();

  // When the grace period is over, the answers still in progress are told to end (a stream
  // with an error event and [DONE]); this long is left for those last events to be written
  // before whatever is still open is cut.
  constexpr auto final_writes = std::chrono::seconds(3);
  bool ending = false;
  std::function<void()> wait_drained = [&] {
    if (node.drained()) {
      control.stop();
      return;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      if (ending) {
        log::event(logger, spdlog::level::warn, "in-flight requests did not end; cutting them")
          .num("in_flight", node.in_flight());
        control.stop();
        return;
      }
      ending = true;
      log::event(logger, spdlog::level::warn, "grace period over; ending in-flight requests")
        .num("in_flight", node.in_flight());
      node.end_in_flight();
      deadline = std::chrono::steady_clock::now() + final_writes;
    }
    poll.expires_after(std::chrono::milliseconds(20));
    poll.async_wait([&](boost::system::error_code) { wait_drained(); });
  };

  signals.async_wait([&](boost::system::error_code ec, int signo) {
    if (ec)
      return;
    log::event(logger, spdlog::level::info, "shutdown requested")
      .num("signal", signo)
      .num("grace_seconds", s.shutdown.grace_seconds);
    node.begin_shutdown();
    deadline = std::chrono::steady_clock::now() + std::chrono::seconds(s.shutdown.grace_seconds);
    // A second signal means "now": exit at once without draining.
    signals.async_wait([&](boost::system::error_code ec2, int signo2) {
      if (ec2)
        return;
      log::event(logger, spdlog::level::warn, "second signal; exiting at once").num("signal", signo2);
      logger->flush();
      std::_Exit(128 + signo2);
    });
    wait_drained();
  });
  control.run();
  node.stop();
  logger->flush();
  spdlog::shutdown();
  return 0;
}

} // namespace

int run_cli(int argc, char** argv) {
  CLI::App cli{"parley: multi-tenant, actor-model runtime for LLM chat"};
  cli.require_subcommand(1);
  cli.set_version_flag("--version", std::string(version_string()));

  std::string config_file, listen, upstream;
  auto* serve_cmd = cli.add_subcommand("serve", "Run the server (HTTP API, actors, store)");
  serve_cmd->add_option("-c,--config", config_file, "TOML configuration file")
    ->check(CLI::ExistingFile);
  serve_cmd->add_option("-l,--listen", listen, "Listen address HOST:PORT (overrides http.listen)");
  serve_cmd->add_option("-u,--upstream", upstream,
                        "OpenAI-compatible base URL serving every model not served otherwise "
                        "(overrides upstream.url; key from PARLEY_UPSTREAM_KEY)");
  bool cluster_flag = false;
  serve_cmd->add_flag("--cluster", cluster_flag,
                      "Join the cluster of nodes sharing store.postgres_dsn (sets cluster.enabled)");

  auto* version_cmd = cli.add_subcommand("version", "Print version, commit and build type");

  auto* migrate_cmd = cli.add_subcommand("migrate", "Apply pending database migrations");
  migrate_cmd->add_option("-c,--config", config_file, "TOML configuration file")
    ->check(CLI::ExistingFile);

  detail::admin_options admin_opts;
  auto* admin_cmd = cli.add_subcommand(
    "admin", "Provision tenants and API keys directly in the configured store");
  admin_cmd->add_option("-c,--config", config_file, "TOML configuration file")
    ->check(CLI::ExistingFile);
  detail::add_admin_commands(*admin_cmd, admin_opts);

  try {
    cli.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return cli.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return cli.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return cli.exit(e);
  } catch (const CLI::ParseError& e) {
    cli.exit(e);
    return exit_usage;
  }

  if (*version_cmd) {
    std::cout << "parley " << version_string() << " (commit " << git_commit() << ", "
              << build_type() << ")\n";
    return 0;
  }

  try {
    if (*serve_cmd)
      return serve(load_settings(config_file, listen, upstream, cluster_flag));
    if (*migrate_cmd)
      return detail::run_migrate(load_settings(config_file, {}));
    if (*admin_cmd)
      return detail::run_admin(admin_opts, load_settings(config_file, {}));
  } catch (const config::config_error& e) {
    std::cerr << "parley: " << e.what() << "\n";
    return exit_usage;
  } catch (const std::exception& e) {
    std::cerr << "parley: " << e.what() << "\n";
    return 1;
  }
  return exit_usage;
}

} // namespace parley::runtime
