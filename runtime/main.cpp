// parley: multi-tenant, actor-model runtime for LLM chat. See README.md.
#include "parley/runtime/cli.hpp"

int main(int argc, char** argv) { return parley::runtime::run_cli(argc, argv); }
