#!/usr/bin/env bash
#
# Builds (or finds in its cache) a bundle of a current Kubernetes stack made
# from Go modules, and prints the bundle directory's absolute path as the only
# line on stdout:
#
#   BUNDLE=$(scripts/kube-bundle.sh)
#   ls "$BUNDLE"   # kube-apiserver kube-controller-manager kube-scheduler kubelet
#                  # kube-proxy kubectl etcd etcdctl etcdutl containerd ctr
#                  # containerd-shim-runc-v2 runc coredns local-path-provisioner
#                  # pause.tar pause-image test-image.tar test-image
#                  # coredns.tar coredns-image
#                  # local-path-provisioner.tar local-path-provisioner-image
#                  # cni/{bridge,host-local,loopback,portmap}
#                  # VERSION MANIFEST SHA256SUMS
#
# Everything else (progress, step durations, errors) goes to stderr.
#
# Why Go modules: Kubernetes 1.20 (what Debian 12's source package holds) is
# long out of support, and so are the etcd 3.4 and containerd 1.6 that came
# with it. The machines that build hakube reach the Go module proxy but no
# image registry, no dl.k8s.io and no GitHub releases. Every component of a
# current stack is a Go module there, the proxy's checksum database vouches
# for each module's content, and since Kubernetes commits its generated code
# (1.20 still needed `make generated_files`), a module builds as it is.
#
# Recipe (build_bundle below), one throwaway wrapper module per component, in
# the work dir, so that no component moves another's shared dependencies
# (containerd and CoreDNS require other k8s.io releases than Kubernetes):
#   1. Kubernetes (default v1.37.2; --kubernetes-version picks another):
#      `go mod download -json k8s.io/kubernetes@vX` gives upstream's go.mod.
#      The wrapper copies its `go` and `godebug` lines (godebug only counts in
#      the main module), requires k8s.io/kubernetes vX and replaces every
#      module upstream maps `=> ./staging/...` with its published tag
#      v0.<minor>.<patch> (upstream requires them at v0.0.0, which only its
#      own replaces resolve; `go install ...@vX` refuses modules with
#      replaces). The list is read from upstream's go.mod, never written
#      here. `go mod tidy` resolves the graph; nothing is upgraded (no
#      `go get -u`: newer k8s.io dependencies than upstream's need a newer Go).
#      One `go build -tags providerless` (legacy cloud providers left out) of
#      the six commands, CGO_ENABLED=0, with the version variables that
#      hack/lib/version.sh sets, in both k8s.io/component-base/version and
#      k8s.io/client-go/pkg/version: `kubelet --version` says "Kubernetes vX".
#      gitCommit is the module's Origin.Hash when the proxy gives one, else
#      "unknown"; buildDate is the time the proxy records for the version.
#   2. etcd server, etcdctl, etcdutl: a wrapper requiring the three modules at
#      one tag (their own go.mods replace the shared api/client/pkg modules
#      with ../ paths; the wrapper has no replaces, so the published tags of
#      those are used). Outputs named with -o (the packages end in /v3).
#   3. containerd, ctr, containerd-shim-runc-v2 (the shim with upstream's
#      extra tag no_grpc), with containerd's version variables.
#   4. runc: cgo for seccomp, linked statically against Debian's libseccomp.a
#      and glibc (tags seccomp netgo osusergo: no NSS lookups at run time).
#   5. CoreDNS (tag grpcnotrace, as upstream's Makefile) and
#      local-path-provisioner. The latter at v0.0.30: it is the only version
#      the Go module proxy serves here (v0.0.37 is not served).
#   6. The CNI plugins hakube's network config uses (bridge, host-local,
#      loopback, portmap) from github.com/containernetworking/plugins, into
#      cni/: a host without Debian's containernetworking-plugins (an airgap
#      host) has them from the bundle.
#   7. Images, each a one-layer docker-archive tar (manifest.json, config, one
#      layer.tar) that `ctr images import` accepts, named hakube.local/...:
#      pause (build/pause/linux/pause.c from the Kubernetes module, gcc -Os
#      -static as upstream's Makefile, tag = that Makefile's TAG); the test
#      image (Debian's static busybox plus one symlink per applet); coredns
#      and local-path-provisioner (the static binary at /<name>, its
#      Entrypoint). Tars are reproducible: sorted entries, mtime = the
#      Kubernetes version's time, owner 0:0 numeric.
#   All Go binaries are static (CGO_ENABLED=0, except runc) and built with
#   GOTOOLCHAIN=local (the machine's Go, at least 1.26; nothing is fetched)
#   and -trimpath, stripped (-s -w).
#
# Cache and its key. The bundle lives in
#   ${HAKUBE_CACHE_DIR:-/var/cache/hakube}/kube-bundle/<kubernetes version>_r<RECIPE>/
# (e.g. v1.37.2_r3). The module versions of the other components are
# constants below, part of the recipe: bump RECIPE when any of them or
# anything else that ends up in a bundle changes. Go modules are immutable
# (the checksum database sees to that), so a key needs no resolution: a cache
# hit is a few stat calls, without the network, root or Go. The toolchain
# (Go, gcc, busybox-static, libseccomp) is the machine's, not part of the key;
# its versions are in MANIFEST, --refresh builds again when they differ from
# the machine's, --rebuild builds again anyway.
#
# The modules go to the machine's own Go module cache (`go env GOMODCACHE`,
# ~4 GB: the module zips and their sources), shared with any other Go work
# there, so a module is fetched once per machine; next to the bundles,
# kube-bundle/go-build is Go's build cache (GOCACHE, ~6 GB, ~4 GB more for
# each other Kubernetes version). Both are kept between builds: with them
# warm a build takes 1-2 minutes (mostly linking), cold on 2 cores 15 to 45
# minutes depending on the CPU (measured: Kubernetes alone 10 to 33 minutes,
# the whole bundle 15m30s to 17m22s on a faster machine). Both are safe to
# delete.
#
# A bundle is complete by construction: it is built in a hidden staging dir
# (.staging.*) next to it and renamed into place as the last step. A build
# stopped by INT/TERM/HUP stops its current step and removes the staging dir;
# one killed outright leaves it for the next build to remove; either way the
# work dir (kube-bundle/work, with the wrapper modules and logs/) stays until
# the next build. Builds take a flock so that concurrent runs build once; the
# loser waits and then finds the bundle.
#
# shellcheck disable=SC2016  # the single-quoted `bash -c` scripts expand their own "$1"
set -euo pipefail

prog=kube-bundle.sh
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

# Bump when anything below changes what ends up in a bundle. (1 was the
# Kubernetes 1.20.2 bundle built from Debian's source package; 3 added the
# CNI plugins.)
readonly RECIPE=3
# The default Kubernetes version; --kubernetes-version builds another.
readonly KUBE_VERSION_DEFAULT=v1.37.2
# The minor before it, which the upgrade test starts from (--previous).
readonly KUBE_VERSION_PREVIOUS=v1.36.3
# The other components' module versions (part of the recipe).
readonly ETCD_VERSION=v3.6.17
readonly CONTAINERD_VERSION=v2.3.7
readonly RUNC_VERSION=v1.4.4
readonly COREDNS_VERSION=v1.14.7
# Not the newest release (v0.0.37): v0.0.30 is the only one the module proxy serves.
readonly LOCAL_PATH_VERSION=v0.0.30
readonly CNI_PLUGINS_VERSION=v1.10.0
# The oldest Go that builds all of the above (Kubernetes 1.36/1.37 say go 1.26.0).
readonly GO_MIN_MINOR=26
readonly IMAGE_REGISTRY=hakube.local

readonly KUBE_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
readonly BINARIES=("${KUBE_BINARIES[@]}" etcd etcdctl etcdutl containerd ctr containerd-shim-runc-v2 runc coredns local-path-provisioner)
readonly IMAGES=(pause test-image coredns local-path-provisioner)
# The CNI plugins hakube's network config uses (src/preflight.rs CNI_PLUGINS),
# in the bundle's cni/ directory: containerd finds them by these names.
readonly CNI_PLUGINS=(bridge host-local loopback portmap)
# Files a complete bundle has (each image: NAME.tar and NAME-image, except
# the test image's name file, which is called test-image).
readonly BUNDLE_FILES=("${BINARIES[@]}" "${CNI_PLUGINS[@]/#/cni/}" pause.tar pause-image test-image.tar test-image
  coredns.tar coredns-image local-path-provisioner.tar local-path-provisioner-image VERSION MANIFEST SHA256SUMS)
# Debian packages the build needs: gcc and libc6-dev for the static pause
# (gcc -static needs libc.a; --no-install-recommends would not bring it) and
# for runc's cgo; libseccomp-dev (with libseccomp.a) and pkg-config for runc;
# binutils for strip and readelf; busybox-static for the test image.
readonly BUILD_PACKAGES=(gcc libc6-dev binutils libseccomp-dev pkg-config busybox-static)
# The machine's toolchain as MANIFEST records it (--refresh compares).
readonly TOOLCHAIN_PACKAGES=(gcc libc6-dev libseccomp-dev busybox-static)

usage() {
  cat >&2 <<EOF
usage: scripts/$prog [--kubernetes-version VERSION] [--verify] [--refresh] [--rebuild]

Prints the absolute path of a bundle directory holding, built from Go modules
with this machine's Go (1.$GO_MIN_MINOR or newer) through the Go module proxy:
  Kubernetes $KUBE_VERSION_DEFAULT: ${KUBE_BINARIES[*]}
  etcd $ETCD_VERSION: etcd etcdctl etcdutl
  containerd $CONTAINERD_VERSION: containerd ctr containerd-shim-runc-v2; runc $RUNC_VERSION
  CoreDNS $COREDNS_VERSION: coredns; local-path-provisioner $LOCAL_PATH_VERSION
and image archives for \`ctr images import\` (their refs are in the files named
after them): pause.tar (pause-image), test-image.tar (test-image, busybox),
coredns.tar (coredns-image), local-path-provisioner.tar
(local-path-provisioner-image); plus VERSION, MANIFEST and SHA256SUMS.
Builds the bundle the first time; later runs reuse it at no cost. A cold
build (empty Go caches) takes 15 to 45 minutes on 2 cores and ~12 GB of
disk; with warm caches 1-2 minutes. Only the path goes to stdout.

Building needs root (package installs); the script re-runs itself with sudo
when needed. A cache hit needs neither root nor the network nor Go.

  --kubernetes-version VERSION
              build (or find) Kubernetes VERSION (e.g. 1.36.3 or v1.36.3)
              instead of $KUBE_VERSION_DEFAULT; each version has its own bundle.
              The module proxy must serve k8s.io/kubernetes VERSION and its
              staging modules at v0.MINOR.PATCH.
  --previous  the same as --kubernetes-version $KUBE_VERSION_PREVIOUS, the minor
              before the default (what the upgrade test starts from).
  --verify    also check SHA256SUMS and \`kubectl version --client\`, and import
              every archive into a throwaway containerd started from the
              bundle's own containerd with the bundle's runc (its own root,
              state and sockets under /tmp; never the system's), run
              'sh -c "echo ok"' in the test image, the coredns and
              local-path-provisioner images' version commands, and start/stop
              pause.
  --refresh   build again when the machine's toolchain (Go, gcc, libc6-dev,
              libseccomp-dev, busybox-static) differs from the one the cached
              bundle's MANIFEST records.
  --rebuild   build again even if the bundle exists (replaces it).
  -h, --help  this text.

Environment:
  HAKUBE_CACHE_DIR            cache root (default /var/cache/hakube); the
                              bundles are in \$HAKUBE_CACHE_DIR/kube-bundle/
  HAKUBE_GO                   the go command to use (default: go on PATH,
                              else /usr/local/go/bin/go)
  HAKUBE_KUBE_BUNDLE_LOCK_WAIT seconds to wait for another run's build
                              (default 3600)
  GOPROXY, GONOSUMDB, ...     Go's own settings are honoured (and passed on
                              through sudo), except the ones that shape the
                              build (GOFLAGS, GOTOOLCHAIN, GOOS, GOARCH, ...).

Disk: each bundle is ~900 MB; the modules (~4 GB, in Go's own module cache,
\`go env GOMODCACHE\`) and kube-bundle/go-build (Go's build cache, ~6 GB, ~4 GB
more per other Kubernetes version) are safe to delete; old bundles are not
pruned (delete their dirs).
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
# What run_step adds to a failure's message (cleared after each step).
step_hint=
# "duration  name" of each step of this run, for the summary at the end.
step_times=()
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
  local name=$1 log=$2 limit=$3 t0=$SECONDS rc=0 d
  shift 3
  msg "$name ..."
  printf '==> %s: %s\n' "$name" "$*" >>"$log"
  timeout "${timeout_args[@]}" "$limit" "$@" >>"$log" 2>&1 </dev/null &
  step_pid=$!
  wait "$step_pid" || rc=$?
  step_pid=
  d=$(fmt_duration $((SECONDS - t0)))
  if ((rc != 0)); then
    local why="exit $rc"
    ((rc == 124)) && why="timed out after $(fmt_duration "$limit")"
    msg "$name FAILED ($why) after $d; last lines of $log:"
    tail -n 30 -- "$log" | sed 's/^/    /' >&2
    [[ -z $step_hint ]] || msg "$step_hint"
    die "step '$name' failed; full log: $log"
  fi
  step_hint=
  step_times+=("$(printf '%7s  %s' "$d" "$name")")
  msg "$name: done in $d"
}

pkg_installed() {
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

# ensure_packages PKG...: apt-get installs the ones that are not installed.
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

# normalize_kube_version V: prints vX.Y.Z[-pre] for X.Y.Z[-pre] or vX.Y.Z[-pre].
normalize_kube_version() {
  local v=${1#v}
  [[ $v =~ ^1\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$ ]] ||
    die "--kubernetes-version '$1' is not a Kubernetes release version like 1.37.2 or v1.36.3"
  printf 'v%s\n' "$v"
}

# ---------------------------------------------------------------------------
# Go

# Sets go_bin to the go command: $HAKUBE_GO, else go on PATH, else Go's
# official install location. Fails when there is none or it is too old.
find_go() {
  local v minor
  go_bin=${HAKUBE_GO:-}
  if [[ -z $go_bin ]]; then
    go_bin=$(command -v go 2>/dev/null) || go_bin=
    [[ -n $go_bin ]] || [[ ! -x /usr/local/go/bin/go ]] || go_bin=/usr/local/go/bin/go
  fi
  [[ -n $go_bin ]] ||
    die "go not found (not on PATH, not /usr/local/go/bin/go): install Go 1.$GO_MIN_MINOR or newer (https://go.dev/dl/, or a golang-1.$GO_MIN_MINOR backport), or set HAKUBE_GO to its go command"
  go_bin=$(readlink -f -- "$(command -v -- "$go_bin")") || die "$go_bin (HAKUBE_GO or go on PATH) is not a command"
  v=$(GOTOOLCHAIN=local "$go_bin" env GOVERSION 2>/dev/null) || die "'$go_bin env GOVERSION' failed: is $go_bin a working Go?"
  # go1.26.8, go1.27rc1, devel ...
  minor=${v#go1.}
  minor=${minor%%[!0-9]*}
  if [[ $v != go1.* || -z $minor ]] || ((minor < GO_MIN_MINOR)); then
    die "$go_bin is $v; building the bundle needs Go 1.$GO_MIN_MINOR or newer (Kubernetes ${KUBE_VERSION_DEFAULT#v} says 'go 1.$GO_MIN_MINOR.0'): install a newer Go, or set HAKUBE_GO to one"
  fi
  go_version=$v
}

# json_field NAME: the first string field NAME of the indented JSON on stdin
# (go's -json output: one field per line).
json_field() { sed -n "s/^[[:space:]]*\"$1\": \"\\(.*\\)\",\\{0,1\\}\$/\\1/p" | head -n 1; }

# gomod_info DIR MODULE@VERSION: `go mod download -json` in wrapper DIR (which
# downloads the module into GOMODCACHE); sets mod_dir, mod_gomod, mod_time
# (the proxy's time for the version, RFC 3339 UTC), mod_hash (the commit if
# the proxy records the module's origin, else empty) and mod_sum. When the
# proxy does not serve the version, sets mod_err to its answer and fails.
gomod_info() {
  local dir=$1 modver=$2 json info rc=0
  mod_err=
  json=$("${go_env[@]}" "$go_bin" -C "$dir" mod download -json "$modver" 2>"$work/logs/download.err") || rc=$?
  if ((rc != 0)); then
    mod_err=$(json_field Error <<<"$json")
    mod_err=${mod_err//\\n/ }
    mod_err=${mod_err//\\t/}
    [[ -n $mod_err ]] || mod_err=$(tail -n 5 "$work/logs/download.err")
    return 1
  fi
  mod_dir=$(json_field Dir <<<"$json")
  mod_gomod=$(json_field GoMod <<<"$json")
  mod_sum=$(json_field Sum <<<"$json")
  info=$(json_field Info <<<"$json")
  mod_time=
  [[ -r $info ]] && mod_time=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info")
  mod_hash=$(json_field Hash <<<"$json")
  [[ -n $mod_hash || ! -r $info ]] || mod_hash=$(sed -n 's/.*"Hash":"\([0-9a-f]\{40\}\)".*/\1/p' "$info")
  if [[ ! -d $mod_dir || ! -r $mod_gomod ]]; then
    mod_err="go mod download -json $modver gave no Dir/GoMod: $json"
    return 1
  fi
}

# new_wrapper NAME: an empty main module in $work/mod/NAME; prints its dir.
new_wrapper() {
  local dir=$work/mod/$1
  mkdir -p "$dir"
  "${go_env[@]}" "$go_bin" -C "$dir" mod init "hakube.invalid/$1-build" >>"$work/logs/wrappers.log" 2>&1 ||
    die "go mod init in $dir failed (log: $work/logs/wrappers.log)"
  printf '%s\n' "$dir"
}

# gomod_edit DIR ARGS...: go mod edit in DIR.
gomod_edit() {
  local dir=$1
  shift
  "${go_env[@]}" "$go_bin" -C "$dir" mod edit "$@" >>"$work/logs/wrappers.log" 2>&1 ||
    die "go mod edit $* in $dir failed (log: $work/logs/wrappers.log)"
}

# tidy NAME DIR [WHAT-TO-DO]: the resolution step of a wrapper.
tidy() {
  step_hint="'go mod tidy' fails when the module proxy ($("${go_env[@]}" "$go_bin" env GOPROXY)) cannot be reached or does not serve a module version that $1 needs (the log names it); ${3:-the versions are constants in $script (bump RECIPE when changing them)}"
  run_step "go mod tidy ($1)" "$work/logs/tidy-$1.log" 1800 "${go_env[@]}" "$go_bin" -C "$2" mod tidy
}

# check_static FILE: no ELF interpreter, i.e. statically linked.
check_static() {
  if LC_ALL=C readelf -lW -- "$1" 2>/dev/null | grep -q 'Requesting program interpreter'; then
    die "$1 is dynamically linked; the bundle's binaries must be static"
  fi
}

# check_version FILE WANT ARGS...: FILE ARGS... prints WANT somewhere.
check_version() {
  local file=$1 want=$2 out
  shift 2
  out=$("$file" "$@" 2>&1) || die "'$file $*' failed: $out"
  [[ $out == *"$want"* ]] || die "'$file $*' says '$out', expected it to mention '$want'"
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
  printf '{"architecture":"%s","config":%s,"created":"%s","history":[{"created":"%s","created_by":"hakube scripts/%s"}],"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$goarch" "$config" "$created" "$created" "$prog" "$layer_sha" >"$dir/config.json"
  config_sha=$(sha256sum <"$dir/config.json" | cut -d' ' -f1)
  mv "$dir/config.json" "$dir/$config_sha.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
    "$config_sha" "$ref" "$layer_sha" >"$dir/manifest.json"
  chmod -R u=rwX,go=rX "$dir"
  reproducible_tar "$out" "$dir"
  rm -rf -- "$dir"
  image_config_digest=sha256:$config_sha
}

# binary_image NAME TAG: an image of the bundle's static binary NAME at
# /NAME, its Entrypoint, as NAME.tar with its ref in NAME-image.
binary_image() {
  local name=$1 tag=$2 rootfs=$work/$1-rootfs ref t0=$SECONDS
  ref=$IMAGE_REGISTRY/$name:$tag
  mkdir -p "$rootfs"
  cp -- "$staging/$name" "$rootfs/$name"
  chmod 0755 "$rootfs" "$rootfs/$name"
  docker_archive "$staging/$name.tar" "$ref" "$rootfs" "{\"Entrypoint\":[\"/$name\"]}"
  printf '%s\n' "$ref" >"$staging/$name-image"
  image_lines+=("$name-image $ref" "$name-image-config $image_config_digest")
  step_times+=("$(printf '%7s  %s' "$(fmt_duration $((SECONDS - t0)))" "image $ref")")
  msg "image $ref ($image_config_digest): done in $(fmt_duration $((SECONDS - t0)))"
}

# toolchain_lines: the machine's toolchain, one "name version" line each.
toolchain_lines() {
  local p
  printf 'go %s\n' "$go_version"
  for p in "${TOOLCHAIN_PACKAGES[@]}"; do
    printf '%s %s\n' "$p" "$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || echo none)"
  done
}

# toolchain_matches BUNDLE: the toolchain lines of its MANIFEST are the machine's.
toolchain_matches() {
  local line
  while read -r line; do
    grep -qxF -- "$line" "$1/MANIFEST" || {
      msg "--refresh: the machine has '$line', the bundle's MANIFEST does not"
      return 1
    }
  done < <(toolchain_lines)
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

# go_environment: sets go_env, the environment of every go command: the
# machine's proxy settings, this script's caches, and nothing of the
# caller's that shapes a build.
go_environment() {
  goarch=$(GOTOOLCHAIN=local "$go_bin" env GOHOSTARCH)
  gomodcache=$(GOTOOLCHAIN=local "$go_bin" env GOMODCACHE)
  [[ -n $gomodcache ]] || die "go env GOMODCACHE is empty: set GOMODCACHE or GOPATH"
  go_env=(env -u GOROOT -u GOBIN -u GOEXPERIMENT -u GCCGO -u CC -u CXX
    -u CGO_CFLAGS -u CGO_CPPFLAGS -u CGO_LDFLAGS -u CGO_CXXFLAGS -u GODEBUG
    "PATH=${go_bin%/*}:$PATH" GOTOOLCHAIN=local "GOFLAGS=-trimpath -modcacherw" GOWORK=off
    GOOS=linux "GOARCH=$goarch" GOAMD64=v1 CGO_ENABLED=0
    "GOMODCACHE=$gomodcache" "GOCACHE=$root/go-build" LC_ALL=C TZ=UTC)
}

# resolve_kubernetes: the Kubernetes wrapper module, up to `go mod tidy`
# (excluded); sets kube_* and the bundle's dates.
resolve_kubernetes() {
  local dir m go_line godebug b
  local -a replaces=() godebugs=()
  dir=$(new_wrapper k8s)
  kube_wrapper=$dir
  kube_staging_tag=v0.${kube_version#v1.}
  msg "asking the module proxy for k8s.io/kubernetes $kube_version"
  gomod_info "$dir" "k8s.io/kubernetes@$kube_version" ||
    die "the Go module proxy ($("${go_env[@]}" "$go_bin" env GOPROXY)) does not serve k8s.io/kubernetes $kube_version: $mod_err
  Pick a version it serves (list them: go list -m -versions k8s.io/kubernetes) and pass it as --kubernetes-version, or run without it for $KUBE_VERSION_DEFAULT."
  kube_dir=$mod_dir
  kube_sum=$mod_sum
  kube_commit=${mod_hash:-unknown}
  [[ $mod_time =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z$ ]] ||
    die "the proxy's .info for k8s.io/kubernetes $kube_version has no usable Time ('$mod_time')"
  epoch=$(date -u -d "$mod_time" +%s)
  build_date=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

  # Upstream's go.mod: its go and godebug lines, and what it maps to ./staging.
  go_line=$(sed -n 's/^go[[:space:]]\{1,\}\([0-9][0-9.]*\)[[:space:]]*$/\1/p' "$mod_gomod" | head -n 1)
  # godebug KEY=VALUE, or a godebug ( ... ) block of them.
  mapfile -t godebugs < <(awk '
    /^godebug[ \t]*\([ \t]*$/ { block = 1; next }
    block && /^[ \t]*\)/ { block = 0; next }
    block && NF { print $1; next }
    $1 == "godebug" && NF == 2 { print $2 }' "$mod_gomod")
  mapfile -t replaces < <(sed -n 's|^[[:space:]]*\(replace[[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]\{1,\}\)[[:space:]]\{1,\}=>[[:space:]]\{1,\}\./staging/.*|\2|p' "$mod_gomod")
  ((${#replaces[@]} > 0)) || die "k8s.io/kubernetes $kube_version's go.mod ($mod_gomod) maps nothing to ./staging/: has the module's layout changed?"
  [[ -n $go_line ]] || die "no go line in $mod_gomod"
  # GOTOOLCHAIN=local: a go line newer than the machine's Go cannot build.
  [[ $(printf '%s\n' "${go_version#go}" "$go_line" | sort -V | tail -n 1) == "${go_version#go}" ]] ||
    die "Kubernetes $kube_version needs Go $go_line or newer (its go.mod says 'go $go_line'); $go_bin is $go_version: install a newer Go (or set HAKUBE_GO to one), or pick another --kubernetes-version"
  local -a edits=("-go=$go_line" "-require=k8s.io/kubernetes@$kube_version")
  for godebug in "${godebugs[@]}"; do edits+=("-godebug=$godebug"); done
  for m in "${replaces[@]}"; do edits+=("-replace=$m=$m@$kube_staging_tag"); done
  for b in "${KUBE_BINARIES[@]}"; do edits+=("-tool=k8s.io/kubernetes/cmd/$b"); done
  gomod_edit "$dir" "${edits[@]}"
  msg "Kubernetes $kube_version: go $go_line${godebugs[*]:+, godebug ${godebugs[*]}}, ${#replaces[@]} staging modules at $kube_staging_tag, commit $kube_commit, build date $build_date"
}

# build_kubernetes: step 1 of the recipe, after resolve_kubernetes.
build_kubernetes() {
  local dir=$kube_wrapper log=$work/logs/build-kubernetes.log vpkg b out major minor
  local ldflags="-s -w"
  local -a cmds=()
  for b in "${KUBE_BINARIES[@]}"; do cmds+=("k8s.io/kubernetes/cmd/$b"); done
  tidy k8s "$dir" "a missing k8s.io/... module at ${kube_staging_tag} means the proxy lacks one of Kubernetes $kube_version's staging modules: pick another --kubernetes-version"

  major=${kube_version#v}
  major=${major%%.*}
  minor=${kube_version#v*.}
  minor=${minor%%.*}
  for vpkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $vpkg.gitVersion=$kube_version -X $vpkg.gitMajor=$major -X $vpkg.gitMinor=$minor"
    ldflags+=" -X $vpkg.gitCommit=$kube_commit -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=$build_date"
  done
  run_step "go build Kubernetes $kube_version (${KUBE_BINARIES[*]})" "$log" 10800 \
    "${go_env[@]}" "$go_bin" -C "$dir" build -tags providerless -ldflags "$ldflags" -o "$staging/" "${cmds[@]}"
  for b in "${KUBE_BINARIES[@]}"; do
    check_static "$staging/$b"
    if [[ $b == kubectl ]]; then
      check_version "$staging/$b" "Client Version: $kube_version" version --client
    else
      out=$("$staging/$b" --version 2>&1) || die "$staging/$b --version failed: $out"
      [[ $out == "Kubernetes $kube_version" ]] || die "$staging/$b --version says '$out', expected 'Kubernetes $kube_version'"
    fi
  done
  msg "Kubernetes binaries report $kube_version"
}

build_etcd() {
  local dir b ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION"
  dir=$(new_wrapper etcd)
  gomod_info "$dir" "go.etcd.io/etcd/server/v3@$ETCD_VERSION" ||
    die "the module proxy does not serve go.etcd.io/etcd/server/v3 $ETCD_VERSION: $mod_err"
  [[ -z $mod_hash ]] || ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${mod_hash:0:9}"
  gomod_edit "$dir" -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION" -require="go.etcd.io/etcd/etcdctl/v3@$ETCD_VERSION" \
    -require="go.etcd.io/etcd/etcdutl/v3@$ETCD_VERSION" \
    -tool=go.etcd.io/etcd/server/v3 -tool=go.etcd.io/etcd/etcdctl/v3 -tool=go.etcd.io/etcd/etcdutl/v3
  tidy etcd "$dir"
  run_step "go build etcd $ETCD_VERSION (etcd etcdctl etcdutl)" "$work/logs/build-etcd.log" 3600 \
    bash -c 'set -e; ld=$1 out=$2; shift 2
      "$@" build -ldflags "$ld" -o "$out/etcd" go.etcd.io/etcd/server/v3
      "$@" build -ldflags "$ld" -o "$out/etcdctl" go.etcd.io/etcd/etcdctl/v3
      "$@" build -ldflags "$ld" -o "$out/etcdutl" go.etcd.io/etcd/etcdutl/v3' _ \
    "$ldflags" "$staging" "${go_env[@]}" "$go_bin" -C "$dir"
  for b in etcd etcdctl etcdutl; do check_static "$staging/$b"; done
  check_version "$staging/etcd" "etcd Version: ${ETCD_VERSION#v}" --version
  check_version "$staging/etcdctl" "etcdctl version: ${ETCD_VERSION#v}" version
  check_version "$staging/etcdutl" "etcdutl version: ${ETCD_VERSION#v}" version
}

build_containerd() {
  local dir p=github.com/containerd/containerd/v2 ldflags b
  dir=$(new_wrapper containerd)
  gomod_info "$dir" "$p@$CONTAINERD_VERSION" || die "the module proxy does not serve $p $CONTAINERD_VERSION: $mod_err"
  ldflags="-s -w -X $p/version.Version=$CONTAINERD_VERSION -X $p/version.Package=$p -X $p/version.Revision=${mod_hash:-unknown}"
  gomod_edit "$dir" -require="$p@$CONTAINERD_VERSION" \
    -tool="$p/cmd/containerd" -tool="$p/cmd/ctr" -tool="$p/cmd/containerd-shim-runc-v2"
  tidy containerd "$dir"
  run_step "go build containerd $CONTAINERD_VERSION (containerd ctr containerd-shim-runc-v2)" "$work/logs/build-containerd.log" 3600 \
    bash -c 'set -e; ld=$1 out=$2 p=$3; shift 3
      "$@" build -tags urfave_cli_no_docs -ldflags "$ld" -o "$out/" "$p/cmd/containerd" "$p/cmd/ctr"
      "$@" build -tags "urfave_cli_no_docs no_grpc" -ldflags "$ld" -o "$out/" "$p/cmd/containerd-shim-runc-v2"' _ \
    "$ldflags" "$staging" "$p" "${go_env[@]}" "$go_bin" -C "$dir"
  for b in containerd ctr containerd-shim-runc-v2; do check_static "$staging/$b"; done
  check_version "$staging/containerd" "$CONTAINERD_VERSION" --version
  check_version "$staging/ctr" "$CONTAINERD_VERSION" --version
  check_version "$staging/containerd-shim-runc-v2" "$CONTAINERD_VERSION" -v
}

build_runc() {
  local dir p=github.com/opencontainers/runc ldflags="-s -w -extldflags -static"
  dir=$(new_wrapper runc)
  gomod_info "$dir" "$p@$RUNC_VERSION" || die "the module proxy does not serve $p $RUNC_VERSION: $mod_err"
  [[ -z $mod_hash ]] || ldflags+=" -X main.gitCommit=$mod_hash"
  gomod_edit "$dir" -require="$p@$RUNC_VERSION" -tool="$p"
  tidy runc "$dir"
  run_step "go build runc $RUNC_VERSION (cgo, static libseccomp)" "$work/logs/build-runc.log" 3600 \
    "${go_env[@]}" CGO_ENABLED=1 "$go_bin" -C "$dir" build -tags "seccomp urfave_cli_no_docs netgo osusergo" \
    -ldflags "$ldflags" -o "$staging/runc" "$p"
  check_static "$staging/runc"
  check_version "$staging/runc" "runc version ${RUNC_VERSION#v}" --version
  check_version "$staging/runc" "libseccomp:" --version
}

build_coredns() {
  local dir p=github.com/coredns/coredns
  dir=$(new_wrapper coredns)
  gomod_info "$dir" "$p@$COREDNS_VERSION" || die "the module proxy does not serve $p $COREDNS_VERSION: $mod_err"
  gomod_edit "$dir" -require="$p@$COREDNS_VERSION" -tool="$p"
  tidy coredns "$dir"
  run_step "go build coredns $COREDNS_VERSION" "$work/logs/build-coredns.log" 3600 \
    "${go_env[@]}" "$go_bin" -C "$dir" build -tags grpcnotrace \
    -ldflags "-s -w -X $p/coremain.GitCommit=${mod_hash:-$COREDNS_VERSION}" -o "$staging/coredns" "$p"
  check_static "$staging/coredns"
  check_version "$staging/coredns" "CoreDNS-${COREDNS_VERSION#v}" -version
}

build_local_path() {
  local dir p=github.com/rancher/local-path-provisioner
  dir=$(new_wrapper lpp)
  gomod_info "$dir" "$p@$LOCAL_PATH_VERSION" || die "the module proxy does not serve $p $LOCAL_PATH_VERSION: $mod_err"
  gomod_edit "$dir" -require="$p@$LOCAL_PATH_VERSION" -tool="$p"
  tidy lpp "$dir"
  run_step "go build local-path-provisioner $LOCAL_PATH_VERSION" "$work/logs/build-local-path-provisioner.log" 3600 \
    "${go_env[@]}" "$go_bin" -C "$dir" build -ldflags "-s -w -X main.VERSION=$LOCAL_PATH_VERSION" \
    -o "$staging/local-path-provisioner" "$p"
  check_static "$staging/local-path-provisioner"
  check_version "$staging/local-path-provisioner" "$LOCAL_PATH_VERSION" --version
}

# build_cni: the CNI plugins, from the module's plugins/{main,ipam,meta}.
build_cni() {
  local dir p=github.com/containernetworking/plugins pkgs=() b
  dir=$(new_wrapper cni)
  gomod_info "$dir" "$p@$CNI_PLUGINS_VERSION" || die "the module proxy does not serve $p $CNI_PLUGINS_VERSION: $mod_err"
  for b in "${CNI_PLUGINS[@]}"; do
    case $b in
      host-local) pkgs+=("$p/plugins/ipam/$b") ;;
      portmap) pkgs+=("$p/plugins/meta/$b") ;;
      *) pkgs+=("$p/plugins/main/$b") ;;
    esac
  done
  gomod_edit "$dir" -require="$p@$CNI_PLUGINS_VERSION" "${pkgs[@]/#/-tool=}"
  tidy cni-plugins "$dir"
  mkdir -p "$staging/cni"
  run_step "go build CNI plugins $CNI_PLUGINS_VERSION (${CNI_PLUGINS[*]})" "$work/logs/build-cni.log" 3600 \
    "${go_env[@]}" "$go_bin" -C "$dir" build \
    -ldflags "-s -w -X $p/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" -o "$staging/cni/" "${pkgs[@]}"
  for b in "${CNI_PLUGINS[@]}"; do
    check_static "$staging/cni/$b"
    check_version "$staging/cni/$b" "$CNI_PLUGINS_VERSION"
  done
}

# build_pause: the pause image from the Kubernetes module's build/pause, with
# the CFLAGS of its Makefile. Upstream's VERSION is v$(TAG)-$(REV).
build_pause() {
  local src=$kube_dir/build/pause t0=$SECONDS rootfs=$work/pause-rootfs out ref
  pause_tag=$(sed -n 's/^TAG[[:space:]]*?\{0,1\}=[[:space:]]*\([0-9][0-9.]*\)[[:space:]]*$/\1/p' "$src/Makefile" | head -n 1)
  [[ -n $pause_tag ]] || die "no TAG in $src/Makefile"
  mkdir -p "$rootfs"
  run_step "gcc -static pause.c (pause $pause_tag)" "$work/logs/pause.log" 300 \
    bash -c 'gcc -Os -Wall -Werror -static "-DVERSION=v$1-$2" -o "$3" "$4" && strip "$3"' _ \
    "$pause_tag" "$kube_version" "$rootfs/pause" "$src/linux/pause.c"
  out=$("$rootfs/pause" -v) || die "$rootfs/pause -v failed"
  msg "pause -v: $out"
  check_static "$rootfs/pause"
  chmod 0755 "$rootfs" "$rootfs/pause"
  ref=$IMAGE_REGISTRY/pause:$pause_tag
  docker_archive "$staging/pause.tar" "$ref" "$rootfs" '{"Entrypoint":["/pause"]}'
  printf '%s\n' "$ref" >"$staging/pause-image"
  image_lines+=("pause-image $ref" "pause-image-config $image_config_digest")
  step_times+=("$(printf '%7s  %s' "$(fmt_duration $((SECONDS - t0)))" "image $ref")")
}

# build_test_image: static busybox, every applet a symlink in /bin.
build_test_image() {
  local bb bb_tag rootfs=$work/busybox-rootfs applet ref t0=$SECONDS
  bb=$(dpkg-query -L busybox-static | grep -E '^(/usr)?/bin/busybox$' | head -n 1) ||
    die "busybox-static ships no /bin/busybox?"
  bb_tag=$(dpkg-query -W -f='${Version}' busybox-static)
  bb_tag=${bb_tag#*:}
  bb_tag=${bb_tag%%-*}
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
  ref=$IMAGE_REGISTRY/busybox:$bb_tag
  docker_archive "$staging/test-image.tar" "$ref" "$rootfs" \
    '{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]}'
  printf '%s\n' "$ref" >"$staging/test-image"
  image_lines+=("test-image $ref" "test-image-config $image_config_digest")
  step_times+=("$(printf '%7s  %s' "$(fmt_duration $((SECONDS - t0)))" "image $ref")")
  msg "image $ref ($image_config_digest, $(find "$rootfs/bin" -type l | wc -l) applets)"
}

build_bundle() {
  local t_build=$SECONDS avail_kb need_gb cache_kb f
  image_lines=()

  # Leftovers of killed builds: staging dirs never became bundles.
  if [[ -e $root/work ]] || compgen -G "$root/.staging.*" >/dev/null; then
    local t_rm=$SECONDS
    rm -rf -- "$root"/.staging.* "$root/work"
    msg "removed the previous build's work dir in $(fmt_duration $((SECONDS - t_rm)))"
  fi

  ensure_packages "${BUILD_PACKAGES[@]}"
  go_environment
  mkdir -p "$root/go-build" "$root/gomod"
  work=$root/work
  mkdir -p "$work/logs" "$work/mod"
  staging=$(mktemp -d "$root/.staging.$key.XXXXXX")
  umask 022
  msg "$go_version ($go_bin), GOARCH=$goarch; module cache $root/gomod, build cache $root/go-build"
  resolve_kubernetes

  cache_kb=$(du -sk -- "$root/go-build" | cut -f1)
  if ((cache_kb < 2 * 1024 * 1024)); then
    need_gb=12
    msg "Go's build cache ($root/go-build) is (nearly) empty: this is a cold build, which downloads ~4 GB of modules (those not in Go's module cache) and compiles for 15 to 45 minutes on 2 cores"
  else
    need_gb=3
    msg "Go's build cache holds $((cache_kb / 1024 / 1024)) GB: if it has these packages the build takes minutes, else 15 to 45"
  fi
  avail_kb=$(df -Pk -- "$root" | awk 'NR == 2 { print $4 }')
  ((avail_kb >= need_gb * 1024 * 1024)) ||
    die "only $((avail_kb / 1024)) MB free under $root; this build needs ~$need_gb GB (module and build caches, bundle)"

  build_kubernetes
  build_etcd
  build_containerd
  build_runc
  build_coredns
  build_local_path
  build_cni

  build_pause
  build_test_image
  binary_image coredns "$COREDNS_VERSION"
  binary_image local-path-provisioner "$LOCAL_PATH_VERSION"

  # Describe the bundle; SHA256SUMS last, over every other file.
  printf '%s\n' "$kube_version" >"$staging/VERSION"
  {
    printf '# hakube kube bundle, made by scripts/%s. Check the files: sha256sum -c SHA256SUMS\n' "$prog"
    printf '# One "name version" line each: components, their Go modules, images, toolchain, recipe.\n'
    printf 'kubernetes %s\n' "$kube_version"
    printf 'etcd %s\n' "$ETCD_VERSION"
    printf 'containerd %s\n' "$CONTAINERD_VERSION"
    printf 'runc %s\n' "$RUNC_VERSION"
    printf 'coredns %s\n' "$COREDNS_VERSION"
    printf 'local-path-provisioner %s\n' "$LOCAL_PATH_VERSION"
    printf 'cni-plugins %s\n' "$CNI_PLUGINS_VERSION"
    printf 'pause %s\n' "$pause_tag"
    printf 'k8s.io/kubernetes %s\n' "$kube_version"
    printf 'k8s.io/kubernetes-sum %s\n' "$kube_sum"
    printf 'kubernetes-git-commit %s\n' "$kube_commit"
    printf 'go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION"
    printf 'go.etcd.io/etcd/etcdctl/v3 %s\n' "$ETCD_VERSION"
    printf 'go.etcd.io/etcd/etcdutl/v3 %s\n' "$ETCD_VERSION"
    printf 'github.com/containerd/containerd/v2 %s\n' "$CONTAINERD_VERSION"
    printf 'github.com/opencontainers/runc %s\n' "$RUNC_VERSION"
    printf 'github.com/coredns/coredns %s\n' "$COREDNS_VERSION"
    printf 'github.com/rancher/local-path-provisioner %s\n' "$LOCAL_PATH_VERSION"
    printf 'github.com/containernetworking/plugins %s\n' "$CNI_PLUGINS_VERSION"
    printf '%s\n' "${image_lines[@]}"
    toolchain_lines
    printf 'gcc-version %s\n' "$(gcc -dumpfullversion)"
    printf 'recipe %s\n' "$RECIPE"
    printf 'cache-key %s\n' "$key"
    printf 'build-date %s\n' "$build_date"
    printf 'built-at %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf 'built-on %s\n' "$(uname -srm | tr ' ' '_')"
  } >"$staging/MANIFEST"
  (
    cd "$staging"
    for f in "${BUNDLE_FILES[@]}"; do
      [[ $f == SHA256SUMS ]] || printf '%s\0' "$f"
    done | xargs -0 sha256sum -- >SHA256SUMS.tmp
    mv -- SHA256SUMS.tmp SHA256SUMS
  )
  chmod -R a+rX "$staging"
  chmod 0755 "$staging"
  bundle_complete "$staging" || die "internal error: $staging lacks some of: ${BUNDLE_FILES[*]}"

  # Into place: one rename is the commit point.
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
  rm -rf -- "$work"
  work=
  msg "steps:"
  printf '    %s\n' "${step_times[@]}" >&2
  msg "bundle built in $(fmt_duration $((SECONDS - t_build))): $root/$key ($(du -sh -- "$root/$key" | cut -f1))"
}

# ---------------------------------------------------------------------------
# --verify: a throwaway containerd, the bundle's own

verify_dir=
verify_pid=
verify_sock=
verify_ctr=

# vctr SECONDS ARGS...: the bundle's ctr against the throwaway containerd, bounded.
vctr() {
  local limit=$1
  shift
  timeout -k 5 "$limit" "$verify_ctr" --address "$verify_sock" --namespace k8s.io "$@"
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
    rmdir /run/containerd/fifo /run/containerd 2>/dev/null || true
  fi
  if awk -v d="$dir/" 'index($5, d) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
    msg "warning: mounts remain under $dir; not removing it"
  else
    rm -rf -- "$dir"
  fi
}

# verify_run REF ID ARGS...: runs ARGS in REF in the throwaway containerd and
# prints its stdout; on failure also ctr's stderr (which otherwise only
# carries warnings, such as containerd's about cgroup v1).
verify_run() {
  local ref=$1 id=$2 rc=0
  shift 2
  vctr 60 run --rm "${run_opts[@]}" "$ref" "$id" "$@" 2>"$verify_dir/ctr-run.err" || rc=$?
  ((rc == 0)) || cat -- "$verify_dir/ctr-run.err"
  return "$rc"
}

verify_bundle() {
  local bundle=$1 t0=$SECONDS i out id cfg f ref pause_ref test_ref
  local -a listed=() present=()
  msg "verify: sha256sum -c SHA256SUMS"
  (cd "$bundle" && sha256sum --quiet -c SHA256SUMS) || die "verify: $bundle does not match its SHA256SUMS; delete it and re-run"
  mapfile -t listed < <(sed 's/^[0-9a-f]\{64\} [ *]//' "$bundle/SHA256SUMS" | LC_ALL=C sort)
  mapfile -t present < <(cd "$bundle" && find . -mindepth 1 ! -type d ! -path ./SHA256SUMS -printf '%P\n' | LC_ALL=C sort)
  [[ "${listed[*]}" == "${present[*]}" ]] ||
    die "verify: SHA256SUMS lists (${listed[*]}), the bundle holds (${present[*]})"

  out=$("$bundle/kubectl" version --client 2>&1) || die "verify: kubectl version --client failed: $out"
  [[ $out == *"Client Version: $(<"$bundle/VERSION")"* ]] ||
    die "verify: kubectl version --client says '$out', VERSION says $(<"$bundle/VERSION")"
  msg "verify: kubectl version --client: ${out%%$'\n'*}"

  pause_ref=$(<"$bundle/pause-image")
  test_ref=$(<"$bundle/test-image")
  verify_ctr=$bundle/ctr
  # A short path: the sockets' paths must fit in 108 bytes, the shims'
  # socket dir in 42.
  verify_dir=$(mktemp -d /tmp/kb-verify.XXXXXX)
  verify_sock=$verify_dir/containerd.sock
  cfg=$verify_dir/config.toml
  # The bundle's shim is the one on containerd's PATH; ctr names the runc.
  mkdir -p "$verify_dir/bin" "$verify_dir/s"
  ln -s "$bundle/containerd-shim-runc-v2" "$verify_dir/bin/containerd-shim-runc-v2"
  ln -s "$bundle/runc" "$verify_dir/bin/runc"
  # The CRI plugins are off (no CNI, no streaming port), and so is NRI
  # (it would make /var/run/nri/nri.sock); no imports of /etc/containerd.
  cat >"$cfg" <<EOF
version = 3
root = "$verify_dir/root"
state = "$verify_dir/state"
imports = []
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.nri.v1.nri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs"]
[grpc]
  address = "$verify_sock"
[ttrpc]
  address = "$verify_dir/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins.'io.containerd.shim.v1.manager']
  socket_dir = "$verify_dir/s"
EOF
  # ctr's FIFOs go under our dir (--fifo-dir); should anything still make
  # /run/containerd, it is removed again when this run created it.
  run_containerd_created=0
  [[ -e /run/containerd ]] || run_containerd_created=1
  msg "verify: starting the bundle's containerd in $verify_dir"
  # 9>&-: containerd must not hold our build lock.
  env "PATH=$verify_dir/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    "$bundle/containerd" --config "$cfg" >"$verify_dir/containerd.log" 2>&1 </dev/null 9>&- &
  verify_pid=$!
  for ((i = 0; i < 300; i++)); do
    if [[ -S $verify_sock ]] && timeout 5 "$verify_ctr" --address "$verify_sock" version >/dev/null 2>&1; then break; fi
    kill -0 "$verify_pid" 2>/dev/null || {
      tail -n 20 "$verify_dir/containerd.log" | sed 's/^/    /' >&2
      die "verify: containerd exited at startup (log above)"
    }
    sleep 0.1
  done
  ((i < 300)) || die "verify: containerd's socket $verify_sock did not answer within 30 s (log: $verify_dir/containerd.log)"
  out=$(timeout 10 "$verify_ctr" --address "$verify_sock" version 2>&1 | awk '/^Server:/ { s = 1 } s && $1 == "Version:" { print $2; exit }')
  msg "verify: containerd server version $out"

  for f in "${IMAGES[@]}"; do
    out=$(vctr 120 images import "$bundle/$f.tar" 2>&1) ||
      die "verify: ctr images import $bundle/$f.tar failed: $out"
  done
  out=$(vctr 30 images ls)
  printf '%s\n' "$out" | sed 's/^/    /' >&2
  for f in pause-image test-image coredns-image local-path-provisioner-image; do
    ref=$(<"$bundle/$f")
    awk -v r="$ref" '$1 == r { found = 1 } END { exit !found }' <<<"$out" ||
      die "verify: $ref is not listed after the import"
  done

  # runc's state and ctr's stdio FIFOs stay under our dir; --cgroup "" lets
  # runc use a cgroup named after the container, which it removes again (the
  # default, /k8s.io/<id>, would leave k8s.io parents behind).
  id=kb-verify-$$
  run_opts=(--runc-binary "$bundle/runc" --runc-root "$verify_dir/runc" --fifo-dir "$verify_dir/fifo" --cgroup "")
  out=$(verify_run "$test_ref" "$id" sh -c 'echo ok') || die "verify: ctr run $test_ref failed: $out"
  [[ $out == ok ]] || die "verify: ctr run $test_ref sh -c 'echo ok' printed '$out'"
  msg "verify: $test_ref runs: sh -c 'echo ok' -> $out"

  ref=$(<"$bundle/coredns-image")
  out=$(verify_run "$ref" "$id-coredns" /coredns -version) || die "verify: ctr run $ref /coredns -version failed: $out"
  [[ $out == *CoreDNS-* ]] || die "verify: $ref /coredns -version printed '$out'"
  msg "verify: $ref runs: ${out%%$'\n'*}"
  ref=$(<"$bundle/local-path-provisioner-image")
  out=$(verify_run "$ref" "$id-lpp" /local-path-provisioner --version) ||
    die "verify: ctr run $ref /local-path-provisioner --version failed: $out"
  [[ $out == *version* ]] || die "verify: $ref /local-path-provisioner --version printed '$out'"
  msg "verify: $ref runs: ${out%%$'\n'*}"

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
  local var bundle
  local -a env_args=() args=()
  verify=0 refresh=0 rebuild=0
  kube_version=$KUBE_VERSION_DEFAULT
  while (($#)); do
    case "$1" in
      -h | --help)
        usage
        exit 0
        ;;
      --verify) verify=1 ;;
      --refresh) refresh=1 ;;
      --rebuild) rebuild=1 ;;
      --kubernetes-version)
        (($# >= 2)) || {
          usage
          die "--kubernetes-version needs a version, e.g. --kubernetes-version 1.36.3"
        }
        kube_version=$(normalize_kube_version "$2")
        shift
        ;;
      --kubernetes-version=*) kube_version=$(normalize_kube_version "${1#*=}") ;;
      --previous) kube_version=$KUBE_VERSION_PREVIOUS ;;
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
  key=${kube_version}_r$RECIPE
  bundle=$root/$key

  # On a terminal, --foreground lets Ctrl-C reach the command; otherwise timeout
  # runs it in its own process group, so a timeout stops all of its children.
  timeout_args=(-k 30)
  [[ -t 0 ]] && timeout_args=(--foreground -k 30)

  t_start=$SECONDS

  # The fast path: no root, no lock (bundles appear by rename), no network, no Go.
  if ((!refresh && !rebuild && !verify)) && bundle_complete "$bundle"; then
    msg "cache hit: $bundle"
    finish "$bundle"
  fi
  # Go is needed from here on (to build, or for --refresh to compare).
  if ((!verify || refresh || rebuild)) || ! bundle_complete "$bundle"; then
    find_go
  fi
  if ((refresh && !rebuild)) && bundle_complete "$bundle" && toolchain_matches "$bundle"; then
    msg "cache hit (--refresh: the toolchain is the one the bundle was built with): $bundle"
    ((verify)) || finish "$bundle"
  fi

  if [[ $EUID -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
      if ((verify)); then
        die "--verify runs a throwaway containerd, which needs root, and sudo is not installed: run this as root"
      fi
      die "building the bundle installs Debian packages and writes $cache_dir, which needs root, and sudo is not installed: run this as root"
    fi
    [[ -z ${go_bin:-} ]] || env_args+=("HAKUBE_GO=$go_bin")
    for var in HAKUBE_KUBE_BUNDLE_LOCK_WAIT TMPDIR GOPROXY GONOPROXY GOSUMDB GONOSUMDB GOPRIVATE GOINSECURE GONOSUMCHECK; do
      [[ -n ${!var:-} ]] && env_args+=("$var=${!var}")
    done
    # Hand the original stdout back to the re-run.
    args=(--kubernetes-version "$kube_version")
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

  # Someone else may have built it while we waited (or --verify of a cached
  # bundle, or --refresh found it current).
  if ((!rebuild)) && bundle_complete "$bundle"; then
    if ((!refresh)) || toolchain_matches "$bundle"; then
      msg "cache hit: $bundle"
      finish "$bundle"
    fi
  fi

  if ((rebuild)); then
    msg "--rebuild: building $bundle again (work dir $root/work)"
  elif [[ -e $bundle ]]; then
    msg "--refresh: building $bundle again with this machine's toolchain (work dir $root/work)"
  else
    msg "cache miss: building $bundle (work dir $root/work)"
  fi
  build_bundle
  msg "done in $(fmt_duration $((SECONDS - t_start)))"
  finish "$bundle"
}

main "$@"
