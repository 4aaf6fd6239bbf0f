#!/usr/bin/env bash
#
# A throwaway multi-host hakube sandbox on one machine, built from network
# namespaces (dev/src/sandbox.rs says how):
#
#   scripts/sandbox.sh up [--masters N] [--workers M]
#   scripts/sandbox.sh status [HAKUBE STATUS FLAGS...]
#   scripts/sandbox.sh console [--port PORT]
#   scripts/sandbox.sh down
#
# This script installs what the machine lacks; the developer tools (dev/)
# do the rest, with the binary and the Kubernetes bundle built here.
#
# Environment:
#   HAKUBE_SANDBOX_DIR  state directory (default: <repo>/.sandbox)
#   HAKUBE_BIN          hakube binary to use instead of building target/release/hakube
#   HAKUBE_SANDBOX_INSTALL
#                       extra words for m1's install, which set the cluster's
#                       settings, e.g. 'taint-control-plane lost-node-toleration=5m'
set -euo pipefail
prog=sandbox.sh
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

usage() {
  cat >&2 <<EOF
usage: scripts/$prog up [--masters N] [--workers M]
       scripts/$prog status [--json]
       scripts/$prog console [--port PORT]
       scripts/$prog down

  up      create the namespaces and install hakube on m1 (etcd, containerd,
          the control plane and kubelet, from the Kubernetes bundle that
          scripts/kube-bundle.sh builds); when the sandbox is already up, says
          so and shows its status
            --masters N   master hosts m1..mN, 10.77.0.11.. (1-9, default 3)
            --workers M   worker hosts w1..wM, 10.77.0.21.. (0-9, default 2)
          m1 is installed; every other host runs the join script m1 prints
          (\`hakube node-join-script [--master]\`), all at the same time;
          then it waits for every Node to be Ready.
  status  run \`hakube status\` on every installed host (extra flags go to it)
  console print a sign-in link to the cluster page on 127.0.0.1:PORT (default
          9443) and forward that port to m1's page until Ctrl-C (from
          another machine: ssh -L PORT:127.0.0.1:PORT to this one)
  down    reset every host, stop what still runs in the namespaces, delete
          them and the state directory

State directory: HAKUBE_SANDBOX_DIR (default $repo/.sandbox)
Binary: HAKUBE_BIN, else $repo/target/release/hakube (built by \`up\`)
Cluster settings for m1's install: HAKUBE_SANDBOX_INSTALL (e.g. 'taint-control-plane')
EOF
}

cmd=${1:-}
case $cmd in
  up | status | console | down) hakube_as_root "$script" "$@" ;;
  -h | --help | help) usage && exit 0 ;;
  "") usage && exit 2 ;;
  *) usage && die "unknown command '$cmd'" ;;
esac
shift
# The tools build against protoc: up installs what is missing first.
[[ $cmd != up ]] || hakube_ensure_deps kube prometheus || die "could not install the dependencies"
hakube_dev sandbox "$cmd" "$@"
