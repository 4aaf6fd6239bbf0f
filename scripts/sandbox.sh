#!/usr/bin/env bash
#
# A throwaway multi-host hakube sandbox on one machine, built from network
# namespaces:
#
#   scripts/sandbox.sh up [--masters N] [--workers M]
#   scripts/sandbox.sh status [HAKUBE STATUS FLAGS...]
#   scripts/sandbox.sh down
#
# Layout: a private "switch" namespace (hk-sw) holds the bridge br0; each host
# gets its own namespace (hk-m1, hk-m2, ..., hk-w1, ...) whose eth0 is one end
# of a veth pair, the other end being a port of br0 in hk-sw. Masters are
# 10.77.0.11, .12, ...; workers 10.77.0.21, .22, .... Nothing is created in the
# machine's own network namespace: no bridge, no address, no route.
#
# Each installed host keeps its whole filesystem state under
# $HAKUBE_SANDBOX_DIR/<host> (hakube --root), default <repo>/.sandbox.
#
# Environment:
#   HAKUBE_SANDBOX_DIR  state directory (default: <repo>/.sandbox)
#   HAKUBE_BIN          hakube binary to use instead of building target/release/hakube
#   HAKUBE_SANDBOX_INSTALL
#                       extra words for m1's install, which set the cluster's
#                       settings, e.g. 'taint-control-plane lost-node-toleration=5m'
set -euo pipefail

prog=sandbox.sh
script=$(readlink -f -- "${BASH_SOURCE[0]}")
script_dir=${script%/*}
repo=$(cd -- "$script_dir/.." && pwd -P)

state_dir=$(realpath -m -- "${HAKUBE_SANDBOX_DIR:-$repo/.sandbox}")
hosts_file=$state_dir/hosts # one "NAME IP" line per host
bin_file=$state_dir/bin     # the hakube binary `up` used
bundle_file=$state_dir/bundle  # the Kubernetes bundle `up` used (its kubectl and etcdctl)
marker=$state_dir/.hakube-sandbox

switch_ns=hk-sw
bridge=br0
net_prefix=10.77.0
net_bits=24
ns_pattern='^hk-(sw|[mw][0-9]+)$' # every namespace this script may create

install_timeout=300 # seconds `hakube install` may take to report healthy
ready_timeout=300   # seconds the Nodes may take to be Ready after the joins
master_components=etcd,containerd,kube-apiserver,kube-controller-manager,kube-scheduler,kubelet,kube-proxy
worker_components=containerd,kubelet,kube-proxy
status_timeout=60
reset_timeout=120

msg() { printf '%s: %s\n' "$prog" "$*" >&2; }
warn() { printf '%s: warning: %s\n' "$prog" "$*" >&2; }
die() {
  printf '%s: error: %s\n' "$prog" "$*" >&2
  exit 1
}

usage() {
  cat >&2 <<EOF
usage: scripts/$prog up [--masters N] [--workers M]
       scripts/$prog status [--json]
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
  down    reset every host, stop what still runs in the namespaces, delete
          them and the state directory

State directory: $state_dir (HAKUBE_SANDBOX_DIR)
Binary: HAKUBE_BIN, else $repo/target/release/hakube (built by \`up\`)
Cluster settings for m1's install: HAKUBE_SANDBOX_INSTALL (e.g. 'taint-control-plane')
EOF
}

up_in_progress=0
on_up_exit() {
  if ((up_in_progress)); then
    warn "up did not finish; what it made is left for inspection. Remove it with: scripts/$prog down"
  fi
}

require_root() {
  [[ $EUID -eq 0 ]] || die "network namespaces need root: run it as root, or as a user with sudo"
  command -v ip >/dev/null 2>&1 || die "the ip command (iproute2) is missing"
}

# Serialises up and down: namespace names are machine-wide.
take_lock() {
  local lock_dir=/run/lock
  [[ -d $lock_dir ]] || lock_dir=/tmp
  exec 9>"$lock_dir/hakube-sandbox.lock"
  flock -w 60 9 || die "another sandbox.sh up/down has held $lock_dir/hakube-sandbox.lock for 60 s"
}

ns_exists() {
  ip netns list | awk '{print $1}' | grep -qxF -- "$1"
}

ns_of() { printf 'hk-%s\n' "$1"; }
root_of() { printf '%s/%s\n' "$state_dir" "$1"; }

# Hosts recorded by `up`, as "NAME IP" lines.
recorded_hosts() {
  [[ -f $hosts_file ]] || return 0
  awk 'NF == 2 && $1 ~ /^[mw][0-9]+$/ {print $1, $2}' "$hosts_file"
}

record_host() {
  local name=$1 ip=$2
  if [[ -f $hosts_file ]] && awk -v n="$name" '$1 == n {found = 1} END {exit !found}' "$hosts_file"; then
    return 0
  fi
  printf '%s %s\n' "$name" "$ip" >>"$hosts_file"
}

# A host "has a root" once hakube was installed there.
has_root() { [[ -d $(root_of "$1")/var/lib/hakube ]]; }

agent_alive() {
  local pid_file pid
  pid_file=$(root_of "$1")/var/lib/hakube/agent.pid
  [[ -r $pid_file ]] || return 1
  read -r pid <"$pid_file" || return 1
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q hakube
}

ensure_switch() { hakube_netns_switch "$switch_ns" || die "cannot set up the switch namespace $switch_ns"; }

# add_host NAME IP: namespace hk-NAME whose eth0 (IP/24) is wired to br0.
# Safe to call again for a host that already exists.
add_host() {
  local name=$1 ip=$2
  # The switch-side end is p-NAME (interface names are at most 15 bytes).
  hakube_netns_host "$(ns_of "$name")" "$switch_ns" "p-$name" "$ip/$net_bits" || die "cannot set up host $name"
  record_host "$name" "$ip"
}

# make_root NAME: the host's root, with its own resolv.conf: pods with
# dnsPolicy Default (CoreDNS) get it, and it names the host itself, where
# nothing answers on port 53, so a name outside the cluster fails at once
# and no query leaves the sandbox's network.
make_root() {
  local name=$1 root
  root=$(root_of "$name")
  mkdir -p -- "$root/etc"
  printf 'nameserver %s\n' "$(recorded_hosts | awk -v n="$name" '$1 == n {print $2}')" >"$root/etc/resolv.conf"
}

# The hakube binary: HAKUBE_BIN, else a fresh release build.
resolve_binary_for_up() {
  hakube_binary "$repo" || die "no hakube binary to run"
}

# The binary for status and down: the one `up` used if it is still there.
resolve_binary_recorded() {
  local bin
  for bin in "$(cat -- "$bin_file" 2>/dev/null || true)" "${HAKUBE_BIN:-}" "$repo/target/release/hakube"; do
    if [[ -n $bin && -f $bin && -x $bin ]]; then
      printf '%s\n' "$bin"
      return 0
    fi
  done
  return 1
}

host_status() {
  local bin=$1 name=$2
  shift 2
  local ns root
  ns=$(ns_of "$name")
  root=$(root_of "$name")
  if ! ns_exists "$ns"; then
    warn "$name: namespace $ns is gone"
    return 1
  fi
  timeout --foreground -k 5 "$status_timeout" ip netns exec "$ns" "$bin" --root "$root" status "$@"
}

# The bundle's kubectl (the version the cluster runs), else the machine's.
kubectl_bin() {
  local b
  b=$(cat -- "$bundle_file" 2>/dev/null || true)
  if [[ -n $b && -x $b/kubectl ]]; then printf '%s\n' "$b/kubectl"; else printf 'kubectl\n'; fi
}

# kubectl on m1's network with its admin kubeconfig.
sandbox_kubectl() {
  ip netns exec "$(ns_of m1)" "$(kubectl_bin)" --kubeconfig "$(root_of m1)/var/lib/hakube/kubeconfigs/admin.conf" \
    --request-timeout=10s "$@"
}

# Waits (bounded) until every installed host's Node is Ready.
wait_nodes_ready() {
  local want ready deadline=$((SECONDS + ready_timeout))
  want=$(recorded_hosts | awk '{print $1}' | while read -r h; do has_root "$h" && echo "$h"; done | sort | xargs)
  msg "waiting for the Nodes to be Ready: $want (at most ${ready_timeout} s)"
  while :; do
    ready=$(sandbox_kubectl get nodes --no-headers 2>/dev/null | awk '$2 == "Ready" {print $1}' | sort | xargs)
    [[ $ready == "$want" ]] && break
    ((SECONDS < deadline)) || {
      sandbox_kubectl get nodes >&2 || true
      die "not every Node became Ready within ${ready_timeout} s (Ready: ${ready:-none}); see the hosts' logs under $state_dir/*/var/lib/hakube/logs/"
    }
    sleep 2
  done
  sandbox_kubectl get nodes -o wide
}

print_summary() {
  local bin=$1 bundle=$2 name ip ns root
  local first_root
  first_root=$(root_of m1)
  cat <<EOF

Sandbox state: $state_dir
  switch  $switch_ns  bridge $bridge for $net_prefix.0/$net_bits (nothing in the host's own network namespace)
EOF
  while read -r name ip; do
    ns=$(ns_of "$name")
    root=$(root_of "$name")
    if has_root "$name"; then
      printf '  host    %-6s %-6s eth0 %-12s hakube root %s\n' "$name" "$ns" "$ip" "$root"
    else
      printf '  host    %-6s %-6s eth0 %-12s namespace only (not joined yet)\n' "$name" "$ns" "$ip"
    fi
  done < <(recorded_hosts)
  cat <<EOF

Look inside:
  ${SUDO_USER:+sudo }ip netns exec hk-m1 bash                     # a shell on m1's network
  ${SUDO_USER:+sudo }ip netns exec hk-m1 ss -ltnp                 # what listens on m1
  ${SUDO_USER:+sudo }ip netns exec hk-m1 $bin --root $first_root status
  ls $first_root/var/lib/hakube/logs/               # component logs
  ${SUDO_USER:+sudo }ip netns exec hk-m1 $bundle/etcdctl --endpoints https://$net_prefix.11:2379 \\
      --cacert $first_root/var/lib/hakube/pki/etcd/ca.crt \\
      --cert $first_root/var/lib/hakube/pki/etcd/healthcheck-client.crt \\
      --key $first_root/var/lib/hakube/pki/etcd/healthcheck-client.key endpoint health
  cat $state_dir/join-m2.log                  # how a master joined (serialized etcd join)
  scripts/$prog status | down

kubectl (the bundle's $(cat "$bundle/VERSION"), on m1's network, with its admin kubeconfig):
  alias k='${SUDO_USER:+sudo }ip netns exec hk-m1 $bundle/kubectl --kubeconfig $first_root/var/lib/hakube/kubeconfigs/admin.conf'
  k get nodes -o wide
  k -n kube-system get pods -o wide                 # kube-proxy runs on every node as a host process; CoreDNS here

A sample application: a web server behind a Service, and a volume that outlives its pod.
  k create deployment web --image=$(cat "$bundle/test-image") --replicas=2 --port=8080 -- \\
      sh -c 'mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8080 -h /www'
  k expose deployment web --port=80 --target-port=8080 --type=NodePort
  k run client --image=$(cat "$bundle/test-image") --image-pull-policy=Never --restart=Never -- sleep 3600
  k exec client -- wget -qO- http://web/index.html        # by name, through CoreDNS and kube-proxy
  ${SUDO_USER:+sudo }ip netns exec hk-m2 busybox wget -qO- http://$net_prefix.21:\$(k get svc web -o jsonpath='{.spec.ports[0].nodePort}')/index.html
  k apply -f - <<<'{"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{"name":"data"},"spec":{"accessModes":["ReadWriteOnce"],"resources":{"requests":{"storage":"64Mi"}}}}'
  k get pvc data                                   # Pending until a pod uses it (WaitForFirstConsumer), then Bound
(no image registry is reachable here: the bundle's images are imported into every node's
containerd, and a pinned tag is never pulled; use imagePullPolicy: Never for :latest ones.
A local-path volume lives on one node's disk: if that node is lost, so is its data.)
EOF
}

cmd_up() {
  local masters=3 workers=2 bin bundle i name
  local -a extra_words=()
  read -r -a extra_words <<<"${HAKUBE_SANDBOX_INSTALL:-}"
  while (($#)); do
    case "$1" in
      --masters | --workers)
        (($# >= 2)) || {
          usage
          die "$1 needs a number"
        }
        [[ $2 =~ ^[0-9]+$ ]] || {
          usage
          die "$1 needs a number, got '$2'"
        }
        if [[ $1 == --masters ]]; then masters=$((10#$2)); else workers=$((10#$2)); fi
        shift 2
        ;;
      --masters=* | --workers=*)
        set -- "${1%%=*}" "${1#*=}" "${@:2}"
        ;;
      -h | --help)
        usage
        exit 0
        ;;
      *)
        usage
        die "unknown argument to up: '$1'"
        ;;
    esac
  done
  ((masters >= 1 && masters <= 9)) || die "--masters must be between 1 and 9"
  ((workers >= 0 && workers <= 9)) || die "--workers must be between 0 and 9"

  require_root up
  hakube_ensure_deps kube || die "could not install the dependencies"
  bin=$(resolve_binary_for_up)
  bundle=$(bash "$script_dir/kube-bundle.sh") || die "could not build or find the Kubernetes bundle"
  take_lock

  if [[ -e $state_dir && ! -e $marker ]] && [[ -n $(ls -A -- "$state_dir" 2>/dev/null) ]]; then
    die "$state_dir exists, is not empty and was not made by $prog; set HAKUBE_SANDBOX_DIR elsewhere"
  fi
  [[ $state_dir != / && $state_dir != "$repo" ]] || die "HAKUBE_SANDBOX_DIR must be a directory of its own, not $state_dir"
  mkdir -p -- "$state_dir"
  : >"$marker"
  printf '%s\n' "$bin" >"$bin_file"
  printf '%s\n' "$bundle" >"$bundle_file"

  up_in_progress=1
  trap on_up_exit EXIT

  ensure_switch
  for ((i = 1; i <= masters; i++)); do
    add_host "m$i" "$net_prefix.$((10 + i))"
  done
  for ((i = 1; i <= workers; i++)); do
    add_host "w$i" "$net_prefix.$((20 + i))"
  done

  name=m1
  if agent_alive "$name"; then
    msg "the sandbox is already up (the agent of $name runs); its status:"
  else
    if has_root "$name"; then
      msg "$name has a root but no running agent; installing again"
    fi
    make_root "$name"
    msg "installing hakube on $name (etcd, containerd, the control plane and kubelet; at most ${install_timeout} s)"
    # 9>&-: the agent install leaves running must not inherit the lock.
    timeout --foreground -k 10 "$install_timeout" ip netns exec "$(ns_of "$name")" \
      "$bin" --root "$(root_of "$name")" install ha "${extra_words[@]}" \
      --advertise-address "$net_prefix.11" --node-name "$name" \
      --components "$master_components" --bundle "$bundle" --no-systemd 9>&- ||
      die "hakube install on $name failed or timed out; logs: $(root_of "$name")/var/lib/hakube/logs/"
  fi
  join_hosts "$bin" "$bundle"
  wait_nodes_ready
  up_in_progress=0

  local rc=0 h
  while read -r h _; do
    has_root "$h" || continue
    printf '== %s\n' "$h"
    host_status "$bin" "$h" || rc=$?
  done < <(recorded_hosts)
  print_summary "$bin" "$bundle"
  ((rc == 0)) || die "a host is not healthy (hakube status exited $rc)"
}

# Joins every host but m1, all at the same moment, with the scripts m1
# prints: the way a user adds servers, and the case that breaks etcd when
# masters join unserialized.
join_hosts() {
  local bin=$1 bundle=$2 name ip role script components pids=() names=() failed=0 i
  local m1_root
  m1_root=$(root_of m1)
  local todo=()
  while read -r name ip; do
    [[ $name == m1 ]] && continue
    agent_alive "$name" && continue
    todo+=("$name $ip")
  done < <(recorded_hosts)
  ((${#todo[@]})) || return 0
  for role in master worker; do
    script=$state_dir/join-$role.sh
    if [[ $role == master ]]; then
      ip netns exec "$(ns_of m1)" "$bin" --root "$m1_root" node-join-script --master 9>&- >"$script" ||
        die "node-join-script --master on m1 failed"
    else
      ip netns exec "$(ns_of m1)" "$bin" --root "$m1_root" node-join-script 9>&- >"$script" ||
        die "node-join-script on m1 failed"
    fi
    chmod 0600 "$script"
  done
  msg "joining ${#todo[@]} host(s) at once: ${todo[*]%% *}"
  for entry in "${todo[@]}"; do
    name=${entry%% *}
    ip=${entry##* }
    make_root "$name"
    if [[ $name == m* ]]; then
      script=$state_dir/join-master.sh components=$master_components
    else
      script=$state_dir/join-worker.sh components=$worker_components
    fi
    (
      HAKUBE_BIN=$bin timeout -k 10 "$install_timeout" ip netns exec "$(ns_of "$name")" \
        bash "$script" --root "$(root_of "$name")" --advertise-address "$ip" --node-name "$name" \
        --components "$components" --bundle "$bundle" --no-systemd >"$state_dir/join-$name.log" 2>&1 9>&-
    ) &
    pids+=($!)
    names+=("$name")
  done
  for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then
      msg "${names[$i]} joined"
    else
      warn "${names[$i]} failed to join; its output: $state_dir/join-${names[$i]}.log"
      tail -n 20 -- "$state_dir/join-${names[$i]}.log" >&2 || true
      failed=1
    fi
  done
  ((failed == 0)) || die "some hosts did not join"
}

cmd_status() {
  local bin name ip rc=0 any=0
  require_root status
  if [[ ! -e $marker ]] && ! ip netns list | awk '{print $1}' | grep -qE "$ns_pattern"; then
    msg "the sandbox is not up (start it with: scripts/$prog up)"
    exit 1
  fi
  bin=$(resolve_binary_recorded) || die "no hakube binary found (set HAKUBE_BIN)"
  while read -r name ip; do
    if ! has_root "$name"; then
      printf '%s (%s): namespace only, not installed\n' "$name" "$ip"
      continue
    fi
    any=1
    printf '== %s (%s, namespace %s)\n' "$name" "$ip" "$(ns_of "$name")"
    host_status "$bin" "$name" "$@" || rc=1
  done < <(recorded_hosts)
  ((any)) || {
    msg "no host has hakube installed"
    exit 1
  }
  exit "$rc"
}

# shellcheck source=scripts/deps.sh
source "$script_dir/deps.sh"
# shellcheck source=scripts/netns.sh
source "$script_dir/netns.sh"

# TERM every process in a namespace, KILL what is left after 10 s.
kill_ns_processes() { hakube_netns_stop "$1" verbose; }

# Unmounts whatever is still mounted below the state directory.
unmount_below() {
  local dir=$1 mnt
  local -a mounts
  mapfile -t mounts < <(awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r)
  for mnt in "${mounts[@]}"; do
    mnt=$(printf '%b' "$mnt") # /proc/self/mounts escapes spaces as \040
    umount -l -- "$mnt" 2>/dev/null || warn "could not unmount $mnt"
  done
}

cmd_down() {
  local bin="" name ip ns dir failed=0
  local -a hosts=() namespaces=()
  (($# == 0)) || {
    usage
    die "down takes no arguments"
  }
  require_root down
  take_lock

  bin=$(resolve_binary_recorded) || warn "no hakube binary found: skipping hakube reset, stopping processes directly"

  # Every host recorded, plus any root directory left behind.
  mapfile -t hosts < <(
    recorded_hosts | awk '{print $1}'
    if [[ -d $state_dir ]]; then
      find "$state_dir" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended \
        -regex '.*/[mw][0-9]+' -printf '%f\n'
    fi
  )
  mapfile -t hosts < <(printf '%s\n' "${hosts[@]}" | awk 'NF && !seen[$0]++')

  for name in "${hosts[@]}"; do
    has_root "$name" || continue
    [[ -n $bin ]] || continue
    ns=$(ns_of "$name")
    msg "resetting $name"
    if ns_exists "$ns"; then
      timeout --foreground -k 10 "$reset_timeout" ip netns exec "$ns" "$bin" --root "$(root_of "$name")" reset ||
        warn "hakube reset on $name failed; stopping its processes directly"
    else
      timeout --foreground -k 10 "$reset_timeout" "$bin" --root "$(root_of "$name")" reset ||
        warn "hakube reset on $name failed"
    fi
  done

  # Hosts first, the switch last; deleting a host namespace removes its veth pair.
  mapfile -t namespaces < <(
    {
      for name in "${hosts[@]}"; do ns_of "$name"; done
      ip netns list | awk '{print $1}' | grep -E "$ns_pattern" || true
    } | awk -v sw="$switch_ns" 'NF && !seen[$0]++ && $0 != sw'
  )
  ns_exists "$switch_ns" && namespaces+=("$switch_ns")
  for ns in "${namespaces[@]}"; do
    ns_exists "$ns" || continue
    kill_ns_processes "$ns"
    if ip netns del "$ns"; then
      msg "deleted namespace $ns"
    else
      warn "could not delete namespace $ns"
      failed=1
    fi
  done

  dir=$state_dir
  if [[ $dir == / || $dir == "$repo" || $dir == "${HOME:-/}" ]]; then
    warn "refusing to remove $dir; remove the sandbox files by hand"
    failed=1
  elif [[ -d $dir ]]; then
    if [[ -e $marker ]] || [[ -z $(ls -A -- "$dir") ]]; then
      unmount_below "$(readlink -f -- "$dir")"
      if rm -rf --one-file-system -- "$dir"; then
        msg "removed $dir"
      else
        warn "could not remove all of $dir"
        failed=1
      fi
    else
      warn "$dir was not made by $prog (no ${marker##*/}); leaving it alone"
      failed=1
    fi
  fi

  ((failed == 0)) || die "the sandbox was not removed completely"
  msg "the sandbox is down"
}

main() {
  local cmd=${1:-}
  case "$cmd" in
    up | status | down) hakube_as_root "$script" "$@" ;;
  esac
  (($#)) && shift
  case "$cmd" in
    up) cmd_up "$@" ;;
    status) cmd_status "$@" ;;
    down) cmd_down "$@" ;;
    -h | --help | help)
      usage
      exit 0
      ;;
    "")
      usage
      exit 2
      ;;
    *)
      usage
      die "unknown command '$cmd'"
      ;;
  esac
}

main "$@"
