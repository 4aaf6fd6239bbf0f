#!/usr/bin/env bash
#
# Benchmark (not a test): hakube's virtual IP against keepalived (VRRP, as
# k0s configures it) floating another address over the same three masters,
# side by side in one run (dev/src/bench/vip.rs says how).
#
#   scripts/bench-vip.sh [--trials N]
#
# Builds a cluster of its own in network namespaces (3 masters, 1 worker),
# hits whoever holds each address with four faults (a graceful stop, the
# kube-apiserver killed, a power loss, a cut-off link) N times, and prints
# when the address moved and the longest time a client could not connect.
# Goal: no worse than keepalived on a crash, better when the API server dies
# while its host lives. About 6 minutes for the cluster and 2 per trial and
# fault. Exits 0 whether or not the goals are met, non-zero when a step could
# not be run (it is named).
#
# Environment: BENCH_TRIALS (default 3), HAKUBE_BIN (the binary to measure
# instead of a release build), TMPDIR (where the hosts' roots go).
set -euo pipefail
prog=bench-vip.sh
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

hakube_as_root "$script" "$@"
hakube_ensure_deps kube || die "could not install the dependencies"
hakube_ensure_needs keepalived || die "could not install keepalived"
hakube_dev bench vip "$@"
