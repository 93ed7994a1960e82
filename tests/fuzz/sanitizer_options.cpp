// Sanitizer defaults compiled into every fuzz target, so that running one by hand behaves as
// scripts/fuzz does: every UBSan report is fatal (libFuzzer then keeps the input), except the
// third-party ones listed in tests/sanitizers/ubsan.supp (suppressions only apply to
// recoverable checks, which is why the fuzz build keeps UBSan recoverable and halts here).
// Environment variables (UBSAN_OPTIONS, ASAN_OPTIONS) still override each flag.
extern "C" const char* __ubsan_default_options() {
  return "halt_on_error=1:print_stacktrace=1:suppressions=" PARLEY_UBSAN_SUPPRESSIONS;
}
