#!/usr/bin/env bash
#
# Benchmark (not a test): the node-local load balancer against HAProxy and
# against direct connections, on the same real API servers, and the
# load-balancer address change (dev/src/bench/lb.rs says how).
#
#   scripts/bench-lb.sh [--trials N] [--seconds S]
#
# Brings up a sandbox of its own (the hk-* namespaces of scripts/sandbox.sh,
# so a sandbox that is up must be taken down first) and takes it down at the
# end. Goals: p50 and p99 within 1.1x HAProxy's; crash failover under 1 s;
# silent failover under 3 s; no failed request during the address change.
# Exits 0 whether or not the goals are met, non-zero when a step could not
# be run (it is named).
#
# Environment: BENCH_TRIALS (default 3), BENCH_SECONDS (default 10),
# HAKUBE_BIN (the binary to measure instead of a release build), TMPDIR.
set -euo pipefail
prog=bench-lb.sh
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

hakube_as_root "$script" "$@"
hakube_ensure_deps kube haproxy || die "could not install the dependencies"
hakube_dev bench lb "$@"
