#!/usr/bin/env bash
#
# Benchmark (not a test): N masters joining an etcd cluster at the same
# moment, with hakube and with two raw-etcd baselines: concurrent
# `etcdctl member add` (naive) and a one-at-a-time learner loop (sequential,
# the floor). dev/src/bench/join.rs says how.
#
#   scripts/bench-join.sh [--sizes "3 5 7"] [--trials K]
#
# Every variant runs on a fresh set of network namespaces of its own; the
# table gives successes and times, and per N the goal (hakube always
# succeeds and its median is at most 1.3 x the sequential one). It exits 0
# whether or not the goals are met, non-zero only when a step could not be
# run (the step is named and its files are kept).
#
# Environment: BENCH_SIZES (default "3 5 7"; 2-20 each), BENCH_TRIALS
# (default 3), HAKUBE_BIN (the binary to measure instead of a release
# build), TMPDIR (where the trials' files go).
set -euo pipefail
prog=bench-join.sh
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

hakube_as_root "$script" "$@"
hakube_ensure_deps || die "could not install the dependencies (etcd, etcdctl, openssl, ip)"
hakube_dev bench join "$@"
