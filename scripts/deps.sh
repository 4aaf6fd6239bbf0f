# shellcheck shell=bash
#
# Dependency helpers for hakube's scripts. Source it, then call:
#
#   hakube_ensure_deps [kube] [haproxy] [prometheus] [shellcheck] [vm] [browser] [nextest]
#       Makes sure what building hakube and running its scripts and tests
#       needs is here: the commands etcd, etcdctl, protoc, openssl, ip, curl,
#       flock, and protoc's well-known-type includes (which Debian ships apart
#       from protoc, in libprotobuf-dev). Installs the Debian packages of
#       whatever is missing and says what it installed. "kube" adds what
#       nodes that run pods need besides the bundle (the CNI
#       plugins, iptables); "haproxy" adds haproxy; "shellcheck" adds the
#       linter the test suite runs on the scripts; "vm" adds what
#       scripts/vm.sh needs to build and boot virtual machines (qemu,
#       qemu-img, debootstrap, mkfs.ext4, ssh); "nextest" also makes sure
#       cargo-nextest exists.
#   hakube_ensure_needs NEED...
#       The same for exactly the needs named (see _hakube_need).
#   hakube_ensure_nextest
#       Installs cargo-nextest with `cargo install --locked` when it is missing.
#   hakube_ensure_cargo_deny
#       The same for cargo-deny.
#   hakube_debian_mirror [SUITE]
#       Prints the URI of the Debian mirror this machine's apt uses for SUITE
#       (default bookworm), or $HAKUBE_DEBIAN_MIRROR when set.
#   hakube_as_root SCRIPT ARGS...
#       Returns when already root; else re-runs SCRIPT ARGS with sudo (keeping
#       the Rust toolchain found here), or fails saying to run it as root.
#   hakube_find_cargo
#       Puts cargo on PATH when it is only in the invoking user's ~/.cargo/bin
#       (sudo resets PATH). Returns non-zero when there is no cargo at all.
#   hakube_cargo ARGS...
#       Runs cargo in the current directory as the user who ran sudo when
#       that user can (so that target/ stays theirs), else as the current
#       user.
#
# Package installs must not leave services running that fight hakube for its
# ports: on a host run by systemd, etcd.service is masked before etcd-server
# is installed (hakube runs etcd itself; a mask is the administrator's own
# switch, which the package keeps); elsewhere, an etcd the package's init
# script started is stopped through that same init script, which only knows
# its own pid. Nothing else on the machine is touched. Executed directly, the
# file runs `hakube_ensure_deps "$@"`.

_hakube_deps_msg() { printf 'deps: %s\n' "$*" >&2; }

# _hakube_need NEED: prints "PACKAGE" and returns 0 when NEED is missing,
# returns 1 when it is present, 2 when NEED is unknown.
_hakube_need() {
  local need=$1 pkg
  case $need in
    etcd) pkg=etcd-server ;;
    etcdctl) pkg=etcd-client ;;
    protoc) pkg=protobuf-compiler ;;
    # protoc finds google/protobuf/*.proto next to itself; etcd's API needs them.
    protoc-includes)
      [[ -e /usr/include/google/protobuf/descriptor.proto ]] && return 1
      echo libprotobuf-dev
      return 0
      ;;
    # What a node that runs pods needs: containerd (with ctr and its runc
    # shim), runc, iptables; kubectl to look at the cluster.
    containerd | ctr | containerd-shim-runc-v2) pkg=containerd ;;
    runc) pkg=runc ;;
    iptables) pkg=iptables ;;
    kubectl) pkg=kubernetes-client ;;
    openssl) pkg=openssl ;;
    ip) pkg=iproute2 ;;
    curl) pkg=curl ;;
    flock) pkg=util-linux ;;
    haproxy) pkg=haproxy ;;
    shellcheck) pkg=shellcheck ;;
    # The alert rules' tests (promtool) and the sandbox's scraper.
    promtool | prometheus) pkg=prometheus ;;
    # The soak's clock steps (libfaketime under an agent).
    faketime) pkg=faketime ;;
    # The virtual IP's benchmark floats a second address with it.
    keepalived) pkg=keepalived ;;
    # The cluster page's browser test: headless Chromium driven by
    # playwright-core (npm, in dev/browser) under Node.
    chromium) pkg=chromium ;;
    node) pkg=nodejs ;;
    npm) pkg=npm ;;
    # What scripts/vm.sh needs: a Debian root made with debootstrap, turned
    # into a disk image by mkfs.ext4 -d, booted by qemu over qcow2 overlays
    # that qemu-img makes, driven over ssh.
    qemu-system-x86_64) pkg=qemu-system-x86 ;;
    qemu-img) pkg=qemu-utils ;;
    debootstrap) pkg=debootstrap ;;
    make | bzip2) pkg=$need ;;
    # libFuzzer (the fuzz targets' libfuzzer-sys) is C++.
    c++) pkg=g++ ;;
    mkfs.ext4) pkg=e2fsprogs ;;
    ssh | ssh-keygen) pkg=openssh-client ;;
    *) return 2 ;;
  esac
  # ip lives in /usr/sbin, which a non-root PATH may lack.
  if command -v "$need" >/dev/null 2>&1 || [[ -x /usr/sbin/$need || -x /sbin/$need ]]; then
    return 1
  fi
  echo "$pkg"
}

_HAKUBE_APT_UPDATED=${_HAKUBE_APT_UPDATED:-0}

# _hakube_version_pins PACKAGE...: prints extra "NAME=VERSION" arguments that
# apt needs to install PACKAGE... at all. qemu-system-x86 and qemu-utils must
# come from the same qemu release (a newer qemu-utils "Breaks" an older
# qemu-system-common): when the machine has another release's qemu-utils
# (say a backport), it is pinned to qemu-system-x86's candidate, which may
# be a downgrade. Nothing depends on qemu-utils but qemu itself.
_hakube_version_pins() {
  local want installed
  [[ " $* " == *" qemu-system-x86 "* ]] || return 0
  command -v apt-cache >/dev/null 2>&1 || return 0
  want=$(apt-cache policy qemu-system-x86 2>/dev/null | awk '$1 == "Candidate:" {print $2}')
  installed=$(dpkg-query -W -f='${db:Status-Status} ${Version}' qemu-utils 2>/dev/null | awk '$1 == "installed" {print $2}')
  [[ -n $want && $want != "(none)" && -n $installed && $installed != "$want" ]] || return 0
  apt-cache madison qemu-utils 2>/dev/null | awk -v v="$want" '$3 == v {found = 1} END {exit !found}' || return 0
  _hakube_deps_msg "qemu-utils $installed is from another qemu release than qemu-system-x86 $want: installing qemu-utils $want with it"
  echo "qemu-utils=$want"
}

# apt-get install the given packages (output kept in a log, shown on failure).
_hakube_apt_install() {
  local log rc=0
  if [[ ${EUID:-$(id -u)} -ne 0 ]]; then
    _hakube_deps_msg "installing packages needs root: run this as root or with sudo (packages: $*)"
    return 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    _hakube_deps_msg "apt-get not found: install these packages by hand: $*"
    return 1
  fi
  log=$(mktemp "${TMPDIR:-/tmp}/hakube-apt.XXXXXX") || return 1
  (
    set -euo pipefail
    export DEBIAN_FRONTEND=noninteractive
    apt_opts=(-q -y -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=300
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    if [[ $_HAKUBE_APT_UPDATED != 1 ]]; then
      apt-get "${apt_opts[@]}" update
    fi
    # Pins (NAME=VERSION) may be downgrades; apt downgrades only those.
    mapfile -t pins < <(_hakube_version_pins "$@" 2>&3)
    ((${#pins[@]} == 0)) || apt_opts+=(--allow-downgrades)
    apt-get "${apt_opts[@]}" install --no-install-recommends "$@" "${pins[@]}"
  ) 3>&2 >"$log" 2>&1 || rc=$?
  if ((rc != 0)); then
    _hakube_deps_msg "apt-get install $* failed (exit $rc); last lines of its log $log:"
    tail -n 20 -- "$log" >&2
    return "$rc"
  fi
  rm -f -- "$log"
  _HAKUBE_APT_UPDATED=1
}

# The packaged etcd must never run beside hakube's (same ports).
_hakube_before_etcd_install() {
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    _hakube_deps_msg "masking etcd.service: hakube runs etcd itself, on the same ports"
    systemctl mask etcd.service >/dev/null 2>&1 || true
  fi
}

_hakube_after_etcd_install() {
  [[ -d /run/systemd/system ]] && return 0
  [[ -x /etc/init.d/etcd ]] || return 0
  if /etc/init.d/etcd status >/dev/null 2>&1; then
    _hakube_deps_msg "stopping the etcd that the package's init script started (hakube runs its own)"
    /etc/init.d/etcd stop >/dev/null 2>&1 || true
  fi
  if command -v update-rc.d >/dev/null 2>&1; then
    update-rc.d etcd disable >/dev/null 2>&1 || true
  fi
}

hakube_ensure_needs() {
  local need pkg rc
  local -a pkgs=() needs=()
  for need in "$@"; do
    rc=0
    pkg=$(_hakube_need "$need") || rc=$?
    case $rc in
      0)
        needs+=("$need")
        [[ " ${pkgs[*]} " == *" $pkg "* ]] || pkgs+=("$pkg")
        ;;
      1) ;;
      *)
        _hakube_deps_msg "do not know how to provide '$need'"
        return 2
        ;;
    esac
  done
  ((${#pkgs[@]})) || return 0

  _hakube_deps_msg "missing: ${needs[*]}; installing ${pkgs[*]}"
  [[ " ${pkgs[*]} " == *" etcd-server "* ]] && _hakube_before_etcd_install
  _hakube_apt_install "${pkgs[@]}" || return
  [[ " ${pkgs[*]} " == *" etcd-server "* ]] && _hakube_after_etcd_install
  for need in "${needs[@]}"; do
    if _hakube_need "$need" >/dev/null; then
      _hakube_deps_msg "'$need' is still missing after installing its package"
      return 1
    fi
  done
  _hakube_deps_msg "installed ${pkgs[*]}"
}

# hakube_debian_mirror [SUITE]: the first deb or deb-src URI that apt's
# sources give for SUITE (deb822 .sources files first, then one-line lists).
hakube_debian_mirror() {
  local suite=${1:-bookworm} f uri
  if [[ -n ${HAKUBE_DEBIAN_MIRROR:-} ]]; then
    printf '%s\n' "$HAKUBE_DEBIAN_MIRROR"
    return 0
  fi
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -r $f ]] || continue
    # Paragraph mode: one record per stanza; keys are case-insensitive and
    # values may continue on indented lines.
    uri=$(awk -v suite="$suite" '
      BEGIN { RS = ""; FS = "\n" }
      {
        types = ""; uris = ""; suites = ""; enabled = "yes"; key = ""
        for (i = 1; i <= NF; i++) {
          line = $i
          if (line ~ /^#/) continue
          if (line ~ /^[ \t]/) {
            val = line; sub(/^[ \t]+/, "", val)
            if (key == "types") types = types " " val
            else if (key == "uris") uris = uris " " val
            else if (key == "suites") suites = suites " " val
            continue
          }
          p = index(line, ":"); if (!p) continue
          key = tolower(substr(line, 1, p - 1)); val = substr(line, p + 1)
          gsub(/^[ \t]+|[ \t]+$/, "", val)
          if (key == "types") types = val
          else if (key == "uris") uris = val
          else if (key == "suites") suites = val
          else if (key == "enabled") enabled = tolower(val)
        }
        if (enabled == "no") next
        sub(/^[ \t]+/, "", types); sub(/^[ \t]+/, "", uris); sub(/^[ \t]+/, "", suites)
        debtype = 0; n = split(types, t, /[ \t]+/)
        for (j = 1; j <= n; j++) if (t[j] == "deb" || t[j] == "deb-src") debtype = 1
        insuite = 0; n = split(suites, s, /[ \t]+/)
        for (j = 1; j <= n; j++) if (s[j] == suite) insuite = 1
        if (!debtype || !insuite) next
        split(uris, u, /[ \t]+/)
        if (u[1] != "") { print u[1]; exit }
      }' "$f")
    if [[ -n $uri ]]; then
      printf '%s\n' "$uri"
      return 0
    fi
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r $f ]] || continue
    uri=$(awk -v suite="$suite" '
      {
        sub(/#.*/, "")
        if (NF < 3 || ($1 != "deb" && $1 != "deb-src")) next
        i = 2
        if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) { print $i; exit }
      }' "$f")
    if [[ -n $uri ]]; then
      printf '%s\n' "$uri"
      return 0
    fi
  done
  return 1
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

hakube_as_root() {
  local script=$1 var cargo_home rustup_home
  shift
  [[ ${EUID:-$(id -u)} -eq 0 ]] && return 0
  if ! command -v sudo >/dev/null 2>&1; then
    _hakube_deps_msg "${script##*/} needs root (network namespaces, packages) and sudo is not installed: run it as root"
    exit 1
  fi
  # sudo resets PATH and HOME: hand over the toolchain found here.
  hakube_find_cargo || true
  local -a env_args=("PATH=$PATH")
  cargo_home=${CARGO_HOME:-$HOME/.cargo}
  rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
  [[ -d $cargo_home ]] && env_args+=("CARGO_HOME=$cargo_home")
  [[ -d $rustup_home ]] && env_args+=("RUSTUP_HOME=$rustup_home")
  for var in $(compgen -e); do
    [[ $var == HAKUBE_* || $var == CI ]] && env_args+=("$var=${!var}")
  done
  _hakube_deps_msg "${script##*/} needs root; re-running it with sudo"
  exec sudo -- env "${env_args[@]}" bash "$script" "$@"
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

# hakube_ensure_cargo_tool SUBCOMMAND: `cargo SUBCOMMAND` works, installing
# the crate cargo-SUBCOMMAND with `cargo install --locked` when it is missing.
hakube_ensure_cargo_tool() {
  local tool=$1
  if ! hakube_find_cargo; then
    _hakube_deps_msg "cargo not found: install a Rust toolchain (https://rustup.rs) to get cargo-$tool"
    return 1
  fi
  cargo "$tool" --version >/dev/null 2>&1 && return 0
  _hakube_deps_msg "installing cargo-$tool (cargo install cargo-$tool --locked; a few minutes on 2 cores)"
  cargo install "cargo-$tool" --locked --quiet
}

hakube_ensure_nextest() { hakube_ensure_cargo_tool nextest; }

# cargo-deny checks the dependency graph (deny.toml: licenses, sources,
# wildcards); its advisories need the RustSec database from GitHub, which
# these machines cannot reach, so scripts/test.sh checks the rest.
hakube_ensure_cargo_deny() { hakube_ensure_cargo_tool deny; }

hakube_ensure_deps() {
  local arg want_nextest=0 want_browser=0
  local -a needs=(etcd etcdctl protoc protoc-includes openssl ip curl flock)
  for arg in "$@"; do
    case "$arg" in
      # containerd, runc, the CNI plugins, kubectl and etcd's own come in
      # the Kubernetes bundle (scripts/kube-bundle.sh); the host gives
      # iptables (kube-proxy's rules).
      kube) needs+=(iptables) ;;
      haproxy) needs+=(haproxy) ;;
      prometheus) needs+=(promtool prometheus) ;;
      shellcheck) needs+=(shellcheck) ;;
      vm) needs+=(qemu-system-x86_64 qemu-img debootstrap mkfs.ext4 ssh ssh-keygen) ;;
      browser)
        needs+=(chromium node npm)
        want_browser=1
        ;;
      nextest) want_nextest=1 ;;
      *)
        _hakube_deps_msg "hakube_ensure_deps: unknown option '$arg' (known: kube, haproxy, prometheus, shellcheck, vm, browser, nextest)"
        return 2
        ;;
    esac
  done
  hakube_ensure_needs "${needs[@]}" || return
  if ((want_browser)); then
    hakube_ensure_playwright || return
  fi
  if ((want_nextest)); then
    hakube_ensure_nextest || return
  fi
}

# hakube_ensure_playwright: playwright-core, as dev/browser/package-lock.json
# pins it, from the npm registry (no browser download: it drives Debian's
# chromium).
hakube_ensure_playwright() {
  local dir
  dir="$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/../dev/browser"
  [[ -f $dir/node_modules/playwright-core/package.json ]] && return 0
  _hakube_deps_msg "installing playwright-core (npm ci in dev/browser)"
  (cd -- "$dir" && npm ci --no-audit --no-fund --loglevel=error) >&2 || {
    _hakube_deps_msg "npm ci in $dir failed: the browser test needs playwright-core from the npm registry"
    return 1
  }
}

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
    (cd -- "$repo" && hakube_cargo build --release --locked) >&2 || {
      _hakube_deps_msg "cargo build --release failed"
      return 1
    }
    bin=$repo/target/release/hakube
  fi
  printf '%s\n' "$bin"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  case "${1:-}" in
    -h | --help)
      echo "usage: ${0##*/} [kube] [haproxy] [prometheus] [vm] [browser] [nextest]   (or source it and call hakube_ensure_deps)" >&2
      exit 0
      ;;
  esac
  hakube_ensure_deps "$@"
fi
