#pragma once

namespace parley::runtime {

/// Runs the `parley` command line: `serve`, `migrate`, `admin ...`, `version`. Returns the
/// process exit status: 0 on success, 2 for usage and configuration errors, 1 otherwise.
int run_cli(int argc, char** argv);

} // namespace parley::runtime
