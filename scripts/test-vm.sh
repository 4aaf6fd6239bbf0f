#!/usr/bin/env bash
#
# hakube on real VMs, with systemd as PID 1 (scripts/vm.sh makes them):
#
#   scripts/test-vm.sh
#
# What it shows, on three masters:
#   1. install with systemd, and masters joining with the printed script on
#      systemd hosts, all at once: hakube.service enabled and active on every
#      VM, the agent is the unit's main process and etcd runs in its cgroup,
#      `hakube status` healthy, three started voting etcd members;
#   2. `systemctl stop hakube` stops etcd too, cleanly (no SIGKILL), and
#      `systemctl start hakube` brings the same member back;
#   3. `systemctl reboot` of a master: it comes back as the same etcd member,
#      healthy, with no hand work;
#   4. power loss (its qemu killed): the other two keep a writable cluster;
#      booted again, it rejoins as the same member and catches up;
#   5. restarting hakube.service leaves the node's running containers alone
#      (their containerd shims are not killed with the agent);
#   6. `hakube reset` disables and removes the unit and leaves no process.
# Every wait is bounded; nothing is retried. The last line counts the
# results ("N passed, N failed"); the exit status is 0 only when all passed.
#
# The VMs have a state directory and a network namespace of their own
# (<repo>/.vm-test, hkvm-test), so a developer's `scripts/vm.sh up` is left
# alone; they are removed at the end unless HAKUBE_TEST_VM_KEEP=1.
# Under TCG (no usable KVM) the masters run etcd alone (vm.sh's default there).
#
# Environment: HAKUBE_BIN (the binary to test; default a release build),
# HAKUBE_TEST_VM_KEEP=1, and vm.sh's (HAKUBE_VM_ACCEL, HAKUBE_VM_COMPONENTS, ...).
set -euo pipefail

prog=test-vm.sh
script=$(readlink -f -- "${BASH_SOURCE[0]}")
script_dir=${script%/*}
repo=$(cd -- "$script_dir/.." && pwd -P)

export HAKUBE_VM_DIR=${HAKUBE_TEST_VM_DIR:-$repo/.vm-test}
export HAKUBE_VM_NS=hkvm-test
# No VM of a run outlives it by much, even when the run is killed.
export HAKUBE_VM_LIFETIME=${HAKUBE_VM_LIFETIME:-5400}
vm=$script_dir/vm.sh

# Bounds, in seconds.
readonly UP_LIMIT=1800     # image (cold: debootstrap), boots, install, joins
readonly HEALTHY_LIMIT=300 # a node's `hakube status` turning healthy
readonly STOP_LIMIT=90     # systemctl stop hakube (the unit's TimeoutStopSec is 60)
readonly REBOOT_LIMIT=300  # a VM back on ssh after a reboot
readonly RESET_LIMIT=240   # hakube reset

passed=0
failed=0
declare -a results=()
t_start=$SECONDS

msg() { printf '%s: %s\n' "$prog" "$*" >&2; }

# pass NAME / fail NAME WHY: records one test's result.
pass() {
  passed=$((passed + 1))
  results+=("PASS  $1")
  msg "PASS: $1"
}
fail() {
  failed=$((failed + 1))
  results+=("FAIL  $1: $2")
  msg "FAIL: $1: $2"
}

# bounded LIMIT CMD...: CMD under timeout (in a process group of its own),
# waited for in the background: bash runs a trap only between foreground
# commands, so a TERM of ours (test.sh's own timeout) acts at once, stops
# CMD and takes the VMs down.
child=
bounded() {
  local limit=$1 rc=0
  shift
  timeout -k 10 "$limit" "$@" </dev/null &
  child=$!
  wait "$child" || rc=$?
  child=
  return "$rc"
}

# shellcheck disable=SC2317 # the signal traps
on_signal() {
  [[ -z $child ]] || kill -TERM -- "-$child" 2>/dev/null || true
  exit "$1"
}

# Runs a command in a VM with a bound; its output on stdout.
on() {
  local host=$1 limit=$2
  shift 2
  bounded "$limit" "$vm" ssh "$host" "$@"
}

readonly ETCDCTL='ETCDCTL_API=3 etcdctl --cacert /var/lib/hakube/pki/etcd/ca.crt
  --cert /var/lib/hakube/pki/apiserver-etcd-client.crt --key /var/lib/hakube/pki/apiserver-etcd-client.key
  --dial-timeout=5s --command-timeout=10s'

# etcdctl on HOST against ENDPOINTS (comma-separated host names).
etcdctl_on() {
  local host=$1 names=$2 eps=() n
  shift 2
  for n in ${names//,/ }; do eps+=("https://$(ip_of "$n"):2379"); done
  on "$host" 30 "$(printf '%s' "$ETCDCTL" | tr '\n' ' ') --endpoints $(
    IFS=,
    printf '%s' "${eps[*]}"
  ) $*"
}

ip_of() { awk -v n="$1" '$1 == n {print $2}' "$HAKUBE_VM_DIR/hosts"; }

# "ID STATUS NAME ISLEARNER" for each member, as HOST's etcd client sees it
# through ENDPOINT-HOST's member.
members() {
  etcdctl_on "$1" "$2" member list -w simple | awk -F', ' '{print $1, $2, $3, $6}'
}

member_id() { members "$1" "$2" | awk -v n="$3" '$3 == n {print $1}'; }

# Whether one of ENDPOINT-HOSTS says it is etcd's leader.
# shellcheck disable=SC2317 # called through wait_for
has_leader() { etcdctl_on "$1" "$2" endpoint status -w simple | awk -F', ' '$5 == "true" {found = 1} END {exit !found}'; }

# Voting members that have started, by name, sorted.
started_voters() { members "$1" "$2" | awk '$2 == "started" && $4 == "false" {print $3}' | sort | xargs; }

# wait_for LIMIT WHAT CMD...: CMD until it succeeds, at most LIMIT seconds.
wait_for() {
  local limit=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || {
      msg "  gave up waiting for $what after $limit s"
      return 1
    }
    sleep 3
  done
}

healthy() { on "$1" 60 hakube status >/dev/null; }

# Seconds for `hakube status` on HOST to be healthy; fails past the bound.
time_to_healthy() {
  local host=$1 t0=$SECONDS
  wait_for "$HEALTHY_LIMIT" "$host to be healthy" healthy "$host" || return 1
  printf '%s\n' $((SECONDS - t0))
}

# (pgrep -x matches the 15-byte comm, too short for kube-controller-manager.)
no_process() { ! on "$1" 20 "pgrep -f '(^|/)$2( |\$)'" >/dev/null; }
agent_gone() { ! on "$1" 20 "pgrep -f '^/usr/local/bin/hakube agent'" >/dev/null; }
boot_id() { on "$1" 20 cat /proc/sys/kernel/random/boot_id; }
# shellcheck disable=SC2317 # called through wait_for
booted_again() { local id; id=$(boot_id "$1") && [[ -n $id && $id != "$2" ]]; }
unit_prop() { on "$1" 20 systemctl show -p "$2" --value hakube.service; }

# shellcheck disable=SC2317 # the EXIT trap
cleanup() {
  local rc=$?
  if [[ ${HAKUBE_TEST_VM_KEEP:-0} == 1 ]]; then
    msg "HAKUBE_TEST_VM_KEEP=1: the VMs stay up (HAKUBE_VM_DIR=$HAKUBE_VM_DIR HAKUBE_VM_NS=$HAKUBE_VM_NS scripts/vm.sh down)"
  else
    timeout -k 10 120 "$vm" down >/dev/null 2>&1 || msg "vm.sh down failed"
  fi
  return "$rc"
}

summary() {
  local r
  printf '\n%s: results (%d s in all)\n' "$prog" $((SECONDS - t_start))
  for r in "${results[@]}"; do printf '  %s\n' "$r"; done
  printf '%d passed, %d failed\n' "$passed" "$failed"
}

# --- 1 -----------------------------------------------------------------------
test_install_and_concurrent_joins() {
  local name="install with systemd; masters join with the script at once" host why="" out
  msg "== $name"
  # A leftover of an interrupted run would be reused half-made: start clean.
  bounded 120 "$vm" down >/dev/null 2>&1 || true
  if ! bounded "$UP_LIMIT" "$vm" up --masters 3 --workers 0; then
    fail "$name" "scripts/vm.sh up failed (its output above)"
    return 1
  fi
  for host in m1 m2 m3; do
    out=$(on "$host" 20 systemctl is-enabled hakube.service) || true
    [[ $out == enabled ]] || why+="$host: hakube.service is '$out', not enabled; "
    out=$(on "$host" 20 systemctl is-active hakube.service) || true
    [[ $out == active ]] || why+="$host: hakube.service is '$out', not active; "
    out=$(on "$host" 20 stat -c %a /etc/systemd/system/hakube.service /usr/local/bin/hakube /var/lib/hakube/etcd | xargs) || true
    [[ $out == "644 755 700" ]] || why+="$host: modes of the unit, binary, etcd data: '$out', not '644 755 700'; "
    out=$(on "$host" 20 find /var/lib/hakube/pki -name '*.key' ! -perm 600) || true
    [[ -z $out ]] || why+="$host: keys not 0600: $(printf '%s' "$out" | xargs); "
    # The agent is the unit's main process, and etcd is in the unit's cgroup
    # (so the unit's stop and KillMode reach it).
    # shellcheck disable=SC2016 # expanded in the VM
    out=$(on "$host" 20 'test "$(systemctl show -p MainPID --value hakube)" = "$(cat /var/lib/hakube/agent.pid)" &&
      grep -q "^0::/system.slice/hakube.service" /proc/$(pgrep -x etcd)/cgroup && echo ok') || true
    [[ $out == ok ]] || why+="$host: the agent is not hakube.service's main process, or etcd is not in its cgroup; "
    healthy "$host" || why+="$host: hakube status is not healthy; "
  done
  out=$(started_voters m1 m1,m2,m3) || true
  [[ $out == "m1 m2 m3" ]] || why+="started voting etcd members: '$out', not 'm1 m2 m3'; "
  if [[ -z $why ]]; then pass "$name"; else fail "$name" "$why"; fi
}

# --- 2 -----------------------------------------------------------------------
test_stop_start() {
  local name="systemctl stop hakube stops etcd too; start brings it back" why="" id_before id_after t0 secs out
  msg "== $name"
  id_before=$(member_id m2 m2,m3 m1) || true
  t0=$SECONDS
  on m1 "$STOP_LIMIT" systemctl stop hakube.service || why+="systemctl stop failed; "
  secs=$((SECONDS - t0))
  out=$(on m1 20 systemctl is-active hakube.service) || true
  [[ $out == inactive ]] || why+="after stop the unit is '$out', not inactive; "
  # A clean stop: the agent stopped its children itself, nothing was left
  # for systemd's SIGKILL.
  out=$(unit_prop m1 Result) || true
  [[ $out == success ]] || why+="the unit's Result is '$out', not success (SIGKILL or failure on stop); "
  no_process m1 etcd || why+="etcd still runs after systemctl stop; "
  agent_gone m1 || why+="the agent still runs after systemctl stop; "
  msg "  stopped in $secs s"
  on m1 30 systemctl start hakube.service || why+="systemctl start failed; "
  secs=$(time_to_healthy m1) || why+="not healthy within $HEALTHY_LIMIT s of systemctl start; "
  msg "  healthy ${secs:-?} s after systemctl start"
  id_after=$(member_id m1 m1 m1) || true
  [[ -n $id_before && $id_before == "$id_after" ]] || why+="m1's etcd member was '$id_before', is '$id_after'; "
  out=$(started_voters m1 m1,m2,m3) || true
  [[ $out == "m1 m2 m3" ]] || why+="started voters '$out'; "
  if [[ -z $why ]]; then pass "$name"; else fail "$name" "$why"; fi
}

# --- 3 -----------------------------------------------------------------------
test_reboot() {
  local name="a rebooted master comes back as the same etcd member, healthy, by itself" why="" id_before id_after boot t0 secs out
  msg "== $name"
  id_before=$(member_id m1 m1 m2) || true
  boot=$(boot_id m2) || true
  t0=$SECONDS
  # The connection may drop before ssh hears back: its status says nothing.
  on m2 20 systemctl reboot || true
  if ! wait_for "$REBOOT_LIMIT" "m2 to boot again" booted_again m2 "$boot"; then
    fail "$name" "m2 did not come back within $REBOOT_LIMIT s (console: $HAKUBE_VM_DIR/m2.console)"
    return 1
  fi
  msg "  m2 back on ssh $((SECONDS - t0)) s after systemctl reboot"
  secs=$(time_to_healthy m2) || why+="m2 not healthy within $HEALTHY_LIMIT s of booting; "
  msg "  m2 healthy $((SECONDS - t0)) s after systemctl reboot"
  out=$(on m2 20 systemctl is-active hakube.service) || true
  [[ $out == active ]] || why+="hakube.service is '$out' after the reboot; "
  id_after=$(member_id m1 m1 m2) || true
  [[ -n $id_before && $id_before == "$id_after" ]] || why+="m2's etcd member was '$id_before', is '$id_after'; "
  out=$(started_voters m1 m1,m2,m3) || true
  [[ $out == "m1 m2 m3" ]] || why+="started voters '$out'; "
  # The shutdown was clean: the previous boot's journal has the agent stop.
  out=$(on m2 20 'journalctl -b -1 -u hakube.service -o cat | grep -c "agent stopped"') || true
  [[ ${out:-0} -ge 1 ]] || why+="the agent did not log a clean stop during the reboot; "
  if [[ -z $why ]]; then pass "$name"; else fail "$name" "$why"; fi
}

# --- 4 -----------------------------------------------------------------------
test_power_loss() {
  local name="power loss: two masters stay writable; the third rejoins as the same member" why="" id_before id_after t0 secs out value
  msg "== $name"
  id_before=$(member_id m1 m1 m3) || true
  bounded 30 "$vm" kill m3 || {
    fail "$name" "could not kill m3's qemu"
    return 1
  }
  value="written-while-m3-was-off-$RANDOM"
  # If m3 led, m1 and m2 elect a leader among themselves first.
  wait_for 60 "a leader among m1 and m2" has_leader m1 m1,m2 || why+="no leader among m1 and m2 within 60 s; "
  if etcdctl_on m1 m1,m2 put /hakube-vm-test/power-loss "$value" >/dev/null; then
    out=$(etcdctl_on m2 m2 get --print-value-only /hakube-vm-test/power-loss) || true
    [[ $out == "$value" ]] || why+="m2 reads '$out' after the write through m1; "
  else
    why+="etcd put through m1,m2 failed with m3 off; "
  fi
  t0=$SECONDS
  if ! bounded $((REBOOT_LIMIT + 30)) "$vm" boot m3; then
    fail "$name" "${why}m3 did not boot again"
    return 1
  fi
  secs=$(time_to_healthy m3) || why+="m3 not healthy within $HEALTHY_LIMIT s of booting; "
  msg "  m3 healthy $((SECONDS - t0)) s after its qemu started again"
  id_after=$(member_id m1 m1 m3) || true
  [[ -n $id_before && $id_before == "$id_after" ]] || why+="m3's etcd member was '$id_before', is '$id_after'; "
  out=$(etcdctl_on m3 m3 get --consistency=s --print-value-only /hakube-vm-test/power-loss) || true
  [[ $out == "$value" ]] || why+="m3's own etcd has '$out', not the value written while it was off; "
  out=$(started_voters m1 m1,m2,m3) || true
  [[ $out == "m1 m2 m3" ]] || why+="started voters '$out'; "
  if [[ -z $why ]]; then pass "$name"; else fail "$name" "$why"; fi
}

# --- 5 -----------------------------------------------------------------------
test_restart_keeps_containers() {
  local name="restarting hakube.service leaves the node's running containers alone" why="" before after
  local ctr='ctr -a /run/hakube/containerd/containerd.sock -n k8s.io' id=hakube-vm-test
  msg "== $name"
  # m1 runs containerd from now on (a re-run of install converges on it).
  if ! on m1 "$HEALTHY_LIMIT" hakube install components=etcd,containerd >/dev/null 2>&1; then
    fail "$name" "hakube install components=etcd,containerd on m1 failed"
    return 1
  fi
  # (The agent imports the bundle's images only where kubelet runs.)
  on m1 120 "$ctr images import /opt/hakube/bundle/pause.tar" >/dev/null || why+="ctr images import failed; "
  on m1 120 "$ctr run -d \$(cat /opt/hakube/bundle/pause-image) $id" >/dev/null || why+="ctr run failed; "
  before=$(on m1 20 "$ctr task ls" | awk -v id="$id" '$1 == id {print $2, $3}') || true
  [[ $before == *" RUNNING" ]] || why+="the container is '$before' before the restart; "
  on m1 "$STOP_LIMIT" systemctl restart hakube.service || why+="systemctl restart failed; "
  time_to_healthy m1 >/dev/null || why+="m1 not healthy within $HEALTHY_LIMIT s of the restart; "
  after=$(on m1 20 "$ctr task ls" | awk -v id="$id" '$1 == id {print $2, $3}') || true
  [[ -n $before && $after == "$before" ]] ||
    why+="the container was '$before' (pid, state) before the restart and is '${after:-gone}' after; "
  on m1 60 "$ctr task kill -s SIGKILL $id; sleep 1; $ctr task delete -f $id; $ctr container delete $id" >/dev/null 2>&1 || true
  if [[ -z $why ]]; then pass "$name"; else fail "$name" "$why"; fi
}

# --- 6 -----------------------------------------------------------------------
test_reset() {
  local name="hakube reset disables and removes the unit and leaves no process" why="" out p
  msg "== $name"
  on m3 "$RESET_LIMIT" hakube reset || why+="hakube reset failed; "
  out=$(on m3 20 'systemctl is-enabled hakube.service 2>&1') || true
  [[ $out != enabled && $out != disabled ]] || why+="systemctl is-enabled says '$out': the unit is still known; "
  out=$(on m3 20 'ls /etc/systemd/system/hakube.service /etc/systemd/system/*.wants/hakube.service \
    /usr/local/bin/hakube /etc/hakube /var/lib/hakube 2>/dev/null') || true
  [[ -z $out ]] || why+="left behind: $(printf '%s' "$out" | xargs); "
  out=$(on m3 20 systemctl is-active hakube.service) || true
  [[ $out == inactive ]] || why+="hakube.service is '$out' after reset; "
  agent_gone m3 || why+="the agent still runs; "
  for p in etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet; do
    no_process m3 "$p" || why+="$p still runs; "
  done
  out=$(started_voters m1 m1,m2) || true
  [[ $out == "m1 m2" ]] || why+="after m3's reset the started voters are '$out', not 'm1 m2'; "
  healthy m1 || why+="m1 is not healthy after m3's reset; "
  if [[ -z $why ]]; then pass "$name"; else fail "$name" "$why"; fi
}

main() {
  case "${1:-}" in
    -h | --help)
      sed -n '2,30p' "$script" | sed 's/^# \{0,1\}//' >&2
      exit 0
      ;;
  esac
  (($# == 0)) || {
    msg "takes no arguments"
    exit 2
  }
  # shellcheck source=scripts/deps.sh
  source "$script_dir/deps.sh"
  hakube_as_root "$script" "$@"
  trap cleanup EXIT
  # A stopped run (timeout, Ctrl-C) still takes its VMs down.
  trap 'on_signal 143' TERM HUP
  trap 'on_signal 130' INT
  if test_install_and_concurrent_joins; then
    test_stop_start || true
    test_reboot || true
    test_power_loss || true
    test_restart_keeps_containers || true
    test_reset || true
  fi
  summary
  ((failed == 0))
}

main "$@"; exit
