#!/usr/bin/env bash
#
# Benchmark (not a test): how soon after a lost node's toleration runs out
# hakube has purged it, for a worker and for a master, against the same
# mutations made by hand (dev/src/bench/purge.rs says how).
#
#   scripts/bench-purge.sh [--trials N] [--toleration SECONDS]
#
# It brings up a sandbox of its own (the hk-* namespaces of
# scripts/sandbox.sh, so a sandbox that is up must be taken down first) and
# takes it down at the end, whatever happens. It exits 0 whether or not the
# goal is met, non-zero only when a step could not be run (it is named).
#
# Environment: BENCH_TRIALS (default 3), BENCH_TOLERATION (seconds, default
# 20, at least 16), HAKUBE_BIN (the binary to measure instead of a release
# build), TMPDIR (where the sandbox's files go).
set -euo pipefail
prog=bench-purge.sh
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

hakube_as_root "$script" "$@"
hakube_ensure_deps kube || die "could not install the dependencies"
hakube_dev bench purge "$@"
