#!/usr/bin/env bash
#
# Benchmark (not a test): the node-local load balancer against HAProxy and
# against direct connections, on the same real API servers, and the
# load-balancer address change.
#
#   scripts/bench-lb.sh [--trials N] [--seconds S]
#
# It brings up a sandbox of its own (scripts/sandbox.sh: 3 masters, 1
# worker). On w1, side by side and against the same three kube-apiservers:
#   hakube   the agent's balancer at 127.0.0.1:6444;
#   haproxy  HAProxy at 127.0.0.1:6445 as EKCO configures it (mode tcp,
#            option httpchk GET /readyz, check check-ssl verify none
#            inter 1s fall 2 rise 3);
#   direct   the client's connections spread over the three masters.
# The client is examples/lb_load.rs: 8 keep-alive HTTPS connections sending
# GET /readyz (verified against the cluster CA).
#   (1) latency (p50, p99) and throughput: S seconds per path, the three
#       paths in turn, N rounds; medians.
#   (2) failover, per balancer and per fault, N trials: the client runs
#       20 s; 5 s in, m2's kube-apiserver is killed (its agent restarts it)
#       or m2 is cut off silently (its link down, back up after the run).
#       Reported: the longest time without a successful response from the
#       fault on, and the requests that failed.
#   (3) the address change: HAProxy on two hosts of its own (lb1, lb2);
#       m1 sets lb1; then, with the client looping through every node's
#       balancer, `install load-balancer-address=lb2` on m2. Reported: the
#       time until it returned complete, and the failed requests.
# Goals: p50 and p99 within 1.1x HAProxy's; crash failover under 1 s;
# silent failover under 3 s; no failed request during the address change.
# It exits 0 whether or not the goals are met, non-zero only when a step
# could not be run (the step is named).
#
# The sandbox uses the namespaces of scripts/sandbox.sh (hk-*), so a sandbox
# that is up must be taken down first; the benchmark takes its own down at
# the end, whatever happens.
#
# Environment:
#   BENCH_TRIALS   rounds and trials (default 3)
#   BENCH_SECONDS  seconds per latency run (default 10)
#   HAKUBE_BIN     hakube binary to measure instead of building target/release/hakube
#   TMPDIR         where the sandbox's files go (default /tmp)
set -euo pipefail

prog=bench-lb.sh
script=$(readlink -f -- "${BASH_SOURCE[0]}")
script_dir=${script%/*}
repo=$(cd -- "$script_dir/.." && pwd -P)

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
usage: scripts/$prog [--trials N] [--seconds S]

Compares hakube's node-local load balancer with HAProxy (EKCO's checks) and
with direct connections on a sandbox's real API servers: latency,
throughput, failover after a crash and after a silent cut-off; then times a
load-balancer address change with traffic through every node. Needs root;
builds and removes a sandbox of its own (the hk-* namespaces of
scripts/sandbox.sh).

Environment: BENCH_TRIALS (default 3), BENCH_SECONDS (default 10), HAKUBE_BIN, TMPDIR.
EOF
}

args=("$@")
trials=${BENCH_TRIALS:-3}
seconds=${BENCH_SECONDS:-10}
while (($#)); do
  case $1 in
    --trials | --seconds)
      (($# >= 2)) || die "$1 needs a number"
      if [[ $1 == --trials ]]; then trials=$2; else seconds=$2; fi
      shift 2
      ;;
    --trials=*) trials=${1#*=} && shift ;;
    --seconds=*) seconds=${1#*=} && shift ;;
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
[[ $seconds =~ ^[1-9][0-9]*$ ]] || die "--seconds must be a positive integer (got '$seconds')"

# shellcheck source=scripts/deps.sh
source "$script_dir/deps.sh"
# shellcheck source=scripts/bench-lib.sh
source "$script_dir/bench-lib.sh"
# shellcheck source=scripts/netns.sh
source "$script_dir/netns.sh"
hakube_as_root "$script" "${args[@]}"
hakube_ensure_deps kube haproxy || die "could not install the dependencies"
hakube_ensure_needs jq || die "could not install jq"

if ip netns list | awk '{print $1}' | grep -qxE 'hk-(sw|m1)'; then
  die "a sandbox is up (namespace hk-sw or hk-m1 exists): take it down with scripts/sandbox.sh down first"
fi

bin=$(hakube_binary "$repo") || die "no hakube binary to run"
export HAKUBE_BIN=$bin
msg "building the load client: cargo build --release --example lb_load"
(cd -- "$repo" && hakube_cargo build --release --locked --example lb_load) >&2 || die "cannot build examples/lb_load.rs"
load=$repo/target/release/examples/lb_load
dir=$(mktemp -d "${TMPDIR:-/tmp}/hakube-bench-lb.XXXXXX")
export HAKUBE_SANDBOX_DIR=$dir/sandbox
log=$dir/sandbox.log
net=10.77.0
masters=("$net.11" "$net.12" "$net.13")

cleanup() {
  local rc=$?
  msg "taking the benchmark's sandbox down"
  local ns
  for ns in hk-lb1 hk-lb2; do
    hakube_netns_stop "$ns"
    ip netns del "$ns" 2>/dev/null || true
  done
  hakube_netns_stop hk-w1
  bash "$script_dir/sandbox.sh" down >>"$log" 2>&1 || msg "sandbox.sh down failed; see $log"
  if ((rc == 0)); then rm -rf -- "$dir"; else msg "kept $dir for a look"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

root_of() { printf '%s/%s\n' "$HAKUBE_SANDBOX_DIR" "$1"; }
ca=$(root_of m1)/var/lib/hakube/pki/ca.crt

# haproxy_cfg BIND: HAProxy as EKCO configures it, to the three masters.
haproxy_cfg() {
  printf 'global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n'
  printf 'frontend api\n  bind %s\n  default_backend masters\n' "$1"
  printf 'backend masters\n  option httpchk GET /readyz\n  http-check expect status 200\n'
  local i
  for i in 1 2 3; do
    printf '  server m%s %s:6443 check check-ssl verify none inter 1s fall 2 rise 3\n' "$i" "${masters[i - 1]}"
  done
}

# start_haproxy NS BIND
start_haproxy() {
  local ns=$1 bind=$2
  haproxy_cfg "$bind" >"$dir/haproxy-$ns.cfg"
  ip netns exec "$ns" haproxy -D -f "$dir/haproxy-$ns.cfg" -p "$dir/haproxy-$ns.pid" ||
    fail "start HAProxy in $ns"
}

# run_load NS SECONDS TARGET... : prints the client's JSON line.
run_load() {
  local ns=$1 secs=$2 t
  shift 2
  local -a targets=()
  for t in "$@"; do targets+=(--target "$t"); done
  ip netns exec "$ns" "$load" --ca "$ca" --connections 8 --seconds "$secs" "${targets[@]}" ||
    fail "the load client in $ns"
}

lb_up() { # every backend of w1's balancer up
  local s
  s=$(ip netns exec hk-w1 "$bin" --root "$(root_of w1)" status --json 2>/dev/null) || return 1
  jq -e '[.load_balancer.backends[]? | select(.health == "up")] | length == 3' <<<"$s" >/dev/null
}
wait_until() { # SECONDS WHAT CMD...
  local limit=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@"; do
    ((SECONDS < deadline)) || fail "$what not within ${limit}s" "$(root_of m2)/var/lib/hakube/logs/agent.log"
    sleep 0.5
  done
}
m2_ready() { ip netns exec hk-w1 curl -sf --max-time 2 --cacert "$ca" "https://${masters[1]}:6443/readyz" >/dev/null; }

msg "bringing up a sandbox of 3 masters and 1 worker (log: $log)"
bash "$script_dir/sandbox.sh" up --masters 3 --workers 1 >>"$log" 2>&1 || fail "sandbox.sh up" "$log"
start_haproxy hk-w1 127.0.0.1:6445
wait_until 60 "w1's balancer with every master up" lb_up
sleep 3 # HAProxy's rise 3

# --- (1) latency and throughput ----------------------------------------------
declare -A p50=() p99=() rps=()
for ((t = 1; t <= trials; t++)); do
  for path in direct haproxy hakube; do
    case $path in
      direct) out=$(run_load hk-w1 "$seconds" "${masters[0]}:6443" "${masters[1]}:6443" "${masters[2]}:6443") ;;
      haproxy) out=$(run_load hk-w1 "$seconds" 127.0.0.1:6445) ;;
      hakube) out=$(run_load hk-w1 "$seconds" 127.0.0.1:6444) ;;
    esac
    read -r a b c f < <(jq -r '"\(.p50_us) \(.p99_us) \(.rps) \(.failed)"' <<<"$out")
    ((f == 0)) || msg "round $t: $path had $f failed requests"
    p50[$path]+="$a " p99[$path]+="$b " rps[$path]+="$c "
    msg "round $t/$trials: $path p50 ${a}us p99 ${b}us ${c} req/s"
  done
done

# --- (2) failover ----------------------------------------------------------------
# fault KIND BALANCER: prints "LONGEST_GAP_MS FAILED".
fault() {
  local kind=$1 target=$2 mark=$dir/mark pid out client
  rm -f "$mark"
  ip netns exec hk-w1 "$load" --ca "$ca" --connections 8 --seconds 20 --timeout-ms 5000 --mark "$mark" \
    --target "$target" >"$dir/fault.json" &
  client=$!
  sleep 5
  if [[ $kind == crash ]]; then
    pid=$(jq -r '.components["kube-apiserver"].pid // empty' "$(root_of m2)/var/lib/hakube/state.json")
    [[ -n $pid ]] || fail "m2's kube-apiserver pid"
    kill -KILL "$pid"
  else
    ip -n hk-m2 link set eth0 down
  fi
  date +%s%3N >"$mark"
  wait "$client" || fail "the load client during the $kind"
  [[ $kind == crash ]] || ip -n hk-m2 link set eth0 up
  out=$(cat "$dir/fault.json")
  jq -r '"\(.longest_gap_after_mark_ms) \(.failed_after_mark)"' <<<"$out"
  wait_until 180 "m2's API server ready again" m2_ready
  wait_until 60 "w1's balancer with m2 up again" lb_up
  sleep 4 # HAProxy's rise 3
}

declare -A gap=() lost=()
for ((t = 1; t <= trials; t++)); do
  for kind in crash silent; do
    for path in hakube haproxy; do
      target=127.0.0.1:6444
      [[ $path == haproxy ]] && target=127.0.0.1:6445
      out=$(fault "$kind" "$target") || exit 1
      read -r g l <<<"$out"
      gap[$kind-$path]+="$g " lost[$kind-$path]+="$l "
      msg "trial $t/$trials: $kind via $path: no success for ${g} ms, $l failed"
    done
  done
done

# --- (3) the address change -------------------------------------------------------
hakube_netns_host hk-lb1 hk-sw p-lb1 "$net.201/24" || fail "host lb1"
hakube_netns_host hk-lb2 hk-sw p-lb2 "$net.202/24" || fail "host lb2"
start_haproxy hk-lb1 "$net.201:6443"
start_haproxy hk-lb2 "$net.202:6443"
lb_serves() { ip netns exec hk-m1 curl -skf --max-time 2 "https://$1/readyz" >/dev/null; }
wait_until 30 "HAProxy on lb1 with a master up" lb_serves "$net.201:6443"
wait_until 30 "HAProxy on lb2 with a master up" lb_serves "$net.202:6443"
install_on() { # HOST WORDS...
  local host=$1
  shift
  ip netns exec "hk-$host" "$bin" --root "$(root_of "$host")" install "$@"
}
install_on m1 "load-balancer-address=$net.201:6443" >>"$log" 2>&1 || fail "set lb1 from m1" "$log"
stop=$dir/stop
rm -f "$stop"
declare -a clients=()
for host in m1 m2 m3 w1; do
  ip netns exec "hk-$host" "$load" --ca "$ca" --connections 2 --seconds 900 --until-file "$stop" \
    --target 127.0.0.1:6444 >"$dir/change-$host.json" &
  clients+=($!)
done
sleep 2
t0=$(now)
install_on m2 "load-balancer-address=$net.202:6443" >"$dir/change.log" 2>&1 || fail "the change from m2" "$dir/change.log"
t1=$(now)
sleep 2
touch "$stop"
for c in "${clients[@]}"; do wait "$c" || fail "a load client during the change"; done
change_failed=0 change_requests=0
for host in m1 m2 m3 w1; do
  read -r r f < <(jq -r '"\(.requests) \(.failed)"' "$dir/change-$host.json")
  change_failed=$((change_failed + f)) change_requests=$((change_requests + r))
done

# --- report ----------------------------------------------------------------------
med() { local -a v; read -r -a v <<<"$1"; median "${v[@]}"; }
printf '\nlatency and throughput of GET /readyz, 8 keep-alive connections from w1, %d round(s) of %ss (medians)\n' \
  "$trials" "$seconds"
printf '%-8s %10s %10s %10s %16s %16s\n' path "p50 (us)" "p99 (us)" "req/s" "p50 vs haproxy" "p99 vs haproxy"
for path in direct haproxy hakube; do
  printf '%-8s %10s %10s %10.0f %16s %16s\n' "$path" "$(med "${p50[$path]}")" "$(med "${p99[$path]}")" \
    "$(med "${rps[$path]}")" "$(ratio "$(med "${p50[$path]}")" "$(med "${p50[haproxy]}")")" \
    "$(ratio "$(med "${p99[$path]}")" "$(med "${p99[haproxy]}")")"
done
printf 'goal: hakube within 1.1x HAProxy (p50 %s, p99 %s)\n' \
  "$(awk -v a="$(med "${p50[hakube]}")" -v b="$(med "${p50[haproxy]}")" 'BEGIN { print (a <= 1.1 * b ? "met" : "MISSED") }')" \
  "$(awk -v a="$(med "${p99[hakube]}")" -v b="$(med "${p99[haproxy]}")" 'BEGIN { print (a <= 1.1 * b ? "met" : "MISSED") }')"

printf '\nfailover from w1, %d trial(s): longest time without a successful response after the fault (ms), failed requests\n' "$trials"
printf '%-8s %-8s %-24s %-18s %s\n' fault path "no success, ms (min-max)" "failed (median)" goal
for kind in crash silent; do
  goal=1000
  [[ $kind == silent ]] && goal=3000
  for path in hakube haproxy; do
    read -r -a g <<<"${gap[$kind-$path]}"
    m=$(median "${g[@]}")
    read -r lo hi < <(minmax "${g[@]}")
    verdict=""
    [[ $path == hakube ]] && verdict="< ${goal} ms $(awk -v m="$m" -v g="$goal" 'BEGIN { print (m < g ? "met" : "MISSED") }')"
    printf '%-8s %-8s %-24s %-18s %s\n' "$kind" "$path" "$m ($lo-$hi)" "$(med "${lost[$kind-$path]}")" "$verdict"
  done
done

printf '\naddress change from m2 (lb1 -> lb2) with 2 keep-alive connections through each node'"'"'s balancer\n'
printf 'complete after %ss; %d of %d requests failed (goal: 0, %s)\n' "$(elapsed "$t0" "$t1")" "$change_failed" \
  "$change_requests" "$( ((change_failed == 0)) && echo met || echo MISSED)"
