#!/usr/bin/env bash
#
# Benchmark (not a test): a bundle file taken in by hakube (one pass that
# checks and unpacks it, then the agent's import of its images, pinned)
# against tar -x, sha256sum -c and ctr images import of the same file, on
# fresh containerds of the bundle's own, in the same run
# (dev/src/bench/bundle.rs says how).
#
#   scripts/bench-bundle.sh [--trials N]
#
# Goal: at most 1.0x the baseline. Exits 0 whether or not the goal is met,
# non-zero when a step could not be run (it is named).
#
# Environment: BENCH_TRIALS (default 5), HAKUBE_BIN (the binary to measure
# instead of a release build), BENCH_TMPDIR (default /tmp: a short path, for
# containerd's sockets; room for three copies of the bundle).
set -euo pipefail
prog=bench-bundle.sh
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

hakube_as_root "$script" "$@"
hakube_ensure_deps kube || die "could not install the dependencies"
hakube_dev bench bundle "$@"
