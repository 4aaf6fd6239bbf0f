#!/usr/bin/env bash
#
# Benchmark (not a test): how long hakube takes from nothing to a cluster
# that runs applications, and what the bundle costs to build.
#
#   scripts/bench-cluster.sh [--trials N] [--masters N] [--workers N] [--cold-bundle]
#
# Each trial, with the bundle cached: `scripts/sandbox.sh up` in a sandbox
# directory of its own (3 masters + 2 workers by default, joined at once),
# then waits until CoreDNS answers a name through the kube-dns Service from
# the first master's network (busybox's nslookup against the cluster DNS
# address: kube-proxy's rules and a ready CoreDNS both needed). The time is
# from the start of `up` to that answer; `up` itself returns once every
# Node is Ready. `sandbox.sh down` after each trial (not timed).
# --cold-bundle also times `kube-bundle.sh` into an empty cache directory
# (Go's build cache included: everything is compiled; the module download
# cache is the machine's own, `go env GOMODCACHE`, so modules fetched once
# are not fetched again), as many times as --trials: 15 to 45 minutes each
# on 2 cores.
# The table gives min/median/max and the goal (a warm bring-up under 90 s).
# There is no like-for-like baseline on this machine (no kubeadm, no
# images to pull), so the goal is absolute. Exits 0 whether or not the goal
# is met, non-zero when a step could not be run (it is named).
#
# Environment:
#   HAKUBE_BIN  hakube binary (default: the sandbox's own choice, a release build)
set -euo pipefail

prog=bench-cluster.sh
script=$(readlink -f -- "${BASH_SOURCE[0]}")
script_dir=${script%/*}
# shellcheck source=scripts/bench-lib.sh
source "$script_dir/bench-lib.sh"

trials=3 masters=3 workers=2 cold=0
dns_timeout=300 # seconds CoreDNS may take to answer after `up`

msg() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$prog" "$*" >&2
  exit 1
}
usage() {
  cat >&2 <<EOF
usage: scripts/$prog [--trials N] [--masters N] [--workers N] [--cold-bundle]
Times scripts/sandbox.sh up until CoreDNS answers (bundle cached), and with
--cold-bundle the bundle's build into an empty cache.
EOF
}

while (($#)); do
  case $1 in
    --trials | --masters | --workers)
      [[ ${2:-} =~ ^[0-9]+$ ]] || {
        usage
        die "$1 needs a number"
      }
      case $1 in
        --trials) trials=$2 ;;
        --masters) masters=$2 ;;
        --workers) workers=$2 ;;
      esac
      shift 2
      ;;
    --cold-bundle)
      cold=1
      shift
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
((trials >= 1)) || die "--trials must be at least 1"
[[ ${EUID:-$(id -u)} -eq 0 ]] || die "run it as root (network namespaces)"

work=$(mktemp -d "${TMPDIR:-/tmp}/hakube-bench-cluster.XXXXXX")
sandbox_dir=
cleanup() {
  if [[ -n $sandbox_dir && -d $sandbox_dir ]]; then
    HAKUBE_SANDBOX_DIR=$sandbox_dir bash "$script_dir/sandbox.sh" down >/dev/null 2>&1 || true
  fi
  rm -rf -- "$work"
}
trap cleanup EXIT

bundle=$(bash "$script_dir/kube-bundle.sh") || die "could not build or find the Kubernetes bundle"
dns_ip=10.96.0.10

# answers: CoreDNS answers for the API's Service name, through its Service.
answers() {
  ip netns exec hk-m1 timeout 5 busybox nslookup kubernetes.default.svc.cluster.local "$dns_ip" 2>/dev/null |
    grep -q '^Address: 10\.96\.0\.1$'
}

up_times=() dns_times=()
for ((t = 1; t <= trials; t++)); do
  sandbox_dir=$work/sandbox-$t
  msg "trial $t/$trials: sandbox.sh up --masters $masters --workers $workers"
  start=$(now)
  HAKUBE_SANDBOX_DIR=$sandbox_dir bash "$script_dir/sandbox.sh" up --masters "$masters" --workers "$workers" \
    >"$work/up-$t.log" 2>&1 || {
    tail -n 30 -- "$work/up-$t.log" >&2
    die "trial $t: sandbox.sh up failed (log above)"
  }
  ready=$(now)
  deadline=$((SECONDS + dns_timeout))
  until answers; do
    ((SECONDS < deadline)) || die "trial $t: CoreDNS did not answer within ${dns_timeout}s of up"
    sleep 0.2
  done
  done_at=$(now)
  up_times+=("$(elapsed "$start" "$ready")")
  dns_times+=("$(elapsed "$start" "$done_at")")
  msg "trial $t: Nodes Ready in ${up_times[-1]} s, CoreDNS answering in ${dns_times[-1]} s"
  HAKUBE_SANDBOX_DIR=$sandbox_dir bash "$script_dir/sandbox.sh" down >/dev/null 2>&1 ||
    die "trial $t: sandbox.sh down failed"
  sandbox_dir=
done

cold_times=()
if ((cold)); then
  for ((t = 1; t <= trials; t++)); do
    cache=$work/cold-cache-$t
    msg "cold bundle build $t/$trials into $cache (15 to 45 minutes on 2 cores)"
    start=$(now)
    HAKUBE_CACHE_DIR=$cache bash "$script_dir/kube-bundle.sh" >/dev/null 2>"$work/cold-$t.log" || {
      tail -n 30 -- "$work/cold-$t.log" >&2
      die "cold bundle build $t failed (log above)"
    }
    cold_times+=("$(elapsed "$start" "$(now)")")
    rm -rf -- "$cache"
  done
fi

row() {
  local what=$1 goal=$2
  shift 2
  local mm
  mm=$(minmax "$@")
  printf '%-44s %9s %9s %9s   %s\n' "$what" "${mm% *}" "$(median "$@")" "${mm#* }" "$goal"
}
printf '\n%s, %d trial(s), %d masters + %d workers, bundle %s\n' "$prog" "$trials" "$masters" "$workers" "${bundle##*/}"
printf '%-44s %9s %9s %9s   %s\n' "seconds" "min" "median" "max" "goal"
row "up: nothing to every Node Ready" "" "${up_times[@]}"
row "up + CoreDNS answering through its Service" "< 90" "${dns_times[@]}"
if ((cold)); then
  row "kube-bundle.sh into an empty cache" "" "${cold_times[@]}"
fi
