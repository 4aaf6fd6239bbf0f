#!/usr/bin/env bash
# What every script shares (sourced, not run): its name and place, messages,
# the dependency helpers of deps.sh, and the developer tools in Rust (dev/).
# A script sets prog=NAME first, then sources this file.

script=$(readlink -f -- "$0")
script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
repo=${script_dir%/*}
prog=${prog:-${script##*/}}

msg() { printf '%s: %s\n' "$prog" "$*" >&2; }
warn() { printf '%s: warning: %s\n' "$prog" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$prog" "$*" >&2
  exit 1
}

# shellcheck source=scripts/deps.sh
source "$script_dir/deps.sh"

# hakube_dev_bin: builds the developer tools (the sandbox, the VM tests, the
# benchmarks; dev/) like the product and prints where they are.
hakube_dev_bin() {
  hakube_find_cargo || die "cargo not found: install a Rust toolchain (https://rustup.rs), then re-run"
  # Not --quiet: a cold build takes minutes and shows its progress.
  (cd -- "$repo" && hakube_cargo build --release --locked -p hakube-dev) >&2 ||
    die "could not build the developer tools (cargo build -p hakube-dev)"
  printf '%s\n' "$repo/target/release/hakube-dev"
}

# hakube_dev ARGS...: runs the developer tools in place of this shell.
hakube_dev() {
  local bin
  bin=$(hakube_dev_bin) || exit 1
  HAKUBE_DEV_PROG=$prog exec "$bin" "$@"
}
