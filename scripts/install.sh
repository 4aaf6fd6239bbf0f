#!/usr/bin/env bash
#
# Installs hakube on this machine:
#
#   sudo ./install.sh ha load-balancer-address=lb.example.com:6443 taint-control-plane
#
# Every argument goes unchanged to `hakube install` (kURL-style words such as
# `ha` or `key=value`, and flags such as --advertise-address). The hakube
# binary is, in this order: $HAKUBE_BIN; `hakube` next to this script;
# ../target/release/hakube relative to it; `hakube` on PATH; else it is built
# with `cargo build --release` when the source tree and cargo are at hand.
set -euo pipefail

prog=${0##*/}
script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)

msg() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$prog" "$*" >&2
  exit 1
}

usage() {
  cat >&2 <<EOF
usage: sudo $0 [WORD...] [FLAG...]

Installs hakube on this machine. All arguments are passed to \`hakube install\`:
  ha                                 highly available control plane
  load-balancer-address=HOST:PORT    address of the API server load balancer
  taint-control-plane                keep ordinary workloads off control-plane nodes
  key=value                          any other install option
  --advertise-address IP, --node-name NAME, --config FILE, --bundle DIR, ...

See \`hakube install --help\` for all of them.
Environment: HAKUBE_BIN=/path/to/hakube uses that binary.
EOF
}

case "${1:-}" in
  -h | --help | help)
    usage
    exit 0
    ;;
esac

if [[ $EUID -ne 0 ]]; then
  printf -v rerun ' %q' "$@"
  die "hakube installs system components and must run as root; re-run with sudo: sudo $0${rerun}"
fi

# Building needs the source tree, which brings scripts/deps.sh and its
# hakube_find_cargo (cargo is often only in the invoking user's ~/.cargo/bin,
# which sudo drops from PATH).
find_cargo() {
  command -v cargo >/dev/null 2>&1 && return 0
  [[ -f $script_dir/deps.sh ]] || return 1
  # shellcheck source=scripts/deps.sh
  source "$script_dir/deps.sh"
  hakube_find_cargo
}

# Builds as the user who ran sudo when the tree is theirs, so that target/
# does not end up owned by root.
build_release() {
  local src=$1 owner home
  msg "no hakube binary found; building it: cargo build --release (in $src)"
  owner=$(stat -c %U -- "$src")
  (
    cd -- "$src"
    if [[ -n ${SUDO_USER:-} && $owner == "$SUDO_USER" && $owner != root ]] &&
      command -v runuser >/dev/null 2>&1; then
      home=$(getent passwd "$owner" | cut -d: -f6)
      exec runuser -u "$owner" -- env "HOME=${home:-/}" "PATH=$PATH" \
        ${CARGO_HOME:+"CARGO_HOME=$CARGO_HOME"} ${RUSTUP_HOME:+"RUSTUP_HOME=$RUSTUP_HOME"} \
        cargo build --release
    fi
    exec cargo build --release
  ) >&2 || die "cargo build --release failed in $src"
}

find_binary() {
  local candidate src
  src=$(cd -- "$script_dir/.." && pwd -P)
  if [[ -n ${HAKUBE_BIN:-} ]]; then
    [[ -f $HAKUBE_BIN && -x $HAKUBE_BIN ]] ||
      die "HAKUBE_BIN=$HAKUBE_BIN is not an executable file"
    printf '%s\n' "$HAKUBE_BIN"
    return
  fi
  for candidate in "$script_dir/hakube" "$src/target/release/hakube"; do
    if [[ -f $candidate && -x $candidate ]]; then
      printf '%s\n' "$candidate"
      return
    fi
  done
  if candidate=$(command -v hakube); then
    printf '%s\n' "$candidate"
    return
  fi

  if [[ -f $src/Cargo.toml ]] && grep -q '^name = "hakube"' "$src/Cargo.toml"; then
    find_cargo || die "no hakube binary found, and cargo is not installed to build one from $src.
Install a Rust toolchain (https://rustup.rs) and re-run, or put the hakube binary next to this
script, or set HAKUBE_BIN=/path/to/hakube."
    build_release "$src"
    candidate=$src/target/release/hakube
    [[ -x $candidate ]] || die "the build succeeded but $candidate is missing"
    printf '%s\n' "$candidate"
    return
  fi
  die "no hakube binary found. Put it next to this script ($script_dir/hakube),
install it on PATH (e.g. /usr/local/bin/hakube), or set HAKUBE_BIN=/path/to/hakube."
}

bin=$(find_binary)
msg "using $bin"
exec "$bin" install "$@"
