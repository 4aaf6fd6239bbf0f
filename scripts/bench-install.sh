#!/usr/bin/env bash
#
# Benchmark (not a test): how fast hakube brings up a healthy, mTLS-secured
# etcd compared with doing the same job the kubeadm way from a shell.
#
#   scripts/bench-install.sh [--trials N]
#
# Each trial measures, each run in a network namespace of its own so that
# ports never clash:
#   (a) hakube install --components etcd --no-systemd, from start to return
#       (it returns once etcd is healthy), then checks etcd with etcdctl and
#       records the agent's resident memory after 2 s idle;
#   (b) the shell baseline: an RSA-2048 PKI with kubeadm's file names made
#       with the openssl CLI, then etcd started with the same mTLS flags and
#       polled with `etcdctl endpoint health` every 0.1 s until healthy;
#   (c) the PKI alone: `hakube certs generate` (ECDSA P-256, then RSA-2048)
#       against the openssl PKI of (b).
# (a) and (b) alternate which runs first from one trial to the next.
# The table at the end gives medians, hakube/baseline ratios and the goals.
# It exits 0 whether or not the goals are met, non-zero only when a step
# could not be run (the step is named).
#
# Environment:
#   BENCH_TRIALS  trials (default 5)
#   HAKUBE_BIN    hakube binary to measure instead of building target/release/hakube
#   TMPDIR        where the trials' files go (default /tmp)
set -euo pipefail

prog=bench-install.sh
script=$(readlink -f -- "${BASH_SOURCE[0]}")
script_dir=${script%/*}
repo=$(cd -- "$script_dir/.." && pwd -P)

health_timeout=60   # seconds the baseline's etcd may take to become healthy
install_timeout=300 # seconds one hakube command may take
idle_seconds=2      # agent idle time before reading its RSS
node=bench
ns_prefix=hk-bench-$$

msg() { printf '%s: %s\n' "$prog" "$*" >&2; }
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
usage: scripts/$prog [--trials N]

Times hakube's install (etcd only) against a kubeadm-style shell baseline
(openssl CLI + etcd), and hakube's PKI generation against openssl's.
  --trials N   trials per measure (default: BENCH_TRIALS or 5)
Environment: BENCH_TRIALS, HAKUBE_BIN (skip the release build), TMPDIR.
EOF
}

# shellcheck source=scripts/bench-lib.sh
source "$script_dir/bench-lib.sh"

# ---------------------------------------------------------------------------
# The shell baseline: what kubeadm does, with the openssl CLI.

rsa_key() {
  openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1"
  chmod 0600 "$1"
}

# ca DIR NAME CN: self-signed CA, NAME.key and NAME.crt.
ca() {
  local dir=$1 name=$2 cn=$3
  rsa_key "$dir/$name.key"
  openssl req -x509 -new -key "$dir/$name.key" -sha256 -days 3650 -subj "/CN=$cn" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" \
    -out "$dir/$name.crt"
}

# leaf DIR NAME CA CN ORG USAGE [SAN]: NAME.key and NAME.crt signed by CA.
# USAGE is server, client or both; ORG may be empty.
leaf() {
  local dir=$1 name=$2 ca_name=$3 cn=$4 org=$5 usage=$6 san=${7:-}
  local subj="/CN=$cn" eku ext
  if [[ -n $org ]]; then
    subj="/O=$org$subj"
  fi
  case "$usage" in
    server) eku=serverAuth ;;
    client) eku=clientAuth ;;
    both) eku="serverAuth, clientAuth" ;;
    *) return 2 ;;
  esac
  ext=$dir/$name.ext
  printf '%s\n' "basicConstraints = critical, CA:FALSE" \
    "keyUsage = critical, digitalSignature, keyEncipherment" \
    "extendedKeyUsage = $eku" >"$ext"
  if [[ -n $san ]]; then
    printf 'subjectAltName = %s\n' "$san" >>"$ext"
  fi
  rsa_key "$dir/$name.key"
  openssl req -new -key "$dir/$name.key" -subj "$subj" -out "$dir/$name.csr"
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/$ca_name.crt" -CAkey "$dir/$ca_name.key" \
    -CAcreateserial -CAserial "$dir/$ca_name.srl" -days 365 -sha256 \
    -extfile "$ext" -out "$dir/$name.crt"
  rm -f -- "$dir/$name.csr" "$ext"
}

# openssl_pki DIR: kubeadm's control-plane PKI, RSA-2048 throughout.
openssl_pki() {
  local dir=$1
  local san="DNS:$node,DNS:localhost,IP:127.0.0.1"
  mkdir -p -- "$dir/etcd"
  chmod 0700 "$dir" "$dir/etcd"
  ca "$dir" ca kubernetes
  leaf "$dir" apiserver ca kube-apiserver "" server \
    "$san,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1"
  leaf "$dir" apiserver-kubelet-client ca kube-apiserver-kubelet-client system:masters client
  ca "$dir" front-proxy-ca front-proxy-ca
  leaf "$dir" front-proxy-client front-proxy-ca front-proxy-client "" client
  ca "$dir" etcd/ca etcd-ca
  leaf "$dir" etcd/server etcd/ca "$node" "" both "$san"
  leaf "$dir" etcd/peer etcd/ca "$node" "" both "$san"
  leaf "$dir" etcd/healthcheck-client etcd/ca kube-etcd-healthcheck-client "" client
  leaf "$dir" apiserver-etcd-client etcd/ca kube-apiserver-etcd-client "" client
  rsa_key "$dir/sa.key"
  openssl pkey -in "$dir/sa.key" -pubout -out "$dir/sa.pub"
}

# etcd_health PKI_DIR: one `etcdctl endpoint health` with the healthcheck cert.
etcd_health() {
  ETCDCTL_API=3 etcdctl --endpoints https://127.0.0.1:2379 \
    --cacert "$1/etcd/ca.crt" --cert "$1/etcd/healthcheck-client.crt" \
    --key "$1/etcd/healthcheck-client.key" \
    --dial-timeout 2s --command-timeout 5s endpoint health
}

# Runs inside the trial's namespace: PKI, etcd, poll until healthy. Writes
# the time it became healthy to DIR/healthy-at, then stops etcd.
etcd_pid="" # the baseline's etcd; global for the EXIT trap
shell_install() {
  local dir=$1 pki=$1/pki data=$1/etcd-data deadline
  # shellcheck disable=SC2317  # called from the EXIT trap
  stop_etcd() {
    local i
    [[ -n $etcd_pid ]] || return 0
    kill -TERM "$etcd_pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
      kill -0 "$etcd_pid" 2>/dev/null || return 0
      sleep 0.1
    done
    kill -KILL "$etcd_pid" 2>/dev/null || true
  }
  trap stop_etcd EXIT

  openssl_pki "$pki"
  mkdir -m 0700 "$data"
  etcd --name "$node" --data-dir "$data" --logger zap --log-outputs stderr \
    --listen-client-urls https://127.0.0.1:2379 --advertise-client-urls https://127.0.0.1:2379 \
    --listen-peer-urls https://127.0.0.1:2380 --initial-advertise-peer-urls https://127.0.0.1:2380 \
    --initial-cluster "$node=https://127.0.0.1:2380" --initial-cluster-state new \
    --client-cert-auth --trusted-ca-file "$pki/etcd/ca.crt" \
    --cert-file "$pki/etcd/server.crt" --key-file "$pki/etcd/server.key" \
    --peer-client-cert-auth --peer-trusted-ca-file "$pki/etcd/ca.crt" \
    --peer-cert-file "$pki/etcd/peer.crt" --peer-key-file "$pki/etcd/peer.key" \
    >"$dir/etcd.log" 2>&1 &
  etcd_pid=$!

  deadline=$((SECONDS + health_timeout))
  until etcd_health "$pki" >/dev/null 2>&1; do
    kill -0 "$etcd_pid" 2>/dev/null || {
      echo "etcd exited before it was healthy; its log:" >&2
      tail -n 20 -- "$dir/etcd.log" >&2
      return 1
    }
    ((SECONDS < deadline)) || {
      echo "etcd was not healthy after ${health_timeout} s" >&2
      return 1
    }
    sleep 0.1
  done
  now >"$dir/healthy-at"
}

# ---------------------------------------------------------------------------
# Namespaces and cleanup.

work=""
current_root="" # a hakube root whose agent may be running
current_ns=""
bin=""

# shellcheck source=scripts/netns.sh
source "$script_dir/netns.sh"
kill_ns_processes() { hakube_netns_stop "$1"; }

new_ns() { hakube_netns_loopback "$1" || fail "setting up network namespace $1"; }

drop_ns() {
  kill_ns_processes "$1"
  ip netns del "$1" 2>/dev/null || true
}

cleanup() {
  local rc=$? ns
  trap - EXIT INT TERM
  if [[ -n $current_root && -n $bin && -e $current_root/var/lib/hakube ]]; then
    if [[ -n $current_ns ]] && ip netns list | awk '{print $1}' | grep -qxF -- "$current_ns"; then
      timeout --foreground -k 5 60 ip netns exec "$current_ns" "$bin" --root "$current_root" reset >/dev/null 2>&1 || true
    else
      timeout --foreground -k 5 60 "$bin" --root "$current_root" reset >/dev/null 2>&1 || true
    fi
  fi
  while read -r ns; do
    [[ -n $ns ]] && drop_ns "$ns"
  done < <(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$ns_prefix-" || true)
  if [[ -n $work && -d $work ]]; then
    if ((rc == 1)); then
      msg "files of the failed run kept in $work"
    else
      rm -rf --one-file-system -- "$work"
    fi
  fi
  exit "$rc"
}

# ---------------------------------------------------------------------------
# The measures. Each leaves its result in $result (seconds); the hakube
# install also in $result_rss (MiB). They run in this shell, not in a
# subshell, so that cleanup knows what is running.

result=""
result_rss=""

# (a) hakube install.
measure_hakube_install() {
  local trial=$1 ns=$ns_prefix-$1-hakube root=$work/$1-hakube
  # The agent keeps the install log open: later steps log elsewhere.
  local log=$work/$1-hakube-install.log check_log=$work/$1-hakube-check.log t0 t1 pid rss_kb
  mkdir -p -- "$root"
  new_ns "$ns"
  current_ns=$ns
  current_root=$root
  t0=$(now)
  timeout --foreground -k 10 "$install_timeout" ip netns exec "$ns" "$bin" --root "$root" install \
    --advertise-address 127.0.0.1 --node-name "$node" --components etcd --no-systemd \
    </dev/null >"$log" 2>&1 || fail "hakube install (trial $trial)" "$log"
  t1=$(now)

  ip netns exec "$ns" env ETCDCTL_API=3 etcdctl --endpoints https://127.0.0.1:2379 \
    --cacert "$root/var/lib/hakube/pki/etcd/ca.crt" \
    --cert "$root/var/lib/hakube/pki/etcd/healthcheck-client.crt" \
    --key "$root/var/lib/hakube/pki/etcd/healthcheck-client.key" \
    --dial-timeout 2s --command-timeout 5s endpoint health >"$check_log" 2>&1 ||
    fail "etcdctl endpoint health after hakube install (trial $trial)" "$check_log"

  sleep "$idle_seconds"
  read -r pid 2>/dev/null <"$root/var/lib/hakube/agent.pid" ||
    fail "reading $root/var/lib/hakube/agent.pid (trial $trial)" "$log"
  rss_kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) || true
  [[ -n $rss_kb ]] || fail "reading VmRSS of the agent, pid $pid (trial $trial)" "$log"

  timeout --foreground -k 10 "$install_timeout" ip netns exec "$ns" "$bin" --root "$root" reset \
    </dev/null >>"$check_log" 2>&1 || fail "hakube reset (trial $trial)" "$check_log"
  current_root=""
  if [[ -n $(ip netns pids "$ns" 2>/dev/null) ]]; then
    msg "note: processes were left running in $ns after hakube reset (trial $trial); stopping them"
  fi
  drop_ns "$ns"
  current_ns=""
  rm -rf --one-file-system -- "$root"

  result=$(elapsed "$t0" "$t1")
  result_rss=$(awk -v k="$rss_kb" 'BEGIN { printf "%.1f", k / 1024 }')
}

# (b) the shell baseline.
measure_shell_install() {
  local trial=$1 ns=$ns_prefix-$1-shell dir=$work/$1-shell
  local log=$work/$1-shell.log t0
  mkdir -p -- "$dir"
  new_ns "$ns"
  t0=$(now)
  timeout --foreground -k 10 $((health_timeout + 120)) ip netns exec "$ns" \
    bash "$script" __shell-install "$dir" </dev/null >"$log" 2>&1 ||
    fail "shell baseline: openssl PKI + etcd (trial $trial)" "$log"
  [[ -s $dir/healthy-at ]] || fail "shell baseline did not record when etcd was healthy (trial $trial)" "$log"
  drop_ns "$ns"
  result=$(elapsed "$t0" "$(<"$dir/healthy-at")")
  rm -rf --one-file-system -- "$dir"
}

# (c) hakube certs generate. Extra arguments go to hakube.
measure_hakube_pki() {
  local trial=$1 label=$2 root log t0 t1
  shift 2
  root=$work/$trial-pki-$label
  log=$work/$trial-pki-$label.log
  mkdir -p -- "$root"
  t0=$(now)
  timeout --foreground -k 10 "$install_timeout" "$bin" --root "$root" certs generate \
    --advertise-address 127.0.0.1 --node-name "$node" "$@" </dev/null >"$log" 2>&1 ||
    fail "hakube certs generate $* (trial $trial)" "$log"
  t1=$(now)
  [[ -s $root/var/lib/hakube/pki/etcd/ca.crt ]] ||
    fail "hakube certs generate $* wrote no $root/var/lib/hakube/pki/etcd/ca.crt (trial $trial)" "$log"
  rm -rf --one-file-system -- "$root"
  result=$(elapsed "$t0" "$t1")
}

# (c) openssl PKI alone. A process of its own, like hakube, and so that
# errexit holds inside it.
measure_openssl_pki() {
  local trial=$1 dir=$work/$1-pki-openssl log=$work/$1-pki-openssl.log t0 t1
  t0=$(now)
  timeout --foreground -k 10 "$install_timeout" bash "$script" __openssl-pki "$dir" </dev/null >"$log" 2>&1 ||
    fail "openssl PKI generation (trial $trial)" "$log"
  t1=$(now)
  [[ -s $dir/sa.pub ]] || fail "openssl PKI generation wrote no sa.pub (trial $trial)" "$log"
  rm -rf --one-file-system -- "$dir"
  result=$(elapsed "$t0" "$t1")
}

# ---------------------------------------------------------------------------

main() {
  local trials=${BENCH_TRIALS:-5} i
  while (($#)); do
    case "$1" in
      --trials)
        (($# >= 2)) || {
          usage
          die "--trials needs a number"
        }
        trials=$2
        shift 2
        ;;
      --trials=*)
        trials=${1#*=}
        shift
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
  if [[ ! $trials =~ ^[1-9][0-9]*$ ]] || ((trials > 100)); then
    die "trials must be between 1 and 100 (got '$trials')"
  fi
  [[ $EUID -eq 0 ]] || die "network namespaces need root: run it as root (or with sudo)"

  # shellcheck source=scripts/deps.sh
  source "$script_dir/deps.sh"
  hakube_ensure_deps || fail "installing dependencies (etcd, etcdctl, openssl, ip)"

  bin=$(hakube_binary "$repo") || die "no hakube binary to measure"
  "$bin" version >/dev/null 2>&1 || fail "$bin version"
  etcd --version >/dev/null 2>&1 || fail "etcd --version"

  work=$(mktemp -d "${TMPDIR:-/tmp}/hakube-bench.XXXXXX") || die "cannot create a work directory"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  local -a h_install=() h_rss=() s_install=() p_ecdsa=() p_rsa=() p_openssl=()
  local h s rss pe pr po
  msg "$trials trial(s); hakube: $bin"
  for ((i = 1; i <= trials; i++)); do
    if ((i % 2)); then
      measure_hakube_install "$i"
      h=$result rss=$result_rss
      measure_shell_install "$i"
      s=$result
    else
      measure_shell_install "$i"
      s=$result
      measure_hakube_install "$i"
      h=$result rss=$result_rss
    fi
    measure_hakube_pki "$i" ecdsa
    pe=$result
    measure_hakube_pki "$i" rsa --key-algorithm rsa-2048
    pr=$result
    measure_openssl_pki "$i"
    po=$result
    h_install+=("$h")
    h_rss+=("$rss")
    s_install+=("$s")
    p_ecdsa+=("$pe")
    p_rsa+=("$pr")
    p_openssl+=("$po")
    msg "trial $i/$trials: install->healthy hakube ${h}s (agent RSS ${rss} MiB), shell ${s}s; PKI hakube ECDSA ${pe}s, RSA ${pr}s, openssl ${po}s"
  done

  local mh ms mrss mpe mpr mpo r_install r_pe r_pr install_result rss_result
  mh=$(median "${h_install[@]}")
  ms=$(median "${s_install[@]}")
  mrss=$(median "${h_rss[@]}")
  mpe=$(median "${p_ecdsa[@]}")
  mpr=$(median "${p_rsa[@]}")
  mpo=$(median "${p_openssl[@]}")
  r_install=$(ratio "$mh" "$ms")
  r_pe=$(ratio "$mpe" "$mpo")
  r_pr=$(ratio "$mpr" "$mpo")
  install_result=$(awk -v r="$r_install" 'BEGIN { print (r != "-" && r <= 0.5) ? "met" : "missed" }')
  rss_result=$(awk -v m="$mrss" 'BEGIN { print (m != "-" && m < 20) ? "met" : "missed" }')

  printf '\nMedians of %d trial(s). Baseline: openssl CLI (RSA-2048) + etcd polled with etcdctl.\n\n' "$trials"
  printf '%-32s %10s %10s %8s  %-16s %s\n' measure hakube baseline ratio goal result
  printf '%-32s %10s %10s %8s  %-16s %s\n' "install -> etcd healthy (s)" "$mh" "$ms" "$r_install" "ratio <= 0.5" "$install_result"
  printf '%-32s %10s %10s %8s  %-16s %s\n' "idle agent RSS (MiB)" "$mrss" - - "< 20 MiB" "$rss_result"
  printf '%-32s %10s %10s %8s  %-16s %s\n' "PKI only, ECDSA P-256 (s)" "$mpe" "$mpo" "$r_pe" - -
  printf '%-32s %10s %10s %8s  %-16s %s\n' "PKI only, RSA-2048 (s)" "$mpr" "$mpo" "$r_pr" - -
}

# Internal entry points of the baseline's timed jobs.
case "${1:-}" in
  __shell-install) # run by measure_shell_install inside its namespace
    (($# == 2)) || die "__shell-install needs a directory"
    shell_install "$2"
    exit
    ;;
  __openssl-pki) # run by measure_openssl_pki
    (($# == 2)) || die "__openssl-pki needs a directory"
    openssl_pki "$2"
    exit
    ;;
esac

main "$@"
