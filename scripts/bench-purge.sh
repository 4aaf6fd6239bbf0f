#!/usr/bin/env bash
#
# Benchmark (not a test): how soon after a lost node's toleration runs out
# hakube has purged it, for a worker and for a master.
#
#   scripts/bench-purge.sh [--trials N] [--toleration SECONDS]
#
# It brings up a sandbox of its own (scripts/sandbox.sh: 3 masters, 1 worker,
# the real control plane) with lost-node-toleration=SECONDS, then, per trial
# and per role:
#   (a) the floor, side by side: the same mutations a purge makes, issued by
#       hand from m1 with kubectl and etcdctl against a stand-in (a Node
#       object with no kubelet and a pod bound to it; for the master, an
#       unstarted etcd learner): taint, force-delete the pod, remove the
#       member, delete the Node. It is what the purge would cost with no
#       detection and no bookkeeping.
#   (b) hakube: every process of the host (w1, or a master that is neither
#       m1 nor the leader) is killed; from m1 the Node and the etcd member
#       are polled every 0.2 s until both are gone. The moment the toleration
#       ran out is the node's last sign of life as the purge recorded it
#       (the later of its hakube heartbeat and its Lease, whole seconds) plus
#       the toleration, so the latency is over-stated by less than a second.
#       The host is then reset and joined again for the next trial.
# The table gives medians and ranges, the ratio to the floor, and the goal
# (at most 10 s from the toleration running out to the purge being complete).
# It exits 0 whether or not the goal is met, non-zero only when a step could
# not be run (the step is named).
#
# The sandbox uses the namespaces of scripts/sandbox.sh (hk-*), so a sandbox
# that is up must be taken down first; the benchmark takes its own down at
# the end, whatever happens.
#
# Environment:
#   BENCH_TRIALS      trials per role (default 3)
#   BENCH_TOLERATION  seconds (default 20; at least 16, since a node counts
#                     as alive for 15 s after its last sign of life)
#   HAKUBE_BIN        hakube binary to measure instead of building target/release/hakube
#   TMPDIR            where the sandbox's files go (default /tmp)
set -euo pipefail

prog=bench-purge.sh
script=$(readlink -f -- "${BASH_SOURCE[0]}")
script_dir=${script%/*}
repo=$(cd -- "$script_dir/.." && pwd -P)

purge_timeout=120 # seconds after the toleration for a purge to complete
poll=0.2
goal=10

msg() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$prog" "$*" >&2
  exit 1
}
fail() {
  printf '%s: FAILED: %s\n' "$prog" "$1" >&2
  if [[ -n ${2:-} && -s $2 ]]; then
    printf '%s: last lines of %s:\n' "$prog" "$2" >&2
    tail -n 25 -- "$2" >&2
  fi
  exit 1
}

usage() {
  cat >&2 <<EOF
usage: scripts/$prog [--trials N] [--toleration SECONDS]

Times hakube's purge of a lost worker and of a lost master, from the moment
the toleration runs out to the Node (and the etcd member) being gone, against
the same mutations made by hand with kubectl and etcdctl. Needs root; builds
and removes a sandbox of its own (the hk-* namespaces of scripts/sandbox.sh).

Environment: BENCH_TRIALS (default 3), BENCH_TOLERATION (default 20),
HAKUBE_BIN, TMPDIR.
EOF
}

args=("$@")
trials=${BENCH_TRIALS:-3}
toleration=${BENCH_TOLERATION:-20}
while (($#)); do
  case $1 in
    --trials | --toleration)
      (($# >= 2)) || die "$1 needs a number"
      if [[ $1 == --trials ]]; then trials=$2; else toleration=$2; fi
      shift 2
      ;;
    --trials=*) trials=${1#*=} && shift ;;
    --toleration=*) toleration=${1#*=} && shift ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      usage
      die "unknown argument '$1'"
      ;;
  esac
done
[[ $trials =~ ^[1-9][0-9]*$ ]] || die "--trials must be a positive integer (got '$trials')"
if ! [[ $toleration =~ ^[0-9]+$ ]] || ((10#$toleration < 16 || 10#$toleration > 3600)); then
  die "--toleration must be a number of seconds from 16 to 3600 (got '$toleration')"
fi
toleration=$((10#$toleration))

# shellcheck source=scripts/deps.sh
source "$script_dir/deps.sh"
# shellcheck source=scripts/bench-lib.sh
source "$script_dir/bench-lib.sh"
# shellcheck source=scripts/netns.sh
source "$script_dir/netns.sh"
hakube_as_root "$script" "${args[@]}"
hakube_ensure_deps kube || die "could not install the dependencies"
hakube_ensure_needs jq || die "could not install jq"

if ip netns list | awk '{print $1}' | grep -qxE 'hk-(sw|m1)'; then
  die "a sandbox is up (namespace hk-sw or hk-m1 exists): take it down with scripts/sandbox.sh down first"
fi

bin=$(hakube_binary "$repo") || die "no hakube binary to run"
export HAKUBE_BIN=$bin
dir=$(mktemp -d "${TMPDIR:-/tmp}/hakube-bench-purge.XXXXXX")
export HAKUBE_SANDBOX_DIR=$dir/sandbox
log=$dir/sandbox.log
ghost=bench-ghost

cleanup() {
  local rc=$?
  msg "taking the benchmark's sandbox down"
  bash "$script_dir/sandbox.sh" down >>"$log" 2>&1 || msg "sandbox.sh down failed; see $log"
  if ((rc == 0)); then rm -rf -- "$dir"; else msg "kept $dir for a look"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

root_of() { printf '%s/%s\n' "$HAKUBE_SANDBOX_DIR" "$1"; }
on_m1() { ip netns exec hk-m1 "$@"; }
k() { on_m1 kubectl --kubeconfig "$(root_of m1)/var/lib/hakube/kubeconfigs/admin.conf" --request-timeout=5s "$@"; }
e() {
  local pki
  pki=$(root_of m1)/var/lib/hakube/pki/etcd
  on_m1 env ETCDCTL_API=3 etcdctl --endpoints https://10.77.0.11:2379 --command-timeout=5s \
    --cacert "$pki/ca.crt" --cert "$pki/healthcheck-client.crt" --key "$pki/healthcheck-client.key" "$@"
}
status_json() { on_m1 "$bin" --root "$(root_of m1)" status --json 2>/dev/null || true; }

msg "bringing up a sandbox of 3 masters and 1 worker with lost-node-toleration=${toleration}s (log: $log)"
HAKUBE_SANDBOX_INSTALL="lost-node-toleration=${toleration}s" bash "$script_dir/sandbox.sh" up --masters 3 --workers 1 \
  >>"$log" 2>&1 || fail "sandbox.sh up" "$log"

# --- (a) the floor -----------------------------------------------------------

# floor ROLE: prints the seconds the purge's mutations take by hand.
floor() {
  local role=$1 id="" t0 t1
  k create -f - >/dev/null <<EOF || fail "create the stand-in Node $ghost"
apiVersion: v1
kind: Node
metadata:
  name: $ghost
EOF
  k create -f - >/dev/null <<EOF || fail "create a pod bound to $ghost"
apiVersion: v1
kind: Pod
metadata:
  name: $ghost
  namespace: default
spec:
  nodeName: $ghost
  containers:
  - name: c
    image: $(cat "$bundle/test-image")
EOF
  if [[ $role == master ]]; then
    id=$(e member add "$ghost" --learner --peer-urls https://10.77.0.99:2380 | awk '/^Member [0-9a-f]+ added/ {print $2}')
    [[ -n $id ]] || fail "add the stand-in learner $ghost"
  fi
  t0=$(now)
  k taint node "$ghost" node.kubernetes.io/out-of-service=nodeshutdown:NoExecute >/dev/null || fail "taint $ghost"
  k delete pod "$ghost" --force --grace-period=0 >/dev/null 2>&1 || fail "force-delete the pod on $ghost"
  if [[ -n $id ]]; then e member remove "$id" >/dev/null || fail "remove the stand-in member $id"; fi
  k delete node "$ghost" >/dev/null || fail "delete the Node $ghost"
  t1=$(now)
  elapsed "$t0" "$t1"
}

# --- (b) hakube ----------------------------------------------------------------

gone() {
  local host=$1 role=$2 nodes members
  nodes=$(k get node "$host" --ignore-not-found -o name 2>/dev/null) || return 1
  [[ -z $nodes ]] || return 1
  [[ $role == worker ]] && return 0
  members=$(e member list 2>/dev/null) || return 1
  ! awk -F', ' -v n="$host" '$3 == n {found = 1} END {exit !found}' <<<"$members"
}

# measure HOST ROLE: prints "LATENCY STOP_TO_DONE" in seconds.
measure() {
  local host=$1 role=$2 t_stop t_done deadline record last expiry
  t_stop=$(now)
  hakube_netns_stop "hk-$host"
  deadline=$((SECONDS + toleration + purge_timeout))
  until gone "$host" "$role"; do
    ((SECONDS < deadline)) || fail "$host was not purged within ${toleration}s + ${purge_timeout}s" \
      "$(root_of m1)/var/lib/hakube/logs/agent.log"
    sleep "$poll"
  done
  t_done=$(now)
  record=$(status_json | jq -c --arg n "$host" '[.cluster.purged[]? | select(.node.name == $n)][0] // empty')
  [[ -n $record ]] || fail "no purge of $host in m1's status"
  last=$(jq -r '[.node.heartbeat_at, (.node.kube_seen_at // 0)] | max' <<<"$record")
  expiry=$((last + toleration))
  printf '%s %s\n' "$(elapsed "$expiry" "$t_done")" "$(elapsed "$t_stop" "$t_done")"
}

# rejoin HOST: reset the purged host and join it again.
rejoin() {
  local host=$1
  ip netns exec "hk-$host" "$bin" --root "$(root_of "$host")" reset >>"$log" 2>&1 || fail "reset $host" "$log"
  bash "$script_dir/sandbox.sh" up --masters 3 --workers 1 >>"$log" 2>&1 || fail "join $host again" "$log"
}

bundle=$(bash "$script_dir/kube-bundle.sh" 2>/dev/null) || die "no Kubernetes bundle"
declare -A lat=() total=() base=()
for ((t = 1; t <= trials; t++)); do
  for role in worker master; do
    f=$(floor "$role") || exit 1
    base[$role]+="$f "
    if [[ $role == worker ]]; then
      host=w1
    else
      leader=$(status_json | jq -r '.cluster.leader // empty')
      [[ -n $leader ]] || fail "no leader elected"
      host=m3
      [[ $leader == m3 ]] && host=m2
    fi
    out=$(measure "$host" "$role") || exit 1
    read -r l s <<<"$out"
    lat[$role]+="$l " total[$role]+="$s "
    msg "trial $t/$trials: $role $host purged ${l}s after its toleration ran out (${s}s after it stopped)"
    rejoin "$host"
  done
done

printf '\npurge latency, %d trial(s) per role, lost-node-toleration=%ss (seconds)\n' "$trials" "$toleration"
printf '%-8s %-28s %-16s %-22s %-10s %s\n' role "after toleration (min-max)" "after stop" "by hand (floor)" ratio goal
for role in worker master; do
  read -r -a a <<<"${lat[$role]}"
  read -r -a b <<<"${total[$role]}"
  read -r -a c <<<"${base[$role]}"
  m=$(median "${a[@]}")
  read -r lo hi < <(minmax "${a[@]}")
  f=$(median "${c[@]}")
  verdict=$(awk -v m="$m" -v g="$goal" 'BEGIN { print (m <= g ? "met" : "MISSED") }')
  printf '%-8s %-28s %-16s %-22s %-10s <= %ss %s\n' "$role" "$m ($lo-$hi)" "$(median "${b[@]}")" "$f" \
    "$(ratio "$m" "$f")" "$goal" "$verdict"
done
