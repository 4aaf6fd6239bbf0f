#!/usr/bin/env bash
#
# Benchmark (not a test): how long hakube takes from nothing to a cluster
# that runs applications, and what the bundle costs to build
# (dev/src/bench/cluster.rs says how).
#
#   scripts/bench-cluster.sh [--trials N] [--masters N] [--workers N] [--cold-bundle]
#
# Each trial brings up a sandbox of its own (the hk-* namespaces of
# scripts/sandbox.sh, so a sandbox that is up must be taken down first),
# times it until CoreDNS answers through its Service, and takes it down.
# The table gives min/median/max and the goal (a warm bring-up under 90 s).
# Exits 0 whether or not the goal is met, non-zero when a step could not be
# run (it is named).
#
# Environment: HAKUBE_BIN (the binary to measure instead of a release build),
# TMPDIR (where the trials' files go).
set -euo pipefail
prog=bench-cluster.sh
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

hakube_as_root "$script" "$@"
hakube_ensure_deps kube || die "could not install the dependencies"
hakube_dev bench cluster "$@"
