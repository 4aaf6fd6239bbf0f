#!/usr/bin/env bash
#
# Benchmark (not a test): an etcd snapshot taken and checked by hakube
# against etcd's own etcdctl and sha256sum, on the same member in the same
# run (dev/src/bench/snapshot.rs says how).
#
#   scripts/bench-snapshot.sh [--trials N] [--size-mib M]
#
# One etcd-only master in a namespace of its own, filled with M MiB (default
# 64). Goals: save at most 1.25x etcdctl's time, verify at most 2x
# sha256sum's. Exits 0 whether or not the goals are met, non-zero when a step
# could not be run (it is named).
#
# Environment: BENCH_TRIALS (default 5), HAKUBE_BIN (the binary to measure
# instead of a release build), HAKUBE_TEST_BUNDLE (the bundle), TMPDIR.
set -euo pipefail
prog=bench-snapshot.sh
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

hakube_as_root "$script" "$@"
hakube_ensure_deps kube || die "could not install the dependencies"
hakube_dev bench snapshot "$@"
