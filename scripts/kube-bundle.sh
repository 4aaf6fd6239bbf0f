#!/usr/bin/env bash
#
# Builds (or finds in its cache) a bundle of Kubernetes 1.20.2 server binaries
# and two container image archives, made offline from Debian 12's `kubernetes`
# SOURCE package, and prints the bundle directory's absolute path as the only
# line on stdout:
#
#   BUNDLE=$(scripts/kube-bundle.sh)
#   ls "$BUNDLE"   # kube-apiserver kube-controller-manager kube-scheduler kubelet
#                  # pause.tar pause-image test-image.tar test-image
#                  # VERSION MANIFEST SHA256SUMS
#
# Everything else (progress, step durations, errors) goes to stderr.
#
# Why from the Debian source package: the machines that run hakube's tests
# reach Debian's archive but no image registry and no dl.k8s.io. The .orig
# tarball of `kubernetes` 1.20.5+really1.20.2 is the full upstream 1.20.2 tree
# with vendor/, and apt checks it against the signed archive, so the bundle is
# built from verified sources with Debian's own Go (golang-go 1.19).
#
# Recipe (build_bundle below):
#   1. apt-get source --download-only through a PRIVATE apt configuration
#      (own sources dir and lists, /etc/apt is never written), dpkg-source -x
#      (which also applies Debian's patches; they only touch kubectl's printers).
#   2. GOPATH mode (1.20 does not build with -mod=vendor): the tree sits at
#      $GOPATH/src/k8s.io/kubernetes, GO111MODULE=off. `make generated_files`
#      first (openapi etc.), then one `go build` of the four commands with
#      CGO_ENABLED=0, upstream's tags (selinux,notest), -trimpath and
#      -ldflags '-s -w -buildid=' plus the version variables that
#      hack/lib/version.sh would set (gitCommit is the upstream commit recorded
#      in the tarball, buildDate is the Debian changelog's date), so
#      `kube-apiserver --version` says "Kubernetes v1.20.2" and the same inputs
#      give the same binaries.
#   3. pause: the tree's build/pause/linux/pause.c with upstream's CFLAGS
#      (gcc -Os -Wall -Werror -static) and strip. The image tag is the one
#      build/pause/Makefile gives this source, 3.4 (kubelet 1.20's built-in
#      default sandbox image is still pause:3.2, so users of the bundle pass
#      the name in pause-image explicitly).
#   4. test image: Debian's static /bin/busybox plus one symlink per applet.
#   5. Both images as docker-archive tars (manifest.json, config, one
#      layer.tar), which `ctr images import` accepts. Tars are reproducible:
#      sorted entries, mtime = the changelog date, owner 0:0 numeric.
#
# Cache and its key. The bundle lives in
#   ${HAKUBE_CACHE_DIR:-/var/cache/hakube}/kube-bundle/<key>/
# with <key> = <Debian source version>_<first 16 hex of the .dsc's sha256>_r<RECIPE>.
# The .dsc's checksum covers the .orig tarball and Debian's patches, RECIPE
# covers this script's recipe (bump it when the recipe changes). Knowing the
# .dsc's checksum needs an `apt-get update`, which a cache hit should not pay
# for (nor need the network, nor root): so the last resolution is remembered
# in kube-bundle/index-r<RECIPE> (one line, the key). A run with a valid index
# whose bundle is complete is a hit after a few stat calls. Only when there is
# no index or no complete bundle (or with --refresh) does the script ask apt
# again; the archive changing under an existing bundle (a new Debian revision)
# is thus only noticed with --refresh, which is the point: a bundle stays
# pinned until asked. The toolchain versions (Go, gcc, busybox-static) are
# recorded in MANIFEST but are not part of the key, as they are the machine's,
# not the source's; --rebuild builds again with the current ones.
#
# A bundle is complete by construction: it is built in a hidden staging dir
# (.staging.*) next to it and renamed into place as the last step. A build
# stopped by INT/TERM/HUP stops its current step and removes the staging dir;
# one killed outright leaves it for the next build to remove; either way the
# work dir (kube-bundle/work, with logs/) stays until the next build.
# Builds take a flock so that concurrent runs build once; the loser waits and
# then finds the bundle. Go's build cache (kube-bundle/go-build, ~1.6 GB) is
# kept between builds: a rebuild (recipe bump, new Debian revision) takes
# about 2 minutes instead of 5-9.
#
# shellcheck disable=SC2016  # the single-quoted `bash -c` scripts expand their own "$1"
set -euo pipefail

prog=kube-bundle.sh
script=$(readlink -f -- "${BASH_SOURCE[0]}")
# shellcheck source=scripts/deps.sh
source "${script%/*}/deps.sh"

# Bump when anything below changes what ends up in a bundle.
readonly RECIPE=1
# The Kubernetes version this script promises (the interface is "1.20.2").
readonly KUBE_VERSION_EXPECTED=v1.20.2
readonly SOURCE_PACKAGE=kubernetes
readonly DEBIAN_SUITE=bookworm
readonly DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
readonly IMAGE_REGISTRY=hakube.local
readonly BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
# Files a complete bundle has; MANIFEST is written last before the rename.
readonly BUNDLE_FILES=("${BINARIES[@]}" pause.tar pause-image test-image.tar test-image VERSION SHA256SUMS MANIFEST)
# Debian packages the build needs (libc6-dev: gcc -static needs libc.a, and
# --no-install-recommends would not bring it with gcc).
readonly BUILD_PACKAGES=(golang-go make rsync gcc libc6-dev binutils busybox-static dpkg-dev patch xz-utils)
readonly VERIFY_PACKAGES=(containerd runc)

msg() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$prog" "$*" >&2
  exit 1
}

usage() {
  cat >&2 <<EOF
usage: scripts/$prog [--verify] [--refresh] [--rebuild]

Prints the absolute path of a bundle directory holding Kubernetes
$KUBE_VERSION_EXPECTED server binaries (kube-apiserver, kube-controller-manager,
kube-scheduler, kubelet) and two image archives for \`ctr images import\`
(pause.tar, test-image.tar; their names are in the files pause-image and
test-image), built offline from Debian $DEBIAN_SUITE's '$SOURCE_PACKAGE' source
package. Builds the bundle the first time (5-10 minutes on 2 cores, ~2.5 GB
of disk, 5 GB free required), later runs reuse it at no cost. Only the path
goes to stdout.

Building needs root (package installs); the script re-runs itself with sudo
when needed. A cache hit needs neither root nor the network.

  --verify    also import both archives into a throwaway containerd (its own
              root, state and socket under /tmp; never the system's), run
              'sh -c "echo ok"' in the test image and start/stop pause, and
              check SHA256SUMS. Installs containerd if missing.
  --refresh   ask apt for the current source package even when a bundle is
              cached; builds again only if the source (or RECIPE) changed.
  --rebuild   build again even if the bundle exists (replaces it).
  -h, --help  this text.

Environment:
  HAKUBE_CACHE_DIR            cache root (default /var/cache/hakube); the
                              bundles are in \$HAKUBE_CACHE_DIR/kube-bundle/
  HAKUBE_DEBIAN_MIRROR        Debian mirror URI (default: the one /etc/apt
                              uses for $DEBIAN_SUITE)
  HAKUBE_KUBE_BUNDLE_LOCK_WAIT seconds to wait for another run's build
                              (default 3600)

Disk: each bundle is ~360 MB; kube-bundle/go-build is Go's build cache
(~1.6 GB, safe to delete); old bundles are not pruned (delete their dirs).
EOF
}

# ---------------------------------------------------------------------------
# Small helpers

# bundle_complete DIR: all files of a bundle are there and non-empty.
bundle_complete() {
  local dir=$1 f
  [[ -d $dir ]] || return 1
  for f in "${BUNDLE_FILES[@]}"; do
    [[ -s $dir/$f ]] || return 1
  done
}

# cached_bundle: prints the bundle the index names if it is complete.
cached_bundle() {
  local key
  [[ -r $index_file ]] || return 1
  read -r key <"$index_file" || return 1
  [[ -n $key && $key != */* && $key != .* ]] || return 1
  bundle_complete "$root/$key" || return 1
  printf '%s\n' "$root/$key"
}

# write_index KEY: atomically, so a reader never sees a partial line.
write_index() {
  printf '%s\n' "$1" >"$index_file.tmp.$$"
  mv -f -- "$index_file.tmp.$$" "$index_file"
}

# finish DIR: runs --verify if asked, prints DIR on the real stdout, exits.
finish() {
  local bundle=$1
  if ((verify)); then
    verify_bundle "$bundle"
  fi
  printf '%s\n' "$bundle" >&3
  exit 0
}

fmt_duration() {
  local s=$1
  if ((s >= 60)); then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi
}

# The build's work dir, named in failure messages.
work=
# run_step NAME LOG TIMEOUT CMD...: runs CMD (stdout and stderr to LOG, stdin
# from /dev/null) under a timeout; reports the duration, or the failure with
# the log's last lines.
#
# The step runs in the background and is waited for, so that a TERM or INT to
# this script reaches the trap at once (bash defers traps while a foreground
# child runs) and the trap can stop the step: timeout passes the signal on to
# the step's process group.
step_pid=
run_step() {
  local name=$1 log=$2 limit=$3 t0=$SECONDS rc=0
  shift 3
  msg "$name ..."
  printf '==> %s: %s\n' "$name" "$*" >>"$log"
  timeout "${timeout_args[@]}" "$limit" "$@" >>"$log" 2>&1 </dev/null &
  step_pid=$!
  wait "$step_pid" || rc=$?
  step_pid=
  if ((rc != 0)); then
    local why="exit $rc"
    ((rc == 124)) && why="timed out after $(fmt_duration "$limit")"
    msg "$name FAILED ($why) after $(fmt_duration $((SECONDS - t0))); last lines of $log:"
    tail -n 30 -- "$log" | sed 's/^/    /' >&2
    die "step '$name' failed; full log: $log"
  fi
  msg "$name: done in $(fmt_duration $((SECONDS - t0)))"
}

pkg_installed() {
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

# ensure_packages PKG...: apt-get installs the ones that are not installed.
# No policy-rc.d games: none of these packages' scripts start a build-relevant
# service except containerd's unit, which only matters under systemd.
ensure_packages() {
  local p log rc=0
  local -a missing=()
  for p in "$@"; do
    pkg_installed "$p" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install these Debian packages by hand: ${missing[*]}"
  [[ " ${missing[*]} " == *" busybox-static "* ]] && pkg_installed busybox &&
    msg "note: busybox-static replaces the (dynamically linked) busybox package"
  msg "installing missing packages: ${missing[*]}"
  log=$(mktemp "${TMPDIR:-/tmp}/kube-bundle-apt.XXXXXX")
  (
    opts=(-q -y -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=300)
    DEBIAN_FRONTEND=noninteractive timeout -k 30 900 apt-get "${opts[@]}" update &&
      DEBIAN_FRONTEND=noninteractive timeout -k 30 1800 apt-get "${opts[@]}" install --no-install-recommends "${missing[@]}"
  ) >"$log" 2>&1 </dev/null || rc=$?
  if ((rc != 0)); then
    msg "apt-get install ${missing[*]} failed (exit $rc); last lines of $log:"
    tail -n 20 -- "$log" | sed 's/^/    /' >&2
    die "could not install ${missing[*]}: fix apt (see $log) or install them by hand, then re-run"
  fi
  rm -f -- "$log"
}

# ---------------------------------------------------------------------------
# Source resolution through a private apt configuration

# Prints the Debian mirror URI the machine uses for $DEBIAN_SUITE: from the
# deb822 *.sources files (the stanza whose Suites include it), else from a
# one-line sources.list (`deb [opts] URI bookworm main`, as debootstrap writes
# it) or *.list files.
# The mirror this machine's apt uses for the suite (deps.sh knows how).
find_debian_mirror() { hakube_debian_mirror "$DEBIAN_SUITE"; }

# Sets apt_opts: apt reads our sources and keeps its lists in $root/apt, and
# writes no cache files of its own; the rest of /etc/apt (proxies, ...) applies.
setup_private_apt() {
  local mirror apt_dir=$root/apt
  mirror=$(find_debian_mirror) ||
    die "no Debian '$DEBIAN_SUITE' mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; set HAKUBE_DEBIAN_MIRROR (e.g. http://deb.debian.org/debian)"
  [[ -r $DEBIAN_KEYRING ]] || die "$DEBIAN_KEYRING is missing: apt-get install debian-archive-keyring"
  mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial"
  cat >"$apt_dir/sources.list.d/debian-src.sources" <<EOF
# Written by hakube scripts/$prog: Debian source packages only, for this script.
Types: deb-src
URIs: $mirror
Suites: $DEBIAN_SUITE
Components: main
Signed-By: $DEBIAN_KEYRING
EOF
  apt_opts=(-q
    -o "Dir::Etc::sourcelist=/dev/null"
    -o "Dir::Etc::sourceparts=$apt_dir/sources.list.d"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
    -o "Acquire::Retries=3" -o "Acquire::http::Timeout=30" -o "Acquire::https::Timeout=30"
    # Fetch as root rather than as apt's sandbox user _apt: where other
    # users cannot reach the network or read /etc/resolv.conf (a root made
    # from a directory of mode 0700, as chroots often are), _apt's download
    # fails with a name-resolution error while root's works. What is
    # fetched is checked against the signed index either way.
    -o "APT::Sandbox::User=root")
  apt_mirror=$mirror
}

# Sets src_version, dsc_name, dsc_sha256 and key from the archive's signed
# Sources index.
resolve_source() {
  local log=$root/apt/resolve.log line uris
  setup_private_apt
  : >"$log"
  run_step "apt-get update (deb-src $apt_mirror $DEBIAN_SUITE, private lists)" "$log" 600 \
    apt-get "${apt_opts[@]}" update --error-on=any
  if ! uris=$(cd / && timeout 120 apt-get "${apt_opts[@]}" source --print-uris "$SOURCE_PACKAGE" 2>>"$log"); then
    tail -n 10 -- "$log" | sed 's/^/    /' >&2
    die "apt-get source --print-uris $SOURCE_PACKAGE failed (no such source package in $DEBIAN_SUITE at $apt_mirror?); log: $log"
  fi
  # Line format: 'URL' NAME SIZE SHA256:HEX
  line=$(awk "/\\.dsc' /" <<<"$uris")
  [[ -n $line ]] || die "no .dsc in apt-get source --print-uris $SOURCE_PACKAGE: $uris"
  line=${line%%$'\n'*}
  read -r _ dsc_name _ dsc_sha256 <<<"$line"
  dsc_sha256=${dsc_sha256#SHA256:}
  [[ $dsc_sha256 =~ ^[0-9a-f]{64}$ ]] || die "no SHA256 for $dsc_name in apt's output: $line"
  src_version=${dsc_name#"${SOURCE_PACKAGE}"_}
  src_version=${src_version%.dsc}
  key=${src_version}_${dsc_sha256:0:16}_r$RECIPE
  msg "source package: $SOURCE_PACKAGE $src_version (.dsc sha256 $dsc_sha256)"
}

# ---------------------------------------------------------------------------
# Image archives

# reproducible_tar OUT DIR: tars DIR's contents (not DIR itself), sorted, with
# fixed mtimes and numeric owner 0:0, no ./ prefix.
reproducible_tar() {
  local out=$1 dir=$2
  (cd "$dir" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort) |
    tar --create --file="$out" --directory="$dir" --no-recursion --verbatim-files-from --files-from=- \
      --format=gnu --mtime="@$epoch" --owner=0 --group=0 --numeric-owner
}

# docker_archive OUT NAME:TAG ROOTFS CONFIG_JSON_FRAGMENT: writes a one-layer
# docker-archive (the format of `docker save`, which `ctr images import`
# reads). The fragment is the image config's "config" object.
docker_archive() {
  local out=$1 ref=$2 rootfs=$3 config=$4 dir layer_sha config_sha created
  dir=$(mktemp -d "$work/image.XXXXXX")
  reproducible_tar "$dir/layer.tar" "$rootfs"
  layer_sha=$(sha256sum <"$dir/layer.tar" | cut -d' ' -f1)
  mkdir "$dir/$layer_sha"
  mv "$dir/layer.tar" "$dir/$layer_sha/layer.tar"
  created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
  printf '{"architecture":"amd64","config":%s,"created":"%s","history":[{"created":"%s","created_by":"hakube scripts/%s"}],"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$config" "$created" "$created" "$prog" "$layer_sha" >"$dir/config.json"
  config_sha=$(sha256sum <"$dir/config.json" | cut -d' ' -f1)
  mv "$dir/config.json" "$dir/$config_sha.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
    "$config_sha" "$ref" "$layer_sha" >"$dir/manifest.json"
  chmod -R u=rwX,go=rX "$dir"
  reproducible_tar "$out" "$dir"
  rm -rf -- "$dir"
  image_config_digest=sha256:$config_sha
}

# ---------------------------------------------------------------------------
# The build

staging=
# shellcheck disable=SC2317  # called from the EXIT trap
on_exit() {
  local rc=$?
  if [[ -n $staging && -d $staging ]]; then
    rm -rf -- "$staging"
  fi
  if [[ -n ${verify_dir:-} ]]; then
    verify_cleanup
  fi
  if ((rc != 0)) && [[ -n $work && -d $work ]]; then
    msg "work dir kept for inspection: $work (logs in $work/logs); the next build removes it"
  fi
}
trap on_exit EXIT

# shellcheck disable=SC2317  # called from the signal traps
on_signal() {
  local sig=$1 i
  trap - INT TERM HUP
  msg "got SIG$sig; stopping"
  if [[ -n $step_pid ]] && kill -0 "$step_pid" 2>/dev/null; then
    kill -TERM "$step_pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
      kill -0 "$step_pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  # The EXIT trap removes the staging dir and says where the work dir is.
  exit $((128 + $(kill -l "$sig")))
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap 'on_signal HUP' HUP

build_bundle() {
  local t_build=$SECONDS tree log bb bb_version bb_tag pause_tag git_commit kube_version kube_major kube_minor
  local ldflags="-s -w -buildid=" vpkg b out avail_kb

  # Leftovers of killed builds: staging dirs never became bundles.
  if [[ -e $root/work ]] || compgen -G "$root/.staging.*" >/dev/null; then
    local t_rm=$SECONDS
    rm -rf -- "$root"/.staging.* "$root/work"
    msg "removed the previous build's work dir in $(fmt_duration $((SECONDS - t_rm)))"
  fi
  avail_kb=$(df -Pk -- "$root" | awk 'NR == 2 { print $4 }')
  ((avail_kb >= 5 * 1024 * 1024)) ||
    die "only $((avail_kb / 1024)) MB free under $root; a build needs ~5 GB (source tree, Go build cache, bundle)"

  ensure_packages "${BUILD_PACKAGES[@]}"
  [[ -x /usr/lib/go/bin/go ]] || die "/usr/lib/go/bin/go is missing although golang-go is installed"

  work=$root/work
  mkdir -p "$work/logs" "$work/download" "$work/home" "$work/out" "$root/go-build"
  log=$work/logs
  staging=$(mktemp -d "$root/.staging.$key.XXXXXX")
  umask 022

  # --- 1. source
  # apt downloads as the unprivileged _apt user when it can write the target.
  if id _apt >/dev/null 2>&1; then chown _apt "$work/download"; fi
  run_step "apt-get source --download-only $SOURCE_PACKAGE=$src_version" "$log/download.log" 900 \
    bash -c 'cd "$1" && shift && exec apt-get "$@"' _ "$work/download" \
    "${apt_opts[@]}" source --download-only "$SOURCE_PACKAGE=$src_version"
  [[ -f $work/download/$dsc_name ]] || die "apt-get source did not leave $dsc_name in $work/download"
  [[ $(sha256sum <"$work/download/$dsc_name" | cut -d' ' -f1) == "$dsc_sha256" ]] ||
    die "$dsc_name does not have the sha256 the archive's index lists ($dsc_sha256)"
  orig_sha256=$(awk '/^Checksums-Sha256:/ { on = 1; next } /^[^ ]/ { on = 0 } on && $3 ~ /\.orig\.tar\./ { print $1 }' \
    "$work/download/$dsc_name")

  tree=$work/gopath/src/k8s.io/kubernetes
  mkdir -p "${tree%/*}"
  # dpkg-source verifies the files' checksums against the .dsc (apt has
  # checked the .dsc against the signed index) and applies debian/patches.
  run_step "dpkg-source -x (unpack, apply Debian patches)" "$log/unpack.log" 600 \
    dpkg-source -x "$work/download/$dsc_name" "$tree"

  # --- version stamps, the way hack/lib/version.sh computes them for a tree
  # exported with `git archive` (the tarball): the commit and tag are baked
  # into version.sh itself.
  git_commit=$(sed -n "s/^ *KUBE_GIT_COMMIT='\([0-9a-f]\{40\}\)'.*/\1/p" "$tree/hack/lib/version.sh" | head -n 1)
  kube_version=$(sed -n "s/.*if \[\[ 'tag: \(v[0-9][^' ,]*\)'.*/\1/p" "$tree/hack/lib/version.sh" | head -n 1)
  [[ -n $git_commit && -n $kube_version ]] ||
    die "could not read the upstream commit/version from $tree/hack/lib/version.sh"
  [[ $kube_version == "$KUBE_VERSION_EXPECTED" ]] ||
    die "the source package holds Kubernetes $kube_version, not $KUBE_VERSION_EXPECTED; update KUBE_VERSION_EXPECTED (and RECIPE) in $script if that is intended"
  kube_major=${kube_version#v}
  kube_major=${kube_major%%.*}
  kube_minor=${kube_version#v*.}
  kube_minor=${kube_minor%%.*}
  epoch=$(dpkg-parsechangelog -l "$tree/debian/changelog" -STimestamp)
  build_date=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
  for vpkg in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
    ldflags+=" -X $vpkg.gitVersion=$kube_version -X $vpkg.gitMajor=$kube_major -X $vpkg.gitMinor=$kube_minor"
    ldflags+=" -X $vpkg.gitCommit=$git_commit -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=$build_date"
  done
  msg "Kubernetes $kube_version (upstream commit $git_commit), build date $build_date"

  # --- 2. Go environment: Debian's Go first in PATH, nothing from the
  # caller's Go settings, GOPATH mode, no network.
  local -a go_env=(env -u GOROOT -u GOBIN -u GOOS -u GOARCH -u GOAMD64 -u GOEXPERIMENT -u GOWORK -u GCCGO
    "PATH=/usr/lib/go/bin:$PATH" "GOPATH=$work/gopath" GO111MODULE=off GOENV=off GOPROXY=off GOFLAGS=
    "GOCACHE=$root/go-build" CGO_ENABLED=0 "HOME=$work/home" LC_ALL=C TZ=UTC "SOURCE_DATE_EPOCH=$epoch")
  go_version=$("${go_env[@]}" go version | awk '{ print $3 }')
  # The build scripts point GOCACHE at _output/local/go/cache whatever we
  # set; a symlink lets the generators' compiles use our persistent cache
  # instead of filling (and later deleting) a second one in the work dir. The
  # step's time is mostly the generators running over the tree, though.
  mkdir -p "$tree/_output/local/go"
  ln -s "$root/go-build" "$tree/_output/local/go/cache"

  run_step "make generated_files (builds the code generators, writes openapi etc.)" "$log/generated_files.log" 3600 \
    "${go_env[@]}" make -C "$tree" generated_files
  local -a pkgs=()
  for b in "${BINARIES[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  run_step "go build ${BINARIES[*]} ($go_version, CGO_ENABLED=0)" "$log/go-build.log" 7200 \
    "${go_env[@]}" bash -c 'cd "$1" && shift && exec go "$@"' _ "$tree" \
    build -trimpath -tags selinux,notest -ldflags "$ldflags" -o "$work/out/" "${pkgs[@]}"
  for b in "${BINARIES[@]}"; do
    out=$("$work/out/$b" --version 2>&1) || die "$work/out/$b --version failed: $out"
    [[ $out == "Kubernetes $kube_version" ]] || die "$work/out/$b --version says '$out', expected 'Kubernetes $kube_version'"
    mv -- "$work/out/$b" "$staging/$b"
  done
  msg "binaries report 'Kubernetes $kube_version'"

  # --- 3. pause image, with the CFLAGS of build/pause/Makefile. Upstream's
  # VERSION is v$(TAG)-$(git describe --contains), i.e. v3.4-v1.20.2 here.
  pause_tag=$(sed -n 's/^TAG *= *\([0-9.]*\) *$/\1/p' "$tree/build/pause/Makefile" | head -n 1)
  [[ -n $pause_tag ]] || die "no TAG in $tree/build/pause/Makefile"
  mkdir -p "$work/pause-rootfs"
  run_step "gcc -static pause.c (pause $pause_tag)" "$log/pause.log" 300 \
    bash -c 'gcc -Os -Wall -Werror -static "-DVERSION=v$1-$2" -o "$3" "$4" && strip "$3"' _ \
    "$pause_tag" "$kube_version" "$work/pause-rootfs/pause" "$tree/build/pause/linux/pause.c"
  out=$("$work/pause-rootfs/pause" -v) || die "$work/pause-rootfs/pause -v failed"
  msg "pause -v: $out"
  chmod 0755 "$work/pause-rootfs" "$work/pause-rootfs/pause"
  pause_image=$IMAGE_REGISTRY/pause:$pause_tag
  docker_archive "$staging/pause.tar" "$pause_image" "$work/pause-rootfs" '{"Entrypoint":["/pause"]}'
  pause_config=$image_config_digest
  printf '%s\n' "$pause_image" >"$staging/pause-image"

  # --- 4. test image: static busybox, every applet a symlink in /bin.
  bb=$(dpkg-query -L busybox-static | grep -E '^(/usr)?/bin/busybox$' | head -n 1) ||
    die "busybox-static ships no /bin/busybox?"
  bb_version=$(dpkg-query -W -f='${Version}' busybox-static)
  bb_tag=${bb_version#*:}
  bb_tag=${bb_tag%%-*}
  local rootfs=$work/busybox-rootfs applet
  mkdir -p "$rootfs"/{bin,etc,root,tmp}
  cp -- "$bb" "$rootfs/bin/busybox"
  "$rootfs/bin/busybox" --list >"$work/applets" || die "$bb --list failed"
  while read -r applet; do
    [[ -n $applet && $applet != busybox && $applet != */* ]] || continue
    ln -s busybox "$rootfs/bin/$applet"
  done <"$work/applets"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$rootfs/etc/group"
  chmod 0755 "$rootfs" "$rootfs/bin" "$rootfs/etc" "$rootfs/bin/busybox"
  chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"
  chmod 0700 "$rootfs/root"
  chmod 1777 "$rootfs/tmp"
  test_image=$IMAGE_REGISTRY/busybox:$bb_tag
  docker_archive "$staging/test-image.tar" "$test_image" "$rootfs" \
    '{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]}'
  test_config=$image_config_digest
  printf '%s\n' "$test_image" >"$staging/test-image"
  msg "images: $pause_image ($pause_config), $test_image ($test_config, $(find "$rootfs/bin" -type l | wc -l) applets)"

  # --- 5. describe the bundle; MANIFEST last (bundle_complete checks it).
  printf '%s\n' "$kube_version" >"$staging/VERSION"
  (cd "$staging" && sha256sum -- "${BINARIES[@]}" pause.tar test-image.tar) >"$staging/SHA256SUMS"
  cat >"$staging/MANIFEST.tmp" <<EOF
# hakube kube bundle, made by scripts/$prog. Check the files: sha256sum -c SHA256SUMS
kubernetes_version=$kube_version
kubernetes_git_commit=$git_commit
build_date=$build_date
debian_source_package=$SOURCE_PACKAGE
debian_source_version=$src_version
debian_source_dsc_sha256=$dsc_sha256
debian_source_orig_sha256=$orig_sha256
debian_mirror=$apt_mirror
recipe=$RECIPE
cache_key=$key
go=$go_version (golang-go $(dpkg-query -W -f='${Version}' golang-go))
go_build_flags=-trimpath -tags selinux,notest -ldflags '-s -w -buildid=' + version stamps, CGO_ENABLED=0
gcc=$(gcc -dumpfullversion) (gcc $(dpkg-query -W -f='${Version}' gcc), libc6-dev $(dpkg-query -W -f='${Version}' libc6-dev))
busybox_static=$bb_version
pause_image=$pause_image
pause_image_config=$pause_config
test_image=$test_image
test_image_config=$test_config
built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
built_on=$(uname -srm)
EOF
  mv -- "$staging/MANIFEST.tmp" "$staging/MANIFEST"
  chmod -R a+rX "$staging"
  chmod 0755 "$staging"

  # --- 6. into place: one rename is the commit point.
  if [[ -e $root/$key ]]; then
    # --rebuild: move the old bundle out of the way first (there is a short
    # window without a bundle; readers then wait for the lock and find it).
    mv -T -- "$root/$key" "$root/.staging.old.$key.$$"
    mv -T -- "$staging" "$root/$key"
    rm -rf -- "$root/.staging.old.$key.$$"
  else
    mv -T -- "$staging" "$root/$key"
  fi
  staging=
  # Deleting the tree's ~30000 files takes from seconds to a minute, depending
  # on the disk (online discard) and on other I/O.
  local t_rm=$SECONDS
  rm -rf -- "$work"
  work=
  msg "removed the work dir in $(fmt_duration $((SECONDS - t_rm)))"
  msg "bundle built in $(fmt_duration $((SECONDS - t_build))): $root/$key ($(du -sh -- "$root/$key" | cut -f1))"
}

# ---------------------------------------------------------------------------
# --verify: a throwaway containerd

verify_dir=
verify_pid=
verify_sock=

# vctr SECONDS ARGS...: ctr against the throwaway containerd, bounded.
vctr() {
  local limit=$1
  shift
  timeout -k 5 "$limit" ctr --address "$verify_sock" --namespace k8s.io "$@"
}

# Stops what verify_bundle started: tasks, containerd, its shims, mounts.
verify_cleanup() {
  local dir=$verify_dir pid i cmdline id m
  verify_dir=
  if [[ -n $verify_pid ]] && kill -0 "$verify_pid" 2>/dev/null; then
    for id in $(vctr 10 tasks ls -q 2>/dev/null); do
      vctr 10 tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
      vctr 10 tasks delete -f "$id" >/dev/null 2>&1 || true
    done
    kill -TERM "$verify_pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      kill -0 "$verify_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$verify_pid" 2>/dev/null || true
    wait "$verify_pid" 2>/dev/null || true
  fi
  verify_pid=
  # Shims outlive containerd; ours are the ones given our socket's address.
  for cmdline in /proc/[0-9]*/cmdline; do
    pid=${cmdline#/proc/}
    pid=${pid%/cmdline}
    if tr '\0' '\n' <"$cmdline" 2>/dev/null | grep -qxF -- "$verify_sock"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  # Overlay mounts of snapshots/rootfs, deepest first.
  local -a mounts=()
  mapfile -t mounts < <(awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  for m in "${mounts[@]}"; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  if ((${run_containerd_created:-0})); then
    rmdir /run/containerd/s /run/containerd/fifo /run/containerd 2>/dev/null || true
  fi
  if awk -v d="$dir/" 'index($5, d) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
    msg "warning: mounts remain under $dir; not removing it"
  else
    rm -rf -- "$dir"
  fi
}

verify_bundle() {
  local bundle=$1 t0=$SECONDS i out id cfg pause_ref test_ref
  ensure_packages "${VERIFY_PACKAGES[@]}"
  pause_ref=$(<"$bundle/pause-image")
  test_ref=$(<"$bundle/test-image")
  msg "verify: sha256sum -c SHA256SUMS"
  (cd "$bundle" && sha256sum --quiet -c SHA256SUMS) || die "verify: $bundle does not match its SHA256SUMS; delete it and re-run"

  # A short path: the socket's path must fit in 108 bytes.
  verify_dir=$(mktemp -d /tmp/kb-verify.XXXXXX)
  verify_sock=$verify_dir/containerd.sock
  cfg=$verify_dir/config.toml
  # The CRI plugin is off (no CNI, no streaming port), and so is the "opt"
  # plugin, which would write /opt/containerd.
  cat >"$cfg" <<EOF
version = 2
root = "$verify_dir/root"
state = "$verify_dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$verify_sock"
[ttrpc]
  address = "$verify_dir/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
EOF
  # containerd 1.6 puts shim sockets in /run/containerd/s whatever its
  # config says; when this run creates /run/containerd, it removes it again.
  run_containerd_created=0
  [[ -e /run/containerd ]] || run_containerd_created=1
  msg "verify: starting a throwaway containerd in $verify_dir"
  # 9>&-: containerd must not hold our build lock.
  containerd --config "$cfg" >"$verify_dir/containerd.log" 2>&1 </dev/null 9>&- &
  verify_pid=$!
  for ((i = 0; i < 300; i++)); do
    if [[ -S $verify_sock ]] && timeout 5 ctr --address "$verify_sock" version >/dev/null 2>&1; then break; fi
    kill -0 "$verify_pid" 2>/dev/null || {
      tail -n 20 "$verify_dir/containerd.log" | sed 's/^/    /' >&2
      die "verify: containerd exited at startup (log above)"
    }
    sleep 0.1
  done
  ((i < 300)) || die "verify: containerd's socket $verify_sock did not answer within 30 s (log: $verify_dir/containerd.log)"

  for f in pause.tar test-image.tar; do
    out=$(vctr 120 images import "$bundle/$f" 2>&1) ||
      die "verify: ctr images import $bundle/$f failed: $out"
  done
  out=$(vctr 30 images ls)
  printf '%s\n' "$out" | sed 's/^/    /' >&2
  for ref in "$pause_ref" "$test_ref"; do
    awk -v r="$ref" '$1 == r { found = 1 } END { exit !found }' <<<"$out" ||
      die "verify: $ref is not listed after the import"
  done

  # runc's state and ctr's stdio FIFOs stay under our dir; --cgroup "" lets
  # runc use a cgroup named after the container, which it removes again (the
  # default, /k8s.io/<id>, would leave k8s.io parents behind).
  id=kb-verify-$$
  local -a run_opts=(--runc-root "$verify_dir/runc" --fifo-dir "$verify_dir/fifo" --cgroup "")
  out=$(vctr 60 run --rm "${run_opts[@]}" "$test_ref" "$id" sh -c 'echo ok' 2>&1) ||
    die "verify: ctr run $test_ref failed: $out"
  [[ $out == ok ]] || die "verify: ctr run $test_ref sh -c 'echo ok' printed '$out'"
  msg "verify: $test_ref runs: sh -c 'echo ok' -> $out"

  out=$(vctr 60 run -d "${run_opts[@]}" "$pause_ref" "$id-pause" 2>&1) ||
    die "verify: ctr run -d $pause_ref failed: $out"
  for ((i = 0; i < 100; i++)); do
    out=$(vctr 10 tasks ls 2>&1 | awk -v id="$id-pause" '$1 == id { print $3 }')
    [[ $out == RUNNING ]] && break
    sleep 0.1
  done
  [[ $out == RUNNING ]] || die "verify: $pause_ref did not reach RUNNING within 10 s (state '$out')"
  vctr 10 tasks kill -s SIGTERM "$id-pause" >/dev/null
  for ((i = 0; i < 100; i++)); do
    out=$(vctr 10 tasks ls 2>&1 | awk -v id="$id-pause" '$1 == id { print $3 }')
    [[ $out == STOPPED ]] && break
    sleep 0.1
  done
  [[ $out == STOPPED ]] || die "verify: $pause_ref did not stop on SIGTERM within 10 s (state '$out')"
  vctr 10 tasks delete "$id-pause" >/dev/null
  vctr 10 containers delete "$id-pause" >/dev/null
  msg "verify: $pause_ref runs and stops on SIGTERM"

  verify_cleanup
  msg "verify: ok ($(fmt_duration $((SECONDS - t0))))"
}

# ---------------------------------------------------------------------------
# Main

# Defined whole and called on the last line, so that bash has parsed the
# script before running it (editing it during a build is then harmless).
main() {
  verify=0 refresh=0 rebuild=0
  while (($#)); do
    case "$1" in
      -h | --help)
        usage
        exit 0
        ;;
      --verify) verify=1 ;;
      --refresh) refresh=1 ;;
      --rebuild) rebuild=1 ;;
      *)
        usage
        die "unknown argument '$1'"
        ;;
    esac
    shift
  done

  lock_wait=${HAKUBE_KUBE_BUNDLE_LOCK_WAIT:-3600}
  [[ $lock_wait =~ ^[0-9]+$ ]] || die "HAKUBE_KUBE_BUNDLE_LOCK_WAIT must be a number of seconds (got '$lock_wait')"

  # stdout carries only the bundle path: keep it on fd 3 and send everything
  # else, including any stray output of the commands below, to stderr.
  exec 3>&1 1>&2

  cache_dir=${HAKUBE_CACHE_DIR:-/var/cache/hakube}
  cache_dir=$(realpath -m -- "$cache_dir")
  root=$cache_dir/kube-bundle
  index_file=$root/index-r$RECIPE

  # On a terminal, --foreground lets Ctrl-C reach the command; otherwise timeout
  # runs it in its own process group, so a timeout stops all of its children.
  timeout_args=(-k 30)
  [[ -t 0 ]] && timeout_args=(--foreground -k 30)

  t_start=$SECONDS

  # The fast path: no root, no lock (bundles appear by rename), no network.
  if ((!refresh && !rebuild && !verify)); then
    if bundle=$(cached_bundle); then
      msg "cache hit: $bundle"
      finish "$bundle"
    fi
  fi

  if [[ $EUID -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
      if ((verify)); then
        die "--verify runs a throwaway containerd, which needs root, and sudo is not installed: run this as root"
      fi
      die "building the bundle installs Debian packages and writes $cache_dir, which needs root, and sudo is not installed: run this as root"
    fi
    env_args=()
    for var in HAKUBE_DEBIAN_MIRROR HAKUBE_KUBE_BUNDLE_LOCK_WAIT TMPDIR; do
      [[ -n ${!var:-} ]] && env_args+=("$var=${!var}")
    done
    # Hand the original stdout back to the re-run.
    args=()
    ((verify)) && args+=(--verify)
    ((refresh)) && args+=(--refresh)
    ((rebuild)) && args+=(--rebuild)
    msg "no usable cached bundle (or an option needs root); re-running with sudo"
    exec sudo -- env "HAKUBE_CACHE_DIR=$cache_dir" "${env_args[@]}" bash "$script" "${args[@]}" 1>&3 3>&-
  fi

  mkdir -p "$root"
  exec 9>>"$root/.lock"
  if ! flock -n 9; then
    msg "another run holds $root/.lock (building?); waiting up to $(fmt_duration "$lock_wait")"
    flock -w "$lock_wait" 9 || die "$root/.lock still held after $(fmt_duration "$lock_wait"): is another kube-bundle.sh stuck? (see its work dir $root/work)"
  fi

  # Someone else may have built it while we waited.
  if ((!refresh && !rebuild)); then
    if bundle=$(cached_bundle); then
      msg "cache hit: $bundle"
      finish "$bundle"
    fi
  fi

  resolve_source
  if ((!rebuild)) && bundle_complete "$root/$key"; then
    write_index "$key"
    msg "cache hit after resolving the source: $root/$key"
    finish "$root/$key"
  fi

  if ((rebuild)); then
    msg "--rebuild: building $root/$key again (work dir $root/work)"
  else
    msg "cache miss: building $root/$key (work dir $root/work)"
  fi
  build_bundle
  write_index "$key"
  msg "done in $(fmt_duration $((SECONDS - t_start)))"
  finish "$root/$key"
}

main "$@"
