#!/usr/bin/env bash
#
# Benchmark (not a test): N masters joining an etcd cluster at the same
# moment, with hakube and with two raw-etcd baselines.
#
#   scripts/bench-join.sh [--sizes "3 5 7"] [--trials K]
#
# For every size N and every trial, each variant gets a fresh network of its
# own: a switch namespace holding a bridge and N host namespaces h1..hN
# wired to it (10.X.0.11, .12, ...; X is picked per run), each host with its
# own root directory. Nothing is created in the machine's own network
# namespace. The variants:
#   (a) hakube concurrent: `hakube install ha --components etcd` on h1, then
#       h2..hN all run the script `hakube node-join-script --master` printed,
#       at the same moment. Timed from the start of the joins until all have
#       exited; a success when every join exited 0 and etcd then has N
#       started voting members (no learner) and a healthy cluster.
#   (b) naive concurrent: a PKI made with `hakube certs generate` (the same
#       CAs on every host), etcd started by hand on h1, then h2..hN at once
#       each run `etcdctl member add` (a voter, no serialization) and start
#       their etcd with the initial cluster it printed. Timed until N started
#       voting members and a healthy cluster (at most 60 s); a failure when an
#       add is refused, an etcd exits, or the bound passes.
#   (c) sequential learner: the same PKI and h1, then one host at a time:
#       `member add --learner` (retried every 0.2 s while etcd answers
#       "unhealthy cluster"), start its etcd, `member promote` retried every
#       0.2 s until the learner is in sync. Timed from the first add until the
#       last promote is done and the cluster is healthy. What a careful
#       operator achieves by hand: the floor to compare hakube with.
# The variants take turns going first from one trial to the next. Each run
# of a variant is bounded (180 s); one killed at the bound counts as a
# failure. The table at the end gives successes, median/min/max times over
# the successful trials and the ratio of the medians to the sequential one,
# and per N the goal: hakube succeeds every time and its median is at most
# 1.3 x the sequential median.
# It exits 0 whether or not the goals are met, non-zero only when a step
# could not be run (the step is named and its files are kept). The logs of
# failed trials are kept too (etcd data aside); the path is printed.
#
# Environment:
#   BENCH_SIZES   the sizes N, masters in all (default "3 5 7"; 2-20 each)
#   BENCH_TRIALS  trials per size (default 3)
#   HAKUBE_BIN    the hakube binary (default <repo>/target/release/hakube)
#   TMPDIR        where the trials' files go (default /tmp)
set -euo pipefail

prog=bench-join.sh
script=$(readlink -f -- "${BASH_SOURCE[0]}")
script_dir=${script%/*}
repo=$(cd -- "$script_dir/.." && pwd -P)

variant_timeout=180 # seconds one variant of one trial may take, setup included
install_timeout=120 # seconds `hakube install` on h1 may take
raw_timeout=60      # seconds each bounded wait of the raw-etcd variants may take
reset_timeout=60    # seconds one `hakube reset` may take during teardown
goal_factor=1.3     # hakube median <= goal_factor x sequential median
variants=(hakube naive sequential)

msg() { printf '%s: %s\n' "$prog" "$*" >&2; }
warn() { printf '%s: warning: %s\n' "$prog" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$prog" "$*" >&2
  exit 1
}

# fail STEP [LOG]: names the step that could not be run, shows its log's end.
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
usage: scripts/$prog [--sizes "N..."] [--trials K]

Times N masters joining etcd at the same moment: hakube's serialized joins
against concurrent raw \`etcdctl member add\` (naive) and a one-at-a-time
learner loop (sequential, the floor). Every variant runs on a fresh set of
network namespaces; prints a table and the goal (hakube always succeeds and
its median is at most ${goal_factor} x the sequential one).
  --sizes "N..."  cluster sizes, masters in all (default: BENCH_SIZES or "3 5 7")
  --trials K      trials per size and variant (default: BENCH_TRIALS or 3)
Environment: BENCH_SIZES, BENCH_TRIALS, HAKUBE_BIN (default
$repo/target/release/hakube), TMPDIR.
EOF
}

# shellcheck source=scripts/bench-lib.sh
source "$script_dir/bench-lib.sh"

# ---------------------------------------------------------------------------
# Hosts. The parent and the variant processes agree on these through the
# environment (BENCH_NS_PREFIX, BENCH_NET, BENCH_BIN).

ns_prefix=${BENCH_NS_PREFIX:-hkbj$$}
net=${BENCH_NET:-10.$((88 + $$ % 160)).0}
bin=${BENCH_BIN:-}

switch_ns() { printf '%s-sw\n' "$ns_prefix"; }
ns_of() { printf '%s-h%s\n' "$ns_prefix" "$1"; }
ip_of() { printf '%s.%s\n' "$net" $((10 + $1)); }

ns_exists() {
  ip netns list | awk '{print $1}' | grep -qxF -- "$1"
}

# build_net N: the switch namespace with bridge br0, and hosts 1..N whose
# eth0 is one end of a veth pair, the other (p<i>) a port of br0.
build_net() {
  local n=$1 i sw ns
  sw=$(switch_ns)
  hakube_netns_switch "$sw" || fail "setting up the switch namespace $sw"
  for ((i = 1; i <= n; i++)); do
    ns=$(ns_of "$i")
    hakube_netns_host "$ns" "$sw" "p$i" "$(ip_of "$i")/24" || fail "setting up host namespace $ns"
  done
}

# TERM every process in a namespace, KILL what is left after 10 s.
# shellcheck source=scripts/netns.sh
source "$script_dir/netns.sh"
kill_ns_processes() { hakube_netns_stop "$1"; }

drop_ns() {
  ns_exists "$1" || return 0
  kill_ns_processes "$1"
  ip netns del "$1" 2>/dev/null || warn "could not delete network namespace $1"
}

# Unmounts whatever is still mounted below a directory.
unmount_below() {
  local dir=$1 mnt
  local -a mounts
  mapfile -t mounts < <(awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r)
  for mnt in "${mounts[@]}"; do
    mnt=$(printf '%b' "$mnt") # /proc/self/mounts escapes spaces as \040
    umount -l -- "$mnt" 2>/dev/null || warn "could not unmount $mnt"
  done
}

# ---------------------------------------------------------------------------
# The variants. Each runs as a process of its own (`__variant`) so that it
# can be bounded as a whole: it writes DIR/result, one line
#   ok SECONDS
#   fail SECONDS REASON...
# and exits 0 when it ran (whatever the result), 3 when its setup could not
# be run (the reason is in its log).

dir=""   # the variant's directory; host i's root is $dir/h<i>
hosts=0  # N
result_written=0

root_of() { printf '%s/h%s\n' "$dir" "$1"; }
pki_of() { printf '%s/h%s/var/lib/hakube/pki\n' "$dir" "$1"; }

# setup_fail STEP [LOG]: the variant could not be run.
setup_fail() {
  printf 'SETUP FAILED: %s\n' "$1" >&2
  if [[ -n ${2:-} && -s $2 ]]; then
    printf 'last lines of %s:\n' "$2" >&2
    tail -n 25 -- "$2" >&2
  fi
  exit 3
}

# result ok|fail SECONDS [REASON...]
result() {
  local status=$1 secs=$2
  shift 2
  printf '%s %s %s\n' "$status" "$secs" "$*" >"$dir/result"
  result_written=1
}

# last_line TEXT: the last non-empty line, for reasons.
last_line() {
  awk 'NF { l = $0 } END { print l }' <<<"$1"
}

# ctl ARGS...: etcdctl from h1 against h1's client URL, with h1's
# healthcheck client certificate.
ctl() {
  local pki
  pki=$(pki_of 1)
  ip netns exec "$(ns_of 1)" env ETCDCTL_API=3 etcdctl --endpoints "https://$(ip_of 1):2379" \
    --cacert "$pki/etcd/ca.crt" --cert "$pki/etcd/healthcheck-client.crt" \
    --key "$pki/etcd/healthcheck-client.key" --dial-timeout 2s --command-timeout 5s "$@"
}

# cluster_ok: true when etcd has N members, all started, none a learner,
# and `endpoint health --cluster` is healthy. Sets $check_reason otherwise,
# $check_summary always.
check_reason=""
check_summary=""
cluster_ok() {
  local out total started learners
  check_summary="member list failed"
  if ! out=$(ctl member list 2>&1); then
    check_reason="member list: $(last_line "$out")"
    return 1
  fi
  read -r total started learners < <(awk -F', ' 'NF >= 6 {
      t++; if ($2 == "started") s++; if ($NF != "false") l++ }
    END { print t + 0, s + 0, l + 0 }' <<<"$out")
  check_summary="$total members, $started started, $learners learner(s)"
  if ((total != hosts || started != hosts || learners != 0)); then
    check_reason="expected $hosts started voting members, found $check_summary"
    return 1
  fi
  if ! out=$(ctl endpoint health --cluster 2>&1); then
    check_summary+=", unhealthy"
    check_reason="endpoint health --cluster: $(last_line "$out")"
    return 1
  fi
  check_summary+=", healthy"
  return 0
}

# describe_cluster: what etcd looks like, for a failure's reason, in
# $check_summary.
describe_cluster() {
  local out
  cluster_ok && return 0
  [[ $check_summary == "member list failed" || $check_summary == *healthy ]] && return 0
  if out=$(ctl endpoint health --cluster 2>&1); then
    check_summary+=", the started ones healthy"
  else
    check_summary+=", unhealthy ($(last_line "$out"))"
  fi
}

# --- (a) hakube -------------------------------------------------------------

variant_hakube() {
  local i t0 t1 rc first="" root
  local -a pids=()
  for ((i = 1; i <= hosts; i++)); do
    mkdir -p -- "$(root_of "$i")"
  done
  timeout --foreground -k 10 "$install_timeout" ip netns exec "$(ns_of 1)" \
    "$bin" --root "$(root_of 1)" install ha --advertise-address "$(ip_of 1)" --node-name h1 \
    --components etcd --no-systemd </dev/null >"$dir/install-h1.log" 2>&1 ||
    setup_fail "hakube install on h1" "$dir/install-h1.log"
  ip netns exec "$(ns_of 1)" "$bin" --root "$(root_of 1)" node-join-script --master \
    </dev/null >"$dir/join.sh" 2>"$dir/join-script.log" ||
    setup_fail "hakube node-join-script --master on h1" "$dir/join-script.log"
  [[ -s $dir/join.sh ]] || setup_fail "hakube node-join-script --master printed nothing"

  t0=$(now)
  for ((i = 2; i <= hosts; i++)); do
    root=$(root_of "$i")
    HAKUBE_BIN=$bin timeout --foreground -k 10 $((variant_timeout - 10)) \
      ip netns exec "$(ns_of "$i")" bash "$dir/join.sh" --root "$root" \
      --advertise-address "$(ip_of "$i")" --node-name "h$i" --components etcd --no-systemd \
      </dev/null >"$dir/join-h$i.log" 2>&1 &
    pids[i]=$!
  done
  for ((i = 2; i <= hosts; i++)); do
    rc=0
    wait "${pids[i]}" || rc=$?
    if ((rc != 0)) && [[ -z $first ]]; then
      first="h$i join exited $rc: $(last_line "$(tail -n 5 -- "$dir/join-h$i.log")")"
    fi
  done
  t1=$(now)
  if [[ -n $first ]]; then
    describe_cluster
    result fail "$(elapsed "$t0" "$t1")" "$first; etcd then: $check_summary"
  elif cluster_ok; then
    result ok "$(elapsed "$t0" "$t1")"
  else
    result fail "$(elapsed "$t0" "$t1")" "every join exited 0 but $check_reason"
  fi
}

# --- raw etcd: (b) and (c) --------------------------------------------------

# raw_pki: the PKI of every host, made with hakube; hosts 2..N get h1's CAs
# and service-account key first, so their leaves are signed by the same CAs.
raw_pki() {
  local i pki f
  local -a shared=(ca.crt ca.key front-proxy-ca.crt front-proxy-ca.key etcd/ca.crt etcd/ca.key sa.key sa.pub)
  for ((i = 1; i <= hosts; i++)); do
    mkdir -p -- "$(root_of "$i")"
    pki=$(pki_of "$i")
    if ((i > 1)); then
      mkdir -p -- "$pki/etcd"
      for f in "${shared[@]}"; do
        cp -- "$(pki_of 1)/$f" "$pki/$f" || setup_fail "copying $f from h1 to h$i"
        if [[ $f == *.key ]]; then
          chmod 0600 "$pki/$f"
        fi
      done
    fi
    timeout --foreground -k 10 120 "$bin" --root "$(root_of "$i")" certs generate \
      --advertise-address "$(ip_of "$i")" --node-name "h$i" </dev/null >"$dir/certs-h$i.log" 2>&1 ||
      setup_fail "hakube certs generate on h$i" "$dir/certs-h$i.log"
    for f in etcd/server.crt etcd/peer.crt etcd/healthcheck-client.crt; do
      [[ -s $pki/$f ]] || setup_fail "hakube certs generate wrote no $pki/$f" "$dir/certs-h$i.log"
    done
    if ((i > 1)) && ! cmp -s -- "$(pki_of 1)/etcd/ca.crt" "$pki/etcd/ca.crt"; then
      setup_fail "hakube certs generate on h$i replaced the etcd CA copied from h1"
    fi
  done
}

# start_etcd I STATE CLUSTER: etcd of host I in the background; its pid goes
# to DIR/etcd-h<I>.pid, its log to DIR/etcd-h<I>.log.
start_etcd() {
  local i=$1 state=$2 cluster=$3 ip pki data
  ip=$(ip_of "$i")
  pki=$(pki_of "$i")
  data=$(root_of "$i")/etcd-data
  mkdir -m 0700 -- "$data"
  ip netns exec "$(ns_of "$i")" etcd --name "h$i" --data-dir "$data" --logger zap --log-outputs stderr \
    --listen-client-urls "https://$ip:2379" --advertise-client-urls "https://$ip:2379" \
    --listen-peer-urls "https://$ip:2380" --initial-advertise-peer-urls "https://$ip:2380" \
    --initial-cluster "$cluster" --initial-cluster-state "$state" \
    --client-cert-auth --trusted-ca-file "$pki/etcd/ca.crt" \
    --cert-file "$pki/etcd/server.crt" --key-file "$pki/etcd/server.key" \
    --peer-client-cert-auth --peer-trusted-ca-file "$pki/etcd/ca.crt" \
    --peer-cert-file "$pki/etcd/peer.crt" --peer-key-file "$pki/etcd/peer.key" \
    </dev/null >"$dir/etcd-h$i.log" 2>&1 &
  echo $! >"$dir/etcd-h$i.pid"
}

# dead_etcd: prints "h<I>" for the first host whose etcd was started and
# has exited; false when none has.
dead_etcd() {
  local i pid
  for ((i = 1; i <= hosts; i++)); do
    [[ -s $dir/etcd-h$i.pid ]] || continue
    read -r pid <"$dir/etcd-h$i.pid" || continue
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "h$i"
      return 0
    fi
  done
  return 1
}

# why_dead H: the last error line of an exited etcd's log.
why_dead() {
  local line
  line=$(grep -E '"level":"(fatal|panic|error)"' -- "$dir/etcd-$1.log" 2>/dev/null | tail -n 1 |
    sed -E 's/.*"msg":"([^"]*)".*"error":"([^"]*)".*/\1: \2/; s/.*"msg":"([^"]*)".*/\1/') || true
  [[ -n $line ]] || line=$(tail -n 1 -- "$dir/etcd-$1.log" 2>/dev/null) || true
  printf 'etcd of %s exited (%s)\n' "$1" "${line:-no log}"
}

# raw_setup: PKI, then etcd on h1 as a new one-member cluster, healthy.
raw_setup() {
  local deadline who
  raw_pki
  start_etcd 1 new "h1=https://$(ip_of 1):2380"
  deadline=$((SECONDS + raw_timeout))
  until ctl endpoint health >/dev/null 2>&1; do
    if who=$(dead_etcd); then
      setup_fail "$(why_dead "$who")" "$dir/etcd-h1.log"
    fi
    ((SECONDS < deadline)) || setup_fail "etcd on h1 not healthy after ${raw_timeout} s" "$dir/etcd-h1.log"
    sleep 0.1
  done
}

# initial_cluster OUTPUT: ETCD_INITIAL_CLUSTER from `member add` output.
initial_cluster() {
  sed -n 's/^ETCD_INITIAL_CLUSTER="\(.*\)"$/\1/p' <<<"$1"
}

# naive_join I: `member add` a voter and start its etcd, no retry. Writes
# DIR/add-h<I>: "ok" or "fail EPOCH REASON".
naive_join() {
  local i=$1 out cluster
  if ! out=$(ctl member add "h$i" --peer-urls="https://$(ip_of "$i"):2380" 2>&1); then
    printf 'fail %s h%s: member add: %s\n' "$(now)" "$i" "$(last_line "$out")" >"$dir/add-h$i"
    return 1
  fi
  cluster=$(initial_cluster "$out")
  if [[ -z $cluster ]]; then
    printf 'fail %s h%s: no ETCD_INITIAL_CLUSTER in member add output: %s\n' "$(now)" "$i" \
      "$(last_line "$out")" >"$dir/add-h$i"
    return 1
  fi
  start_etcd "$i" existing "$cluster"
  echo ok >"$dir/add-h$i"
}

# (b) naive concurrent.
variant_naive() {
  local i t0 t1 deadline done_count first="" who f line
  local -a pids=()
  raw_setup
  t0=$(now)
  for ((i = 2; i <= hosts; i++)); do
    naive_join "$i" &
    pids[i]=$!
  done
  deadline=$((SECONDS + raw_timeout))
  while :; do
    done_count=0
    for ((i = 2; i <= hosts; i++)); do
      [[ -s $dir/add-h$i ]] && done_count=$((done_count + 1))
    done
    # The first refused add, by the time it was refused.
    first=$(for ((i = 2; i <= hosts; i++)); do
      f=$dir/add-h$i
      if [[ -s $f ]] && read -r line <"$f" && [[ $line == fail* ]]; then
        echo "${line#fail }"
      fi
    done | sort -g | head -n 1 | cut -d' ' -f2-)
    if [[ -n $first ]]; then
      break
    fi
    if who=$(dead_etcd); then
      first=$(why_dead "$who")
      break
    fi
    if ((done_count == hosts - 1)) && cluster_ok; then
      t1=$(now)
      result ok "$(elapsed "$t0" "$t1")"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      if ((done_count < hosts - 1)); then
        first="a member add still had no answer after ${raw_timeout} s"
      else
        first="not $hosts healthy voting members after ${raw_timeout} s: $check_reason"
      fi
      break
    fi
    sleep 0.2
  done
  t1=$(now)
  # What became of the cluster: let the adds still in flight finish and the
  # members they started settle (at most 10 s), then describe it.
  deadline=$((SECONDS + 10))
  for ((i = 2; i <= hosts; i++)); do
    while kill -0 "${pids[i]}" 2>/dev/null && ((SECONDS < deadline)); do
      sleep 0.1
    done
  done
  until cluster_ok || ((SECONDS >= deadline)); do
    sleep 0.5
  done
  describe_cluster
  result fail "$(elapsed "$t0" "$t1")" "$first; etcd then: $check_summary"
}

# retry_ctl SECONDS PATTERN ARGS...: etcdctl ARGS every 0.2 s while it fails
# with output matching PATTERN (any failure when PATTERN is empty), for at
# most SECONDS. Leaves the output in $ctl_out and the tries in $ctl_tries.
ctl_out=""
ctl_tries=0
retry_ctl() {
  local bound=$1 pattern=$2 deadline
  shift 2
  deadline=$((SECONDS + bound))
  ctl_tries=0
  while :; do
    ctl_tries=$((ctl_tries + 1))
    ctl_out=$(ctl "$@" 2>&1) && return 0
    if [[ -n $pattern ]] && ! grep -qE -- "$pattern" <<<"$ctl_out"; then
      return 1
    fi
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# (c) sequential learner.
variant_sequential() {
  local i t0 t1 id cluster deadline who tries=""
  raw_setup
  t0=$(now)
  for ((i = 2; i <= hosts; i++)); do
    if ! retry_ctl "$raw_timeout" 'unhealthy cluster' member add "h$i" --learner \
      --peer-urls="https://$(ip_of "$i"):2380"; then
      result fail "$(elapsed "$t0" "$(now)")" "h$i: member add --learner: $(last_line "$ctl_out")"
      return 0
    fi
    tries+=" h$i add x$ctl_tries"
    # "Member %16x added to cluster ...": a short id is padded with spaces.
    id=$(awk '$1 == "Member" && $3 == "added" { print $2; exit }' <<<"$ctl_out")
    cluster=$(initial_cluster "$ctl_out")
    if [[ -z $id || -z $cluster ]]; then
      result fail "$(elapsed "$t0" "$(now)")" "h$i: cannot read the member id or ETCD_INITIAL_CLUSTER: $(last_line "$ctl_out")"
      return 0
    fi
    start_etcd "$i" existing "$cluster"
    if ! retry_ctl "$raw_timeout" '' member promote "$id"; then
      if who=$(dead_etcd); then
        result fail "$(elapsed "$t0" "$(now)")" "$(why_dead "$who")"
      else
        result fail "$(elapsed "$t0" "$(now)")" "h$i: member promote: $(last_line "$ctl_out")"
      fi
      return 0
    fi
    tries+=", promote x$ctl_tries"
  done
  deadline=$((SECONDS + raw_timeout))
  until cluster_ok; do
    if ((SECONDS >= deadline)); then
      result fail "$(elapsed "$t0" "$(now)")" "after the last promote: $check_reason"
      return 0
    fi
    sleep 0.1
  done
  t1=$(now)
  result ok "$(elapsed "$t0" "$t1")"
  printf 'tries:%s\n' "$tries" >&2
}

# Entry point of a variant process: __variant VARIANT N DIR.
run_variant_process() {
  local variant=$1
  hosts=$2
  dir=$3
  [[ -n $bin && -d $dir && $hosts =~ ^[0-9]+$ ]] || die "__variant: bad arguments or environment"
  # shellcheck disable=SC2317  # called from the EXIT trap
  on_variant_exit() {
    local rc=$? pids
    pids=$(jobs -p)
    if [[ -n $pids ]]; then
      # shellcheck disable=SC2086  # one pid per word
      kill -TERM $pids 2>/dev/null || true
    fi
    if ((rc == 0 && !result_written)); then
      rc=3
    fi
    exit "$rc"
  }
  trap on_variant_exit EXIT
  case "$variant" in
    hakube) variant_hakube ;;
    naive) variant_naive ;;
    sequential) variant_sequential ;;
    *) die "unknown variant '$variant'" ;;
  esac
}

# ---------------------------------------------------------------------------
# The parent: trials, teardown, table.

work=""
variant_pid=""  # the running variant process (a timeout)
current_dir=""  # the variant's directory, while its network exists
current_n=0
current_variant=""
kept_failures=0

# teardown KEEP_LOGS: reset the hakube hosts (last first, so each leaves etcd
# while the others still have quorum), stop what still runs in the
# namespaces, delete them, and remove the trial's files (only the bulky
# etcd data when KEEP_LOGS is 1).
teardown() {
  local keep=$1 i ns root
  [[ -n $current_dir ]] || return 0
  if [[ $current_variant == hakube ]]; then
    for ((i = current_n; i >= 1; i--)); do
      ns=$(ns_of "$i")
      root=$current_dir/h$i
      [[ -d $root/var/lib/hakube ]] || continue
      if ((keep)) && [[ -d $root/var/lib/hakube/logs ]]; then
        cp -r -- "$root/var/lib/hakube/logs" "$current_dir/h$i-logs" 2>/dev/null || true
      fi
      if ns_exists "$ns" && timeout --foreground -k 5 "$reset_timeout" ip netns exec "$ns" \
        "$bin" --root "$root" reset </dev/null >>"$current_dir/teardown.log" 2>&1; then
        continue
      fi
      # Refused (say, leaving etcd would cost quorum) or too slow: stop the
      # host's processes, then reset only removes files.
      echo "h$i: reset failed; stopping its processes and resetting again" >>"$current_dir/teardown.log"
      if ns_exists "$ns"; then
        kill_ns_processes "$ns"
      fi
      timeout --foreground -k 5 "$reset_timeout" "$bin" --root "$root" reset \
        </dev/null >>"$current_dir/teardown.log" 2>&1 || warn "hakube reset of $root failed"
    done
  fi
  for ((i = current_n; i >= 1; i--)); do
    drop_ns "$(ns_of "$i")"
  done
  drop_ns "$(switch_ns)"
  unmount_below "$current_dir"
  if ((keep)); then
    rm -rf --one-file-system -- "$current_dir"/h*/etcd-data "$current_dir"/h*/var/lib/hakube/etcd
  else
    rm -rf --one-file-system -- "$current_dir"
  fi
  current_dir=""
}

# stop_variant: TERM the variant process (timeout passes it on to the whole
# process group), KILL after 10 s.
stop_variant() {
  local i
  [[ -n $variant_pid ]] || return 0
  kill -TERM "$variant_pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$variant_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$variant_pid" 2>/dev/null || true
  variant_pid=""
}

cleanup() {
  local rc=$? ns
  trap - EXIT INT TERM
  stop_variant
  if [[ -n $current_dir ]]; then
    teardown 1
  fi
  while read -r ns; do
    [[ -n $ns ]] && drop_ns "$ns"
  done < <(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$ns_prefix-" || true)
  if [[ -n $work && -d $work ]]; then
    if ((rc != 0)); then
      msg "files of the run kept in $work"
    elif ((kept_failures)); then
      msg "logs of the $kept_failures failed run(s) kept in $work"
    else
      rm -rf --one-file-system -- "$work"
    fi
  fi
  exit "$rc"
}

# measure VARIANT N TRIAL: one variant on a fresh network; sets $m_status
# (ok|fail), $m_secs and $m_reason.
m_status=""
m_secs=""
m_reason=""
measure() {
  local variant=$1 n=$2 trial=$3 rc line
  current_dir=$work/n$n-t$trial-$variant
  current_n=$n
  current_variant=$variant
  mkdir -p -- "$current_dir"
  build_net "$n"
  BENCH_NS_PREFIX=$ns_prefix BENCH_NET=$net BENCH_BIN=$bin \
    timeout -k 10 "$variant_timeout" bash "$script" __variant "$variant" "$n" "$current_dir" \
    </dev/null >"$current_dir/variant.log" 2>&1 &
  variant_pid=$!
  rc=0
  wait "$variant_pid" || rc=$?
  variant_pid=""
  case "$rc" in
    0)
      read -r m_status m_secs m_reason <"$current_dir/result" ||
        fail "$variant (N=$n, trial $trial) wrote no result" "$current_dir/variant.log"
      ;;
    124 | 137)
      m_status=fail m_secs=$variant_timeout m_reason="killed after ${variant_timeout} s"
      ;;
    *)
      fail "$variant (N=$n, trial $trial) could not be run (exit $rc); files in $current_dir" \
        "$current_dir/variant.log"
      ;;
  esac
  if [[ $m_status == ok ]]; then
    teardown 0
  else
    kept_failures=$((kept_failures + 1))
    teardown 1
  fi
}

main() {
  local sizes=${BENCH_SIZES:-3 5 7} trials=${BENCH_TRIALS:-3} n t k v label
  while (($#)); do
    case "$1" in
      --sizes | --trials)
        (($# >= 2)) || {
          usage
          die "$1 needs a value"
        }
        if [[ $1 == --sizes ]]; then sizes=$2; else trials=$2; fi
        shift 2
        ;;
      --sizes=* | --trials=*)
        set -- "${1%%=*}" "${1#*=}" "${@:2}"
        ;;
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
  local -a size_list
  read -r -a size_list <<<"$sizes"
  ((${#size_list[@]})) || die "no sizes given"
  for n in "${size_list[@]}"; do
    if [[ ! $n =~ ^[1-9][0-9]*$ ]] || ((n < 2 || n > 20)); then
      die "each size must be between 2 and 20 masters (got '$n')"
    fi
  done
  if [[ ! $trials =~ ^[1-9][0-9]*$ ]] || ((trials > 100)); then
    die "trials must be between 1 and 100 (got '$trials')"
  fi
  [[ $EUID -eq 0 ]] || die "network namespaces need root: run it as root (or with sudo)"

  # shellcheck source=scripts/deps.sh
  source "$script_dir/deps.sh"
  hakube_ensure_deps || fail "installing dependencies (etcd, etcdctl, openssl, ip)"

  bin=${HAKUBE_BIN:-$repo/target/release/hakube}
  bin=$(readlink -f -- "$bin") || die "$bin does not exist (build it with cargo build --release, or set HAKUBE_BIN)"
  [[ -f $bin && -x $bin ]] || die "$bin is not an executable file (build it, or set HAKUBE_BIN)"
  "$bin" version >/dev/null 2>&1 || fail "$bin version"
  etcd --version >/dev/null 2>&1 || fail "etcd --version"

  work=$(mktemp -d "${TMPDIR:-/tmp}/hakube-bench-join.XXXXXX") || die "cannot create a work directory"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  # Per "variant,N": the times of the successes, their count, the reasons
  # of the failures.
  local -A times=() oks=() reasons=()
  local -a order parts
  local line p
  msg "sizes: ${size_list[*]}; $trials trial(s) each; subnet $net.0/24; namespaces $ns_prefix-*; hakube: $bin"
  for n in "${size_list[@]}"; do
    for ((t = 1; t <= trials; t++)); do
      order=()
      parts=()
      for ((k = 0; k < ${#variants[@]}; k++)); do
        order+=("${variants[(k + t - 1) % ${#variants[@]}]}")
      done
      for v in "${order[@]}"; do
        measure "$v" "$n" "$t"
        if [[ $m_status == ok ]]; then
          times[$v,$n]+=" $m_secs"
          oks[$v,$n]=$((${oks[$v,$n]:-0} + 1))
          parts+=("$v ok ${m_secs}s")
        else
          reasons[$v,$n]+="    trial $t: ${m_reason}"$'\n'
          parts+=("$v FAILED after ${m_secs}s ($m_reason)")
        fi
      done
      line="N=$n trial $t/$trials:"
      for p in "${parts[@]}"; do
        line+=" $p;"
      done
      msg "${line%;}"
    done
  done

  local -a vals
  local med lo hi seq_med row_ratio okc goal limit
  printf '\nN masters joined at once; times in seconds over the successful trials; %d trial(s) each.\n\n' "$trials"
  printf '%-3s %-20s %-9s %9s %7s %7s  %s\n' N variant success "median s" "min s" "max s" "ratio to sequential"
  for n in "${size_list[@]}"; do
    read -r -a vals <<<"${times[sequential,$n]:-}"
    seq_med=$(median "${vals[@]}")
    for v in "${variants[@]}"; do
      case "$v" in
        hakube) label="hakube concurrent" ;;
        naive) label="naive concurrent" ;;
        sequential) label="sequential learner" ;;
      esac
      read -r -a vals <<<"${times[$v,$n]:-}"
      med=$(median "${vals[@]}")
      read -r lo hi < <(minmax "${vals[@]}")
      row_ratio=$(ratio "$med" "$seq_med")
      printf '%-3s %-20s %-9s %9s %7s %7s  %s\n' "$n" "$label" "${oks[$v,$n]:-0}/$trials" "$med" "$lo" "$hi" "$row_ratio"
    done
  done
  printf '\n'
  for n in "${size_list[@]}"; do
    okc=${oks[hakube,$n]:-0}
    read -r -a vals <<<"${times[hakube,$n]:-}"
    med=$(median "${vals[@]}")
    read -r -a vals <<<"${times[sequential,$n]:-}"
    seq_med=$(median "${vals[@]}")
    limit=$(awk -v s="$seq_med" -v f="$goal_factor" 'BEGIN { if (s == "-") print "-"; else printf "%.3f", s * f }')
    goal=$(awk -v ok="$okc" -v t="$trials" -v m="$med" -v l="$limit" \
      'BEGIN { print (ok == t && m != "-" && l != "-" && m + 0 <= l + 0) ? "met" : "not met" }')
    printf 'N=%-2s goal (hakube %s/%s succeed, median %s s <= %s x sequential median %s s = %s s): %s\n' \
      "$n" "$okc" "$trials" "$med" "$goal_factor" "$seq_med" "$limit" "$goal"
  done
  local any=0
  for n in "${size_list[@]}"; do
    for v in "${variants[@]}"; do
      [[ -n ${reasons[$v,$n]:-} ]] || continue
      if ((!any)); then
        printf '\nFailures:\n'
        any=1
      fi
      printf '  N=%s %s:\n%s' "$n" "$v" "${reasons[$v,$n]}"
    done
  done
}

# Internal entry point: one variant, run by measure.
if [[ ${1:-} == __variant ]]; then
  (($# == 4)) || die "__variant needs VARIANT N DIR"
  run_variant_process "$2" "$3" "$4"
  exit
fi

main "$@"
