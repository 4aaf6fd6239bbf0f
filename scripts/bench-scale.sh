#!/usr/bin/env bash
#
# Benchmark (not a test): what hakube costs as the cluster grows, with
# simulated nodes.
#
#   scripts/bench-scale.sh [--sizes 50,500] [--seconds 180] [--baseline-bin PATH]
#
# Brings up a sandbox (3 masters + 1 worker, lost-node-toleration=60s),
# then for each size runs examples/hollow_nodes.rs in the first master's
# network: that many hollow Nodes, each with a Lease renewed every 10 s and
# a hakube heartbeat every 5 s, one of them lost after 60 s. It reports
# the API server's request rate (from its /metrics; the hollow nodes' own
# renewals are given apart), the leader's purge round time, the time from
# the loss to the purge's start, and every agent's CPU and memory.
# --baseline-bin runs the same sizes with another hakube binary in a second
# sandbox, side by side in the table (an older build: the comparison is
# hakube with itself, as no other tool does this job).
#
# Goals (printed with the figures): the leader's round under 1 s at 500
# nodes; the lost node's purge starting within toleration + 10 s.
# Exits 0 whether or not the goals are met, non-zero when a step could not
# be run (it is named).
set -euo pipefail

prog=bench-scale.sh
script=$(readlink -f -- "${BASH_SOURCE[0]}")
script_dir=${script%/*}
repo=$(cd -- "$script_dir/.." && pwd -P)

sizes=50,500 seconds=180 baseline_bin=

msg() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$prog" "$*" >&2
  exit 1
}
usage() {
  cat >&2 <<EOF
usage: scripts/$prog [--sizes 50,500] [--seconds 180] [--baseline-bin PATH]
Simulated nodes against a sandbox: API load, leader round time, time to
purge a lost node, agents' CPU and memory.
EOF
}

while (($#)); do
  case $1 in
    --sizes)
      [[ ${2:-} =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--sizes needs numbers separated by commas"
      sizes=$2
      shift 2
      ;;
    --seconds)
      [[ ${2:-} =~ ^[0-9]+$ ]] && ((${2} >= 120)) || die "--seconds needs a number of at least 120"
      seconds=$2
      shift 2
      ;;
    --baseline-bin)
      [[ -x ${2:-} ]] || die "--baseline-bin needs an executable hakube"
      baseline_bin=$(readlink -f -- "$2")
      shift 2
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      usage
      die "unknown argument: $1"
      ;;
  esac
done
[[ ${EUID:-$(id -u)} -eq 0 ]] || die "run it as root (network namespaces)"

work=$(mktemp -d "${TMPDIR:-/tmp}/hakube-bench-scale.XXXXXX")
sandbox_dir=
cleanup() {
  if [[ -n $sandbox_dir && -d $sandbox_dir ]]; then
    HAKUBE_SANDBOX_DIR=$sandbox_dir bash "$script_dir/sandbox.sh" down >/dev/null 2>&1 || true
  fi
  rm -rf -- "$work"
}
trap cleanup EXIT

msg "building the release binary and the hollow-node simulator"
(cd "$repo" && cargo build --release --quiet --bin hakube --example hollow_nodes) || die "cargo build failed"
sim=$repo/target/release/examples/hollow_nodes

# run_sizes LABEL BIN: a sandbox with BIN, every size in it; one JSON line per size.
run_sizes() {
  local label=$1 bin=$2 n
  sandbox_dir=$work/sandbox-$label
  msg "$label: sandbox.sh up (3 masters, 1 worker) with $bin"
  HAKUBE_BIN=$bin HAKUBE_SANDBOX_DIR=$sandbox_dir HAKUBE_SANDBOX_INSTALL='lost-node-toleration=60s' \
    bash "$script_dir/sandbox.sh" up --masters 3 --workers 1 >"$work/up-$label.log" 2>&1 || {
    tail -n 30 -- "$work/up-$label.log" >&2
    die "$label: sandbox.sh up failed (log above)"
  }
  local roots=()
  for h in m1 m2 m3 w1; do roots+=(--agent-root "$sandbox_dir/$h"); done
  IFS=, read -ra ns <<<"$sizes"
  for n in "${ns[@]}"; do
    msg "$label: $n hollow nodes for ${seconds}s (one lost after 60s)"
    ip netns exec hk-m1 "$sim" --root "$sandbox_dir/m1" --count "$n" --seconds "$seconds" \
      --lose 1 --lose-after 60 "${roots[@]}" >"$work/$label-$n.json" 2>"$work/$label-$n.log" || {
      tail -n 20 -- "$work/$label-$n.log" >&2
      die "$label: the simulator failed at $n nodes (log above)"
    }
    cat -- "$work/$label-$n.json"
  done
  HAKUBE_SANDBOX_DIR=$sandbox_dir bash "$script_dir/sandbox.sh" down >/dev/null 2>&1 || die "$label: sandbox.sh down failed"
  sandbox_dir=
}

run_sizes hakube "$repo/target/release/hakube" >"$work/results.jsonl"
if [[ -n $baseline_bin ]]; then
  run_sizes baseline "$baseline_bin" >"$work/baseline.jsonl"
fi

python3 - "$work/results.jsonl" "${baseline_bin:+$work/baseline.jsonl}" <<'EOF'
import json, sys
def load(p):
    return {r["hollow_nodes"]: r for r in map(json.loads, open(p))} if p else {}
now, base = load(sys.argv[1]), load(sys.argv[2] if len(sys.argv) > 2 else "")
def watch_free(r):
    # Requests that are not the hollow nodes' own lease renewals (PATCH leases).
    t = r["api_requests_per_s"]
    return round(t["total"] - t["hollow_nodes_own"], 1)
def agents(r, kind):
    a = r["agents"]
    cpu = [x["cpu_percent"] for x in a]
    rss = [x["max_rss_kib"] // 1024 for x in a]
    return (f"{min(cpu)}-{max(cpu)}%", f"{min(rss)}-{max(rss)} MiB")[kind]
rows = [
    ("API requests/s, all", lambda r: r["api_requests_per_s"]["total"], ""),
    ("API requests/s, not the hollow nodes' own", watch_free, "flat in N"),
    ("LIST nodes/s", lambda r: r["api_requests_per_s"]["by_verb_and_resource"].get("LIST nodes", 0), ""),
    ("GET leases/s", lambda r: r["api_requests_per_s"]["by_verb_and_resource"].get("GET leases", 0), ""),
    # A build that does not record its round time shows "-".
    ("leader round ms, p50", lambda r: r["leader_round_ms"]["p50"] if r["leader_round_ms"]["samples"] else "-", ""),
    ("leader round ms, p95", lambda r: r["leader_round_ms"]["p95"] if r["leader_round_ms"]["samples"] else "-", "< 1000 at 500"),
    # Sampled every 2 s.
    ("loss to purge start, s", lambda r: round(min(r["purge_began_after_loss_s"].values(), default=float("nan")), 1), "< 70 (60 s + 10)"),
    ("agents' CPU (min-max)", lambda r: agents(r, 0), ""),
    ("agents' memory (min-max)", lambda r: agents(r, 1), ""),
]
sizes = sorted(now)
head = "".join(f"{('N=' + str(n)):>16}" + (f"{'baseline':>12}" if base else "") for n in sizes)
print(f"\nbench-scale.sh: hollow nodes against 3 masters + 1 worker\n{'':44}{head}   goal")
for name, f, goal in rows:
    cells = ""
    for n in sizes:
        cells += f"{str(f(now[n])):>16}"
        if base:
            cells += f"{str(f(base[n])) if n in base else '-':>12}"
    print(f"{name:44}{cells}   {goal}")
EOF
