#!/usr/bin/env bash
#
# Benchmark (not a test): what hakube costs as the cluster grows, with
# simulated nodes (dev/src/bench/scale.rs says how).
#
#   scripts/bench-scale.sh [--sizes 50,500] [--seconds 180] [--baseline-bin PATH]
#
# Brings up a sandbox of its own (3 masters + 1 worker; the hk-* namespaces
# of scripts/sandbox.sh, so a sandbox that is up must be taken down first),
# runs examples/hollow_nodes.rs in it for each size, and prints the API
# load, the leader's round time, the time from a loss to its purge and the
# agents' CPU and memory; --baseline-bin runs another build side by side.
# Exits 0 whether or not the goals are met, non-zero when a step could not
# be run (it is named).
#
# Environment: HAKUBE_BIN (the binary to measure instead of a release build),
# TMPDIR (where the runs' files go).
set -euo pipefail
prog=bench-scale.sh
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

hakube_as_root "$script" "$@"
hakube_ensure_deps kube || die "could not install the dependencies"
hakube_dev bench scale "$@"
