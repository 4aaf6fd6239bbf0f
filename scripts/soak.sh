#!/usr/bin/env bash
#
# The soak: three masters and two workers in network namespaces, under a
# workload for N minutes while a seeded schedule injects faults one or two
# at a time; then the invariants, printed (dev/src/soak/mod.rs says which
# faults and which invariants).
#
#   scripts/soak.sh [--minutes N] [--seed S] [--toleration SECONDS] [--plan-only] [--out DIR]
#
# The same seed replays the same schedule (--plan-only prints it and
# stops). Exits 0 when every invariant held, 1 when one did not (the seed,
# the fault log and the violation are printed; the fault log, the schedule
# and the agents' logs of reset hosts are kept in --out, default
# target/soak/seed-S). Takes N minutes plus about 6 to build the cluster and
# up to 10 to let it heal.
#
# Environment: HAKUBE_BIN (the binary to run instead of a release build),
# HAKUBE_TEST_BUNDLE (the Kubernetes bundle instead of what
# scripts/kube-bundle.sh builds), TMPDIR (where the hosts' roots go).
set -euo pipefail
prog=soak.sh
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

hakube_as_root "$script" "$@"
hakube_ensure_deps kube || die "could not install the dependencies"
# The clock steps: libfaketime under each agent.
hakube_ensure_needs faketime || die "could not install faketime"
hakube_dev soak "$@"
