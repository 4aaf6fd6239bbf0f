#!/usr/bin/env bash
#
# The project's test command (CI runs it through .ci/run):
#
#   scripts/test.sh [NEXTEST ARGS...]
#
# Root is needed because the integration tests create network namespaces:
# run it as root, or as a user with sudo (it re-runs itself with sudo).
# Steps, from the repository root: dependencies (Debian packages, and the
# Kubernetes bundle that scripts/kube-bundle.sh builds from Go modules once
# per machine and keeps in /var/cache/hakube), shellcheck of the scripts,
# rustfmt check, clippy with warnings denied, cargo deny (deny.toml: the
# licenses, sources and versions of every crate), release build of the workspace
# (hakube and its developer tools in dev/, which the VM tests run), then the
# tests of both with cargo-nextest (cargo test when nextest cannot be had),
# then the fuzz targets briefly (scripts/fuzz.sh), then the VM tests
# (scripts/test-vm.sh), then the conformance smoke subset
# on a sandbox of its own (scripts/conformance.sh --smoke), then a 5-minute
# soak with a fixed seed (scripts/soak.sh).
# Extra arguments go to `cargo nextest run`.
#
# Under sudo the builds run as the invoking user, so that target/ stays theirs;
# only the test run itself is root's.
#
# Environment:
#   HAKUBE_TEST_THREADS   tests run in parallel (default 2)
#   HAKUBE_TEST_TIMEOUT   seconds the test run may take before it is stopped
#                         (default 3600)
#   HAKUBE_TEST_VM        0 skips the VM tests (scripts/test-vm.sh; default 1)
#   HAKUBE_TEST_VM_TIMEOUT  seconds the VM tests may take (default 2400)
#   HAKUBE_TEST_CONFORMANCE 0 skips the conformance smoke subset (default 1)
#   HAKUBE_TEST_FUZZ      0 skips the fuzz targets (default 1)
#   HAKUBE_TEST_FUZZ_SECONDS  seconds each fuzz target runs (default 15)
#   HAKUBE_TEST_SOAK      0 skips the soak (default 1)
#   HAKUBE_TEST_SOAK_SEED the soak's seed (default 1)
set -euo pipefail

prog=test.sh
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

usage() {
  cat >&2 <<EOF
usage: scripts/$prog [NEXTEST ARGS...]

Runs shellcheck, cargo fmt --check, cargo clippy -D warnings, cargo build
--release, the test suite (cargo nextest run; cargo test if nextest is unavailable) and the
VM tests (scripts/test-vm.sh) and Kubernetes' conformance smoke subset
(scripts/conformance.sh --smoke, on a sandbox of its own). Needs root for network namespaces; re-runs
itself with sudo when not root.

Environment: HAKUBE_TEST_THREADS (default 2), HAKUBE_TEST_TIMEOUT (seconds, default 3600),
HAKUBE_TEST_VM (0 skips the VM tests), HAKUBE_TEST_VM_TIMEOUT (seconds, default 2400),
HAKUBE_TEST_CONFORMANCE (0 skips the conformance smoke subset), HAKUBE_TEST_FUZZ (0 skips
the fuzz targets), HAKUBE_TEST_SOAK (0 skips the 5-minute soak), HAKUBE_TEST_SOAK_SEED (default 1).
EOF
}

case "${1:-}" in
  -h | --help)
    usage
    exit 0
    ;;
esac

threads=${HAKUBE_TEST_THREADS:-2}
test_timeout=${HAKUBE_TEST_TIMEOUT:-3600}
vm_test=${HAKUBE_TEST_VM:-1}
vm_timeout=${HAKUBE_TEST_VM_TIMEOUT:-2400}
conformance=${HAKUBE_TEST_CONFORMANCE:-1}
fuzz=${HAKUBE_TEST_FUZZ:-1}
fuzz_seconds=${HAKUBE_TEST_FUZZ_SECONDS:-15}
soak=${HAKUBE_TEST_SOAK:-1}
soak_seed=${HAKUBE_TEST_SOAK_SEED:-1}
[[ $threads =~ ^[1-9][0-9]*$ ]] || die "HAKUBE_TEST_THREADS must be a positive integer (got '$threads')"
[[ $test_timeout =~ ^[1-9][0-9]*$ ]] || die "HAKUBE_TEST_TIMEOUT must be a positive number of seconds (got '$test_timeout')"
[[ $vm_test == [01] ]] || die "HAKUBE_TEST_VM must be 0 or 1 (got '$vm_test')"
[[ $conformance == [01] ]] || die "HAKUBE_TEST_CONFORMANCE must be 0 or 1 (got '$conformance')"
[[ $soak == [01] ]] || die "HAKUBE_TEST_SOAK must be 0 or 1 (got '$soak')"
[[ $soak_seed =~ ^[0-9]+$ ]] || die "HAKUBE_TEST_SOAK_SEED must be a number (got '$soak_seed')"
[[ $fuzz == [01] ]] || die "HAKUBE_TEST_FUZZ must be 0 or 1 (got '$fuzz')"
[[ $fuzz_seconds =~ ^[1-9][0-9]*$ ]] || die "HAKUBE_TEST_FUZZ_SECONDS must be a positive number of seconds (got '$fuzz_seconds')"
[[ $vm_timeout =~ ^[1-9][0-9]*$ ]] || die "HAKUBE_TEST_VM_TIMEOUT must be a positive number of seconds (got '$vm_timeout')"

hakube_as_root "$script" "$@"

current_step=
started=$SECONDS
on_exit() {
  local rc=$?
  if ((rc != 0)) && [[ -n $current_step ]]; then
    printf '%s: FAILED at step "%s" (exit %d) after %d s\n' "$prog" "$current_step" "$rc" "$((SECONDS - started))" >&2
  fi
}
trap on_exit EXIT

# step NAME CMD...: runs CMD, recording NAME for the failure message.
step() {
  local name=$1 t0=$SECONDS
  shift
  current_step=$name
  msg "==> $name"
  "$@"
  msg "    $name: ok ($((SECONDS - t0)) s)"
}

cd -- "$repo"

# The tests build clusters whose `hakube check` fails a host with under 5%
# of its disk free (and warns under 15%), on the disk where the hosts'
# roots go; a cold run also takes about 20 GiB for builds. Said up front,
# not found out an hour in.
disk_room() {
  local dir=${TMPDIR:-/tmp} avail size
  read -r size avail < <(df -Pk -- "$dir" | awk 'NR==2 {print $2, $4}') || return 0
  [[ -n $size && $size -gt 0 ]] || return 0
  if (((avail - 20 * 1024 * 1024) * 100 < 5 * size)); then
    msg "warning: $dir has $((avail / 1024 / 1024)) GiB free of $((size / 1024 / 1024)) GiB: a cold run takes about" \
      "20 GiB, and the clusters' \`hakube check\` fails a host with under 5% free (the monitoring tests would fail);" \
      "free space, or set TMPDIR to a roomier disk"
  fi
}
disk_room

step "dependencies" hakube_ensure_deps kube haproxy prometheus shellcheck browser
hakube_find_cargo || die "cargo not found: install a Rust toolchain (https://rustup.rs), then re-run"

# The Kubernetes tests run the real components: build them once (cached
# afterwards; a cold build takes half an hour on 2 cores, and says so).
kube_bundle() { HAKUBE_TEST_BUNDLE=$(bash "$script_dir/kube-bundle.sh") && export HAKUBE_TEST_BUNDLE; }
step "Kubernetes bundle (scripts/kube-bundle.sh)" kube_bundle
# The minor before it, which the upgrade test starts from (another
# Kubernetes build when cold; the other components come from the cache).
kube_previous() {
  HAKUBE_TEST_PREVIOUS_BUNDLE=$(bash "$script_dir/kube-bundle.sh" --previous) && export HAKUBE_TEST_PREVIOUS_BUNDLE
}
step "previous Kubernetes minor's bundle (scripts/kube-bundle.sh --previous)" kube_previous

have_nextest=1
if ! hakube_ensure_nextest; then
  have_nextest=0
  msg "cargo-nextest is unavailable; falling back to cargo test"
fi

# rustfmt and clippy are rustup components that minimal toolchains lack.
for component in fmt:rustfmt clippy:clippy; do
  if ! cargo "${component%%:*}" --version >/dev/null 2>&1; then
    command -v rustup >/dev/null 2>&1 ||
      die "cargo ${component%%:*} is missing and rustup is not installed to add it"
    step "rustup component add ${component#*:}" rustup component add "${component#*:}"
  fi
done

# The workspace: the product and its developer tools (dev/).
step "shellcheck" shellcheck -x scripts/*.sh .ci/run
step "cargo fmt --check" hakube_cargo fmt --all -- --check
step "cargo clippy" hakube_cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo-deny (installed once per machine)" hakube_ensure_cargo_deny
step "cargo deny check bans licenses sources" \
  hakube_cargo deny --log-level error check --hide-inclusion-graph bans licenses sources
step "cargo build --release" hakube_cargo build --release --locked --workspace

# On a terminal, --foreground lets Ctrl-C reach the tests; otherwise timeout
# gets its own process group, so that a timeout stops every test process.
timeout_args=(-k 30)
if [[ -t 0 ]]; then
  timeout_args=(--foreground -k 30)
fi

if ((have_nextest)); then
  nextest_args=(--workspace --locked --no-fail-fast --test-threads "$threads" "$@")
  # Builds with the default profile; arguments that change it make the
  # run below build again, as root.
  step "build tests" hakube_cargo nextest run --workspace --no-run --locked
  step "cargo nextest run" timeout "${timeout_args[@]}" "$test_timeout" cargo nextest run "${nextest_args[@]}"
else
  (($# == 0)) || msg "passing '$*' to cargo test, which may not understand nextest's arguments"
  step "build tests" hakube_cargo test --workspace --locked --no-run
  step "cargo test" timeout "${timeout_args[@]}" "$test_timeout" cargo test --workspace --locked --no-fail-fast "$@" -- --test-threads "$threads"
fi

# Every parser facing input from outside the host under libFuzzer, briefly
# (scripts/fuzz.sh; a long run is a developer's, see the README).
fuzz_tests=skipped
if [[ $fuzz == 1 ]] && ! cargo +nightly --version >/dev/null 2>&1; then
  # libFuzzer's instrumentation needs nightly, which no package registry
  # serves: said loudly, and in the summary line.
  warn "no Rust nightly toolchain: the fuzz targets are not run (rustup toolchain install nightly)"
  fuzz_tests="skipped (no Rust nightly)"
elif [[ $fuzz == 1 ]]; then
  step "fuzz targets, ${fuzz_seconds} s each (scripts/fuzz.sh)" bash "$script_dir/fuzz.sh" --seconds "$fuzz_seconds"
  fuzz_tests=passed
fi

# hakube as the systemd unit of real VMs: install, joins, stop and start,
# reboot, power loss, reset (scripts/test-vm.sh, which says what it shows).
# A step of its own, after the rest: it boots VMs and takes minutes.
vm_tests=skipped
if [[ $vm_test == 1 ]]; then
  step "VM tests (scripts/test-vm.sh)" timeout "${timeout_args[@]}" "$vm_timeout" \
    env HAKUBE_BIN="$repo/target/release/hakube" bash "$script_dir/test-vm.sh"
  vm_tests=passed
fi

# Kubernetes' own tests of what applications rely on, on a sandbox of its
# own (3 masters, 2 workers) that is taken down whatever the result.
smoke() {
  local dir rc=0
  ! ip netns list | grep -q '^hk-sw\b' || die "a sandbox is up (scripts/sandbox.sh): take it down, or set HAKUBE_TEST_CONFORMANCE=0"
  dir=$(mktemp -d "${TMPDIR:-/tmp}/hakube-smoke.XXXXXX") && export HAKUBE_SANDBOX_DIR=$dir/sandbox HAKUBE_BIN=$repo/target/release/hakube
  bash "$script_dir/sandbox.sh" up && bash "$script_dir/conformance.sh" --smoke --report-dir "$dir/report" || rc=$?
  bash "$script_dir/sandbox.sh" down || rc=1
  if ((rc == 0)); then rm -rf -- "$dir"; else msg "the smoke run's reports are in $dir/report"; fi
  return "$rc"
}
conformance_tests=skipped
if [[ $conformance == 1 ]]; then
  step "conformance smoke subset (scripts/conformance.sh --smoke)" smoke
  conformance_tests=passed
fi

# Random faults under a workload for 5 minutes, with a fixed seed, then the
# invariants (scripts/soak.sh; an hour with other seeds is a developer's).
soak_test=skipped
if [[ $soak == 1 ]]; then
  # Bounded inside (every wait has its deadline); the timeout is for a
  # defect of the soak's own: 5 minutes of faults, at most 8 to build the
  # cluster and 10 to heal, with room to spare.
  step "soak, 5 minutes, seed $soak_seed (scripts/soak.sh)" timeout "${timeout_args[@]}" 1800 \
    env HAKUBE_BIN="$repo/target/release/hakube" bash "$script_dir/soak.sh" --minutes 5 --seed "$soak_seed"
  soak_test=passed
fi

current_step=
printf '%s: all checks passed: fmt, clippy, cargo deny, release build, tests, fuzz %s, VM tests %s, conformance smoke %s, soak %s (%d s)\n' \
  "$prog" "$fuzz_tests" "$vm_tests" "$conformance_tests" "$soak_test" "$((SECONDS - started))"
