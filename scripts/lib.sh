# Shared helpers of scripts/setup, scripts/run and scripts/test. Source it; do not run it.
# shellcheck shell=bash

PARLEY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${PARLEY_BUILD_DIR:-$PARLEY_ROOT/build}"
# ccache: paths under the checkout are hashed relative to it, and the build directory is not
# hashed, so a fresh clone elsewhere (CI) reuses the objects an earlier build of the same
# sources made.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PARLEY_ROOT}"
export CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-true}"
# Precompiled headers are cacheable only with these.
export CCACHE_SLOPPINESS="${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}"

say() { printf '[parley] %s\n' "$*"; }
die() { printf '[parley] error: %s\n' "$*" >&2; exit 1; }

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Configures (once) and builds the Release tree in $BUILD_DIR with every core.
build_parley() {
  local generator=()
  command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
  if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
    say "configuring $BUILD_DIR (Release)"
    cmake -S "$PARLEY_ROOT" -B "$BUILD_DIR" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release
  fi
  say "building with $(nproc) jobs"
  cmake --build "$BUILD_DIR" -j"$(nproc)"
}
