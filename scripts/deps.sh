# shellcheck shell=bash
#
# Dependency helpers for hakube's scripts. Source it, then call:
#
#   hakube_ensure_deps [haproxy] [nextest]
#       Installs the Debian packages behind the commands the scripts need
#       (etcd, etcdctl, protoc, openssl, ip, curl, flock) when a command is missing.
#       "haproxy" adds haproxy; "nextest" also makes sure cargo-nextest exists.
#   hakube_ensure_commands CMD...
#       The same for exactly the commands named (see _hakube_package_for).
#   hakube_ensure_nextest
#       Installs cargo-nextest with `cargo install --locked` when it is missing.
#   hakube_find_cargo
#       Puts cargo on PATH when it is only in the invoking user's ~/.cargo/bin
#       (sudo resets PATH). Returns non-zero when there is no cargo at all.
#   hakube_cargo ARGS...
#       Runs cargo in the current directory as the user who ran sudo when
#       that user can (so that target/ stays theirs), else as the current
#       user.
#
# Package installs never start services: a policy-rc.d that answers 101 is in
# place for the duration of the install, and an etcd the package install left
# running anyway is stopped. Executed directly, the file runs
# `hakube_ensure_deps "$@"`.

_hakube_deps_msg() { printf 'deps: %s\n' "$*" >&2; }

# Debian package that provides a command.
_hakube_package_for() {
  case "$1" in
    etcd) echo etcd-server ;;
    etcdctl) echo etcd-client ;;
    protoc) echo protobuf-compiler ;;
    openssl) echo openssl ;;
    ip) echo iproute2 ;;
    curl) echo curl ;;
    flock) echo util-linux ;;
    haproxy) echo haproxy ;;
    *) return 1 ;;
  esac
}

# PIDs of processes whose executable name is exactly "etcd", one per line.
_hakube_etcd_pids() {
  local comm_file comm pid
  for comm_file in /proc/[0-9]*/comm; do
    read -r comm 2>/dev/null <"$comm_file" || continue
    [[ $comm == etcd ]] || continue
    pid=${comm_file#/proc/}
    echo "${pid%/comm}"
  done
}

# Stops (TERM, then KILL after 10 s) the etcd processes that are not in the
# list of PIDs given as arguments: those the package install started.
_hakube_stop_new_etcd() {
  local -a before=("$@") new=()
  local pid old known i alive
  while read -r pid; do
    [[ -n $pid ]] || continue
    known=0
    for old in "${before[@]}"; do
      if [[ $old == "$pid" ]]; then known=1; break; fi
    done
    ((known)) || new+=("$pid")
  done < <(_hakube_etcd_pids)
  ((${#new[@]})) || return 0
  _hakube_deps_msg "stopping etcd started by the package install (pid ${new[*]})"
  kill -TERM "${new[@]}" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    alive=0
    for pid in "${new[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    ((alive)) || return 0
    sleep 0.1
  done
  _hakube_deps_msg "etcd did not stop within 10 s; killing it"
  kill -KILL "${new[@]}" 2>/dev/null || true
}

# Debian enables etcd.service when systemd runs the machine; hakube runs etcd
# itself on the same ports, so the packaged unit must never start.
_hakube_disable_packaged_etcd() {
  [[ -d /run/systemd/system ]] || return 0
  command -v systemctl >/dev/null 2>&1 || return 0
  systemctl list-unit-files etcd.service >/dev/null 2>&1 || return 0
  _hakube_deps_msg "disabling the packaged etcd.service (hakube runs etcd itself)"
  systemctl disable --now etcd.service >/dev/null 2>&1 || true
}

_HAKUBE_APT_UPDATED=${_HAKUBE_APT_UPDATED:-0}

# apt-get install the given packages without starting any service.
_hakube_apt_install() {
  local log rc=0
  if [[ ${EUID:-$(id -u)} -ne 0 ]]; then
    _hakube_deps_msg "installing packages needs root: re-run with sudo (packages: $*)"
    return 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    _hakube_deps_msg "apt-get not found: install these packages by hand: $*"
    return 1
  fi
  log=$(mktemp "${TMPDIR:-/tmp}/hakube-apt.XXXXXX") || return 1
  # A subshell so that the EXIT trap restoring policy-rc.d is its own and the
  # caller's traps stay untouched.
  (
    set -euo pipefail
    policy=/usr/sbin/policy-rc.d
    backup=
    # shellcheck disable=SC2317  # called from the EXIT trap
    restore() {
      if [[ -n $backup ]]; then
        mv -f -- "$backup" "$policy"
      else
        rm -f -- "$policy"
      fi
    }
    if [[ -e $policy ]]; then
      backup=$(mktemp "$policy.hakube.XXXXXX")
      cp -p -- "$policy" "$backup"
    fi
    trap restore EXIT
    printf '#!/bin/sh\n# Installed by hakube deps.sh during a package install: start no services.\nexit 101\n' >"$policy"
    chmod 0755 "$policy"

    export DEBIAN_FRONTEND=noninteractive
    apt_opts=(-q -y -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=300
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    if [[ $_HAKUBE_APT_UPDATED != 1 ]]; then
      _hakube_deps_msg "apt-get update"
      apt-get "${apt_opts[@]}" update
    fi
    _hakube_deps_msg "apt-get install $*"
    apt-get "${apt_opts[@]}" install --no-install-recommends "$@"
  ) >"$log" 2>&1 || rc=$?
  if ((rc != 0)); then
    _hakube_deps_msg "package install failed (exit $rc); last lines of the log $log:"
    tail -n 20 -- "$log" >&2
    return "$rc"
  fi
  rm -f -- "$log"
  _HAKUBE_APT_UPDATED=1
}

hakube_ensure_commands() {
  local cmd pkg
  local -a missing_pkgs=() missing_cmds=() etcd_before=()
  for cmd in "$@"; do
    if ! pkg=$(_hakube_package_for "$cmd"); then
      _hakube_deps_msg "do not know which package provides '$cmd'"
      return 2
    fi
    # ip lives in /usr/sbin, which a non-root PATH may lack.
    if command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd || -x /sbin/$cmd ]]; then
      continue
    fi
    missing_cmds+=("$cmd")
    missing_pkgs+=("$pkg")
  done
  ((${#missing_pkgs[@]})) || return 0

  _hakube_deps_msg "missing: ${missing_cmds[*]}"
  mapfile -t etcd_before < <(_hakube_etcd_pids)
  _hakube_apt_install "${missing_pkgs[@]}" || return
  if [[ " ${missing_pkgs[*]} " == *" etcd-server "* ]]; then
    _hakube_disable_packaged_etcd
    _hakube_stop_new_etcd "${etcd_before[@]}"
  fi
  for cmd in "${missing_cmds[@]}"; do
    if ! command -v "$cmd" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$cmd && ! -x /sbin/$cmd ]]; then
      _hakube_deps_msg "'$cmd' is still missing after installing its package"
      return 1
    fi
  done
}

hakube_find_cargo() {
  local home dir
  command -v cargo >/dev/null 2>&1 && return 0
  local -a candidates=()
  [[ -n ${CARGO_HOME:-} ]] && candidates+=("$CARGO_HOME")
  [[ -n ${HOME:-} ]] && candidates+=("$HOME/.cargo")
  if [[ -n ${SUDO_USER:-} && $SUDO_USER != root ]]; then
    home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
    [[ -n $home ]] && candidates+=("$home/.cargo")
  fi
  for dir in "${candidates[@]}"; do
    [[ -x $dir/bin/cargo ]] || continue
    export PATH="$dir/bin:$PATH"
    export CARGO_HOME=${CARGO_HOME:-$dir}
    # rustup's proxies look for toolchains next to the cargo home.
    if [[ -z ${RUSTUP_HOME:-} && -d ${dir%/.cargo}/.rustup ]]; then
      export RUSTUP_HOME=${dir%/.cargo}/.rustup
    fi
    return 0
  done
  return 1
}

hakube_cargo() {
  local home cargo_bin
  cargo_bin=$(command -v cargo) || {
    _hakube_deps_msg "cargo not found"
    return 127
  }
  if [[ ${EUID:-$(id -u)} -eq 0 && -n ${SUDO_USER:-} && $SUDO_USER != root ]] &&
    command -v runuser >/dev/null 2>&1; then
    home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
    local -a as_user=(runuser -u "$SUDO_USER" -- env "HOME=${home:-/}" "PATH=$PATH"
      ${CARGO_HOME:+"CARGO_HOME=$CARGO_HOME"} ${RUSTUP_HOME:+"RUSTUP_HOME=$RUSTUP_HOME"})
    # Only when that user can run this cargo and write the tree: files an
    # earlier root build left in target/ are not theirs to write.
    if "${as_user[@]}" "$cargo_bin" --version >/dev/null 2>&1 &&
      "${as_user[@]}" test -w . &&
      [[ -z $(find target -maxdepth 3 ! -user "$SUDO_USER" -print -quit 2>/dev/null) ]]; then
      "${as_user[@]}" "$cargo_bin" "$@"
      return
    fi
    _hakube_deps_msg "running cargo as root: $SUDO_USER cannot use this cargo or write $(pwd -P)"
  fi
  "$cargo_bin" "$@"
}

hakube_ensure_nextest() {
  if ! hakube_find_cargo; then
    _hakube_deps_msg "cargo not found: install a Rust toolchain (https://rustup.rs) to get cargo-nextest"
    return 1
  fi
  cargo nextest --version >/dev/null 2>&1 && return 0
  _hakube_deps_msg "installing cargo-nextest (cargo install cargo-nextest --locked; this takes a few minutes)"
  cargo install cargo-nextest --locked --quiet
}

hakube_ensure_deps() {
  local arg want_nextest=0
  local -a cmds=(etcd etcdctl protoc openssl ip curl flock)
  for arg in "$@"; do
    case "$arg" in
      haproxy) cmds+=(haproxy) ;;
      nextest) want_nextest=1 ;;
      *)
        _hakube_deps_msg "hakube_ensure_deps: unknown option '$arg' (known: haproxy, nextest)"
        return 2
        ;;
    esac
  done
  hakube_ensure_commands "${cmds[@]}" || return
  if ((want_nextest)); then
    hakube_ensure_nextest || return
  fi
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  case "${1:-}" in
    -h | --help)
      echo "usage: ${0##*/} [haproxy] [nextest]   (or source it and call hakube_ensure_deps)" >&2
      exit 0
      ;;
  esac
  hakube_ensure_deps "$@"
fi

# hakube_binary REPO: prints the hakube binary to use: $HAKUBE_BIN when set,
# else a fresh release build of REPO. Messages on stderr; returns 1 on failure.
hakube_binary() {
  local repo=$1 bin
  if [[ -n ${HAKUBE_BIN:-} ]]; then
    bin=$(readlink -f -- "$HAKUBE_BIN") || {
      _hakube_deps_msg "HAKUBE_BIN=$HAKUBE_BIN does not exist"
      return 1
    }
    [[ -f $bin && -x $bin ]] || {
      _hakube_deps_msg "HAKUBE_BIN=$HAKUBE_BIN is not an executable file"
      return 1
    }
  else
    hakube_find_cargo || {
      _hakube_deps_msg "cargo not found: install a Rust toolchain (https://rustup.rs) or set HAKUBE_BIN"
      return 1
    }
    _hakube_deps_msg "building: cargo build --release"
    (cd -- "$repo" && hakube_cargo build --release) >&2 || {
      _hakube_deps_msg "cargo build --release failed"
      return 1
    }
    bin=$repo/target/release/hakube
  fi
  printf '%s\n' "$bin"
}
