#!/usr/bin/env bash
#
# hakube on real VMs, with systemd as PID 1 (scripts/vm.sh makes them):
#
#   scripts/test-vm.sh
#
# The tests are dev/src/vm_test.rs (it says what they show); this script
# gives them VMs of their own and takes the VMs down afterwards, even when
# the run is stopped. The VMs have a state directory and a network namespace
# of their own (<repo>/.vm-test, hkvm-test), so a developer's
# `scripts/vm.sh up` is left alone; they are removed at the end unless
# HAKUBE_TEST_VM_KEEP=1. Under TCG (no usable KVM) the masters run etcd
# alone (vm.sh's default there).
#
# Environment: HAKUBE_BIN (the binary to test; default a release build),
# HAKUBE_TEST_VM_KEEP=1, and vm.sh's (HAKUBE_VM_ACCEL, HAKUBE_VM_COMPONENTS, ...).
set -euo pipefail
prog=test-vm.sh
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

case "${1:-}" in
  -h | --help) sed -n '2,16p' "$script" | sed 's/^# \{0,1\}//' >&2 && exit 0 ;;
  ?*) die "takes no arguments" ;;
esac
hakube_as_root "$script" "$@"

export HAKUBE_VM_DIR=${HAKUBE_TEST_VM_DIR:-$repo/.vm-test}
export HAKUBE_VM_NS=hkvm-test
# No VM of a run outlives it by much, even when the run is killed.
export HAKUBE_VM_LIFETIME=${HAKUBE_VM_LIFETIME:-5400}

tests=$(hakube_dev_bin)
child=
# shellcheck disable=SC2317 # the traps
cleanup() {
  local rc=$?
  [[ -z $child ]] || kill -TERM "$child" 2>/dev/null || true
  if [[ ${HAKUBE_TEST_VM_KEEP:-0} == 1 ]]; then
    msg "HAKUBE_TEST_VM_KEEP=1: the VMs stay up (HAKUBE_VM_DIR=$HAKUBE_VM_DIR HAKUBE_VM_NS=$HAKUBE_VM_NS scripts/vm.sh down)"
  else
    timeout -k 10 120 bash "$script_dir/vm.sh" down >/dev/null 2>&1 || msg "vm.sh down failed"
  fi
  return "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM HUP
trap 'exit 130' INT
# In the background: bash runs a trap only between foreground commands, so
# a TERM (test.sh's own timeout) acts at once and takes the VMs down.
HAKUBE_DEV_PROG=$prog "$tests" vm-test </dev/null &
child=$!
rc=0
wait "$child" || rc=$?
child=
exit "$rc"
