#!/usr/bin/env bash
#
# Benchmark (not a test): a whole cluster (3 masters + 2 workers) moved to
# the next Kubernetes minor by one re-run of `install --bundle NEW.tar` on
# m2, against the same move made on every node at once, each on a sandbox
# of its own, with a client of every node's balancer counting the requests
# that fail (dev/src/bench/upgrade.rs says how).
#
#   scripts/bench-upgrade.sh [--trials N] [--masters N] [--workers N]
#
# Goal: no failed request for hakube. Exits 0 whether or not the goal is
# met, non-zero when a step could not be run (it is named).
#
# Environment: BENCH_TRIALS (default 1: each trial brings two clusters up),
# HAKUBE_BIN (the binary to measure instead of a release build).
set -euo pipefail
prog=bench-upgrade.sh
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

hakube_as_root "$script" "$@"
hakube_ensure_deps kube || die "could not install the dependencies"
hakube_dev bench upgrade "$@"
