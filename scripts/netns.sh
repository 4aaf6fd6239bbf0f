#!/usr/bin/env bash
# Simulated hosts in network namespaces: the one place the sandbox, the
# benchmarks and the test harness set them up. Nothing is created in the
# machine's own network namespace: a "switch" namespace holds a bridge, and
# each host namespace's eth0 is one end of a veth pair whose other end is a
# port of that bridge.
#
# Run it, or source it and call the functions:
#   netns.sh switch NS                    namespace NS with bridge br0, up
#   netns.sh host NS SWITCH PORT ADDR/BITS
#                                         namespace NS, its eth0 on SWITCH's br0
#                                         through port PORT (at most 15 bytes),
#                                         ADDR/BITS on eth0, a default route
#                                         through it (Kubernetes components
#                                         want one; nothing answers beyond)
#   netns.sh loopback NS                  namespace NS with only lo, up
#   netns.sh stop NS [verbose]            TERM every process in NS, KILL after 10 s
#   netns.sh delete NS                    stop its processes, delete it
# Each is safe to run again on what exists. Needs root and iproute2.

_hakube_netns_fail() {
  printf 'netns.sh: error: %s\n' "$*" >&2
  return 1
}

_hakube_netns_exists() {
  ip netns list | awk '{print $1}' | grep -qxF -- "$1"
}

hakube_netns_loopback() {
  local ns=$1
  _hakube_netns_exists "$ns" || ip netns add "$ns" || _hakube_netns_fail "cannot create namespace $ns" || return
  ip -n "$ns" link set lo up || _hakube_netns_fail "cannot bring up lo in $ns"
}

hakube_netns_switch() {
  local ns=$1
  hakube_netns_loopback "$ns" || return
  if ! ip -n "$ns" link show br0 >/dev/null 2>&1; then
    ip -n "$ns" link add br0 type bridge ||
      _hakube_netns_fail "cannot create a bridge in $ns (is the bridge kernel module available?)" || return
  fi
  ip -n "$ns" link set br0 up
}

hakube_netns_host() {
  local ns=$1 switch=$2 port=$3 addr=$4
  ((${#port} <= 15)) || _hakube_netns_fail "port name $port is longer than 15 bytes" || return
  hakube_netns_loopback "$ns" || return
  if ! ip -n "$switch" link show "$port" >/dev/null 2>&1; then
    # A half-made pair (say, the switch namespace was deleted) is rebuilt.
    ip -n "$ns" link del eth0 >/dev/null 2>&1 || true
    ip -n "$switch" link add "$port" type veth peer name eth0 netns "$ns" ||
      _hakube_netns_fail "cannot create the veth pair $port/eth0 of $ns" || return
  fi
  ip -n "$switch" link set "$port" master br0 up || _hakube_netns_fail "cannot attach $port to br0 in $switch" || return
  ip -n "$ns" addr replace "$addr" dev eth0 || _hakube_netns_fail "cannot give eth0 of $ns the address $addr" || return
  ip -n "$ns" link set eth0 up || return
  ip -n "$ns" route replace default dev eth0 || _hakube_netns_fail "cannot add a default route in $ns"
}

hakube_netns_stop() {
  local ns=$1 verbose=${2:-} i
  local -a pids
  mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null)
  ((${#pids[@]})) || return 0
  [[ -z $verbose ]] || printf 'stopping %d process(es) left in %s\n' "${#pids[@]}" "$ns" >&2
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null)
    ((${#pids[@]})) || return 0
    sleep 0.1
  done
  [[ -z $verbose ]] || printf 'killing what is still running in %s: %s\n' "$ns" "${pids[*]}" >&2
  kill -KILL "${pids[@]}" 2>/dev/null || true
}

hakube_netns_delete() {
  local ns=$1
  _hakube_netns_exists "$ns" || return 0
  hakube_netns_stop "$ns"
  ip netns del "$ns"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  cmd=${1:-}
  (($#)) && shift
  case $cmd in
    switch) (($# == 1)) || _hakube_netns_fail "usage: netns.sh switch NS" || exit 2; hakube_netns_switch "$@" ;;
    host) (($# == 4)) || _hakube_netns_fail "usage: netns.sh host NS SWITCH PORT ADDR/BITS" || exit 2; hakube_netns_host "$@" ;;
    loopback) (($# == 1)) || _hakube_netns_fail "usage: netns.sh loopback NS" || exit 2; hakube_netns_loopback "$@" ;;
    stop) hakube_netns_stop "$@" ;;
    delete) hakube_netns_delete "$@" ;;
    *)
      sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
      exit 2
      ;;
  esac
fi
