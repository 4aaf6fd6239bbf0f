#!/usr/bin/env bash
# Kubernetes' own conformance suite against the sandbox or any cluster
# (`scripts/conformance.sh --help`; dev/src/conformance/ says how):
#
#   scripts/conformance.sh [--focus RE] [--skip RE] [--smoke] [--kubeconfig FILE] ...
#   scripts/conformance.sh kit [--rebuild]   # build (or find) e2e.test and its images
set -euo pipefail
prog=conformance.sh
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

[[ ${1:-} != -h && ${1:-} != --help ]] || hakube_dev conformance run --help
hakube_as_root "$script" "$@"
hakube_ensure_deps kube || die "could not install the dependencies"
hakube_ensure_needs debootstrap make bzip2 || die "could not install debootstrap, make and bzip2"
[[ ${1:-} != kit ]] || hakube_dev conformance "$@"
[[ ${1:-} != run ]] || shift
hakube_dev conformance run "$@"
