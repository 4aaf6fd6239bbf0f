#!/usr/bin/env bash
#
# Benchmark (not a test): how fast hakube brings up a healthy, mTLS-secured
# etcd compared with doing the same job the kubeadm way from a shell (the
# openssl CLI and etcd polled with etcdctl), and hakube's PKI against
# openssl's (dev/src/bench/install.rs says how).
#
#   scripts/bench-install.sh [--trials N]
#
# The table at the end gives medians, hakube/baseline ratios and the goals.
# It exits 0 whether or not the goals are met, non-zero only when a step
# could not be run (the step is named).
#
# Environment: BENCH_TRIALS (default 5), HAKUBE_BIN (the binary to measure
# instead of a release build), TMPDIR (where the trials' files go).
set -euo pipefail
prog=bench-install.sh
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

hakube_as_root "$script" "$@"
hakube_ensure_deps || die "could not install the dependencies (etcd, etcdctl, openssl, ip)"
hakube_dev bench install "$@"
