#!/usr/bin/env bash
#
# Installs hakube on this machine:
#
#   sudo ./install.sh ha load-balancer-address=lb.example.com:6443 taint-control-plane
#
# Every argument goes unchanged to `hakube install` (kURL-style words such as
# `ha` or `key=value`, and flags such as --advertise-address). The hakube
# binary: in the source tree, $HAKUBE_BIN or a fresh `cargo build --release`;
# shipped beside a binary, $HAKUBE_BIN, `hakube` next to this script, or
# `hakube` on PATH.
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

# The hakube binary, found one way: in the source tree, deps.sh's
# hakube_binary (HAKUBE_BIN, else an up-to-date release build, so a stale
# target/ is never used); a copy of this script shipped beside the binary
# looks for HAKUBE_BIN, then `hakube` next to it, then on PATH.
find_binary() {
  local candidate
  if [[ -f $script_dir/deps.sh && -f $script_dir/../Cargo.toml ]]; then
    # shellcheck source=scripts/deps.sh
    source "$script_dir/deps.sh"
    hakube_binary "$(cd -- "$script_dir/.." && pwd -P)" || die "no hakube binary: see the messages above"
    return
  fi
  if [[ -n ${HAKUBE_BIN:-} ]]; then
    [[ -f $HAKUBE_BIN && -x $HAKUBE_BIN ]] || die "HAKUBE_BIN=$HAKUBE_BIN is not an executable file"
    printf '%s\n' "$HAKUBE_BIN"
    return
  fi
  for candidate in "$script_dir/hakube" "$(command -v hakube || true)"; do
    if [[ -n $candidate && -f $candidate && -x $candidate ]]; then
      printf '%s\n' "$candidate"
      return
    fi
  done
  die "no hakube binary found. Put it next to this script ($script_dir/hakube),
install it on PATH (e.g. /usr/local/bin/hakube), or set HAKUBE_BIN=/path/to/hakube."
}

bin=$(find_binary)
msg "using $bin"
exec "$bin" install "$@"
