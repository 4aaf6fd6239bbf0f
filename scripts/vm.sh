#!/usr/bin/env bash
#
# Real virtual machines on this machine, booted by systemd as PID 1: the
# path every real server takes (`install` writes and enables hakube.service),
# reboots, and power loss.
#
#   scripts/vm.sh up [--masters N] [--workers M]
#   scripts/vm.sh status
#   scripts/vm.sh ssh HOST [COMMAND...]     (also: exec HOST COMMAND...)
#   scripts/vm.sh kill HOST                 pull the plug: SIGKILL its qemu
#   scripts/vm.sh boot HOST                 boot a stopped VM again, wait for it
#   scripts/vm.sh image                     build (or find) the image; print its directory
#   scripts/vm.sh down
#
# The image. A Debian 12 root made with debootstrap (linux-image-amd64,
# systemd-sysv, openssh-server and the Debian packages hakube runs: etcd,
# containerd, runc, the CNI plugins, iptables, ...), plus the hakube binary
# and the Kubernetes bundle under /opt/hakube, is turned into an ext4 disk
# image by `mkfs.ext4 -d` (no loop mount, no root-only kernel features).
# Both steps are cached under ${HAKUBE_CACHE_DIR:-/var/cache/hakube}/vm:
# the debootstrap root is keyed by the package list and this script's
# recipe, the disk image also by the binary, install.sh and the bundle, so a
# new `cargo build` costs one mkfs (10 s), not a debootstrap (2 minutes).
#
# The VMs. qemu-system-x86_64 boots the image's own kernel and initrd
# (-kernel/-initrd, no boot loader) with the disk as a qcow2 copy-on-write
# overlay per VM, 1 vCPU each. KVM is used when a bounded probe shows it
# boots a kernel; otherwise (on machines whose /dev/kvm hangs at the
# firmware) software emulation, TCG. The network: a namespace of its own,
# hkvm, holding a bridge br0 (10.78.0.1/24) with one tap per VM; masters
# are 10.78.0.11, .12, ..., workers 10.78.0.21, .... Nothing is created in
# the machine's own network namespace. Each VM's name, address and
# machine-id come from its kernel command line (systemd.hostname=, ip=
# through systemd-network-generator, systemd.machine_id=), so one image
# serves every VM.
#
# Commands run in a VM over ssh from the namespace, as root, with a key
# made once and baked into the image. Why ssh and not the serial console:
# ssh gives each command its own stdout, stderr and exit status, several at
# once (the joins run in parallel), and no login or prompt to parse; the
# serial console (each VM's is kept in $HAKUBE_VM_DIR/NAME.console) would
# mix every stream into one and lose the exit status. Root has no password.
#
# `up` boots the VMs, installs the first master with /opt/hakube/install.sh
# (without --no-systemd: hakube writes and enables hakube.service), has it
# print the join scripts and runs them on every other VM at the same
# moment, as a user would; a join script finds no hakube on the new VM and
# fetches the masters' binary, checked against the hash it carries.
#
# Environment:
#   HAKUBE_VM_DIR          state directory (default: <repo>/.vm): overlays,
#                          serial consoles, qemu pid files, join logs
#   HAKUBE_VM_NS           the network namespace (default hkvm); VMs of two
#                          state directories in two namespaces do not meet
#   HAKUBE_CACHE_DIR       cache root (default /var/cache/hakube; the image is in vm/)
#   HAKUBE_BIN             hakube binary to bake in instead of a fresh release build
#   HAKUBE_VM_ACCEL        kvm or tcg: skip the probe
#   HAKUBE_VM_MEMORY       MiB per VM (default 2048)
#   HAKUBE_VM_COMPONENTS   what masters run (default: all of hakube's components
#                          with KVM; etcd alone under TCG, where the API
#                          server's TLS handshakes take longer than its own
#                          clients wait; workers need an API server, so KVM
#                          or components that include it)
#   HAKUBE_VM_INSTALL      extra words for the first master's install
#   HAKUBE_VM_INSTALL_TIMEOUT, HAKUBE_VM_BOOT_TIMEOUT   seconds (default 900, 300)
#   HAKUBE_VM_LIFETIME     seconds after which each qemu is killed whatever
#                          happens (default 0: never); the tests set it, so
#                          that a run that dies leaves no VM behind for long
set -euo pipefail

prog=vm.sh
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

# Bump when what the image holds changes in a way its inputs do not show.
readonly RECIPE=1
readonly SUITE=bookworm
# The Debian packages of the image. Besides a booting systemd system and
# sshd, what scripts/deps.sh installs for hakube's nodes.
readonly VM_PACKAGES=(
  systemd-sysv udev kmod dbus linux-image-amd64 initramfs-tools
  iproute2 iputils-ping openssh-server procps less ca-certificates curl openssl
  etcd-server etcd-client containerd runc containernetworking-plugins iptables kubernetes-client
)

cache_dir=$(realpath -m -- "${HAKUBE_CACHE_DIR:-/var/cache/hakube}/vm")
state_dir=$(realpath -m -- "${HAKUBE_VM_DIR:-$repo/.vm}")
hosts_file=$state_dir/hosts # one "NAME IP" line per VM
marker=$state_dir/.hakube-vm

ns=${HAKUBE_VM_NS:-hkvm}
bridge=br0
net_prefix=10.78.0
gateway=$net_prefix.1
net_bits=24
netmask=255.255.255.0

memory=${HAKUBE_VM_MEMORY:-2048}
all_components=etcd,containerd,kube-apiserver,kube-controller-manager,kube-scheduler,kubelet
master_components=${HAKUBE_VM_COMPONENTS:-}
worker_components=containerd,kubelet
install_timeout=${HAKUBE_VM_INSTALL_TIMEOUT:-900}
boot_timeout=${HAKUBE_VM_BOOT_TIMEOUT:-300}
lifetime=${HAKUBE_VM_LIFETIME:-0}
disk_size=8G
ssh_key=$cache_dir/ssh/id_ed25519

usage() {
  cat >&2 <<EOF
usage: scripts/$prog up [--masters N] [--workers M]
       scripts/$prog status
       scripts/$prog ssh HOST [COMMAND...]     (or: exec HOST COMMAND...)
       scripts/$prog kill HOST | boot HOST
       scripts/$prog image
       scripts/$prog down

  up      build (or find) the VM image, boot the VMs, install hakube on m1 with
          systemd and join every other VM with the scripts m1 prints, all at
          the same moment; when the VMs are up already, says so and shows status
            --masters N   m1..mN, $net_prefix.11.. (1-9, default 3)
            --workers M   w1..wM, $net_prefix.21.. (0-9, default 0)
  status  each VM: qemu running, ssh, hakube.service, \`hakube status\`
  ssh     a shell on HOST, or run COMMAND there (its exit status is ssh's)
  kill    power loss: SIGKILL HOST's qemu (its disk keeps what was flushed)
  boot    boot HOST again from its disk and wait until it reached multi-user
  image   build the image if its inputs changed; print its directory
  down    stop every VM, delete the namespace $ns and the state directory
          (the cached image stays in $cache_dir)

State: $state_dir (HAKUBE_VM_DIR)   Cache: $cache_dir (HAKUBE_CACHE_DIR)
Masters run: ${master_components:-all components with KVM, etcd alone under TCG} (HAKUBE_VM_COMPONENTS)
EOF
}

require_root() {
  [[ $EUID -eq 0 ]] || die "$1 needs root (network namespaces, qemu's taps)"
}

# Serialises up, boot and down: the namespace name is machine-wide.
take_lock() {
  local lock_dir=/run/lock
  [[ -d $lock_dir ]] || lock_dir=/tmp
  exec 9>"$lock_dir/hakube-vm-$ns.lock"
  flock -w 120 9 || die "another vm.sh has held $lock_dir/hakube-vm-$ns.lock for 120 s"
}

fmt_secs() { printf '%d s' "$1"; }

# ---------------------------------------------------------------------------
# The image

sha256_of() { sha256sum -- "$1" | cut -d' ' -f1; }

base_key() {
  {
    printf 'recipe=%s suite=%s\n' "$RECIPE" "$SUITE"
    printf '%s\n' "${VM_PACKAGES[@]}"
    cat -- "$ssh_key.pub"
  } | sha256sum | cut -c1-16
}

# The bundle's identity: its checksums and every file's name, size and mtime.
bundle_listing() {
  local bundle=$1
  cat -- "$bundle/SHA256SUMS" 2>/dev/null || true
  find "$bundle" -type f -printf '%P %s %T@\n' | LC_ALL=C sort
}

image_key() {
  local bin=$1 bundle=$2
  {
    printf 'base=%s\n' "$(base_key)"
    printf 'hakube=%s\n' "$(sha256_of "$bin")"
    printf 'install.sh=%s\n' "$(sha256_of "$script_dir/install.sh")"
    bundle_listing "$bundle"
  } | sha256sum | cut -c1-16
}

ensure_ssh_key() {
  [[ -s $ssh_key && -s $ssh_key.pub ]] && return 0
  mkdir -p -- "${ssh_key%/*}"
  chmod 0700 -- "${ssh_key%/*}"
  rm -f -- "$ssh_key" "$ssh_key.pub"
  ssh-keygen -q -t ed25519 -N '' -C hakube-vm -f "$ssh_key" || die "ssh-keygen failed"
  msg "made the VMs' ssh key $ssh_key"
}

# run_logged LOG SECONDS CMD...: CMD's output goes to LOG; on failure, its tail.
run_logged() {
  local log=$1 limit=$2 rc=0
  shift 2
  timeout -k 30 "$limit" "$@" >>"$log" 2>&1 </dev/null || rc=$?
  if ((rc != 0)); then
    warn "'$*' failed (exit $rc$( ((rc == 124)) && printf ', timed out after %s s' "$limit")); the end of $log:"
    tail -n 25 -- "$log" | sed 's/^/    /' >&2
  fi
  return "$rc"
}

# A command prefix that runs a command in the root DIR (appended), in
# namespaces of its own: no network (a package's init script that starts a
# daemon anyway cannot take a port of this machine), its own mounts (what it
# mounts goes away with it) with a /proc of its own, its own pids (whatever
# it leaves running dies with it).
in_root() {
  local dir=$1
  in_root_cmd=(unshare --fork --pid --kill-child "--mount-proc=$dir/proc" --net -- chroot "$dir")
}

# Makes the debootstrap root for base_key under $cache_dir/base-KEY/root.
build_base() {
  local dir=$cache_dir/base-$1 work=$cache_dir/base-$1.tmp mirror t0=$SECONDS log
  mirror=$(hakube_debian_mirror "$SUITE") ||
    die "no Debian $SUITE mirror in apt's sources; set HAKUBE_DEBIAN_MIRROR (e.g. http://deb.debian.org/debian)"
  rm -rf --one-file-system -- "$work"
  mkdir -p -- "$work"
  log=$work/build.log
  msg "building the VM root with debootstrap from $mirror (${#VM_PACKAGES[@]} packages and their dependencies; a few minutes; log $log)"
  # --foreign: unpack only, so that policy-rc.d is in place before any
  # package is configured; the second stage then runs without network.
  run_logged "$log" 1800 debootstrap --foreign --variant=minbase --components=main \
    --include="$(
      IFS=,
      printf '%s' "${VM_PACKAGES[*]}"
    )" "$SUITE" "$work/root" "$mirror" || die "debootstrap (download and unpack) failed"
  msg "  packages downloaded and unpacked ($(fmt_secs $((SECONDS - t0))))"
  # No package may start a service while the root is being made.
  printf '#!/bin/sh\nexit 101\n' >"$work/root/usr/sbin/policy-rc.d"
  chmod 0755 "$work/root/usr/sbin/policy-rc.d"
  in_root "$work/root"
  run_logged "$log" 1800 "${in_root_cmd[@]}" /debootstrap/debootstrap --second-stage ||
    die "debootstrap --second-stage failed"
  msg "  packages configured ($(fmt_secs $((SECONDS - t0))))"
  customize_root "$work/root" "$log"
  mv -T -- "$work" "$dir"
  : >"$dir/.complete"
  msg "VM root built in $(fmt_secs $((SECONDS - t0))): $dir/root ($(du -sh --one-file-system -- "$dir/root" | cut -f1))"
}

# What makes the debootstrap root a VM: boots from /dev/vda, configures its
# network from the kernel command line, lets the key in, and runs nothing
# that would fight hakube or eat an emulated CPU.
customize_root() {
  local r=$1 log=$2 i
  printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$r/etc/fstab"
  # debootstrap copied this machine's; each VM's name is systemd.hostname=.
  printf 'localhost\n' >"$r/etc/hostname"
  {
    printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n'
    for ((i = 1; i <= 9; i++)); do
      printf '%s.%d m%d\n%s.%d w%d\n' "$net_prefix" $((10 + i)) "$i" "$net_prefix" $((20 + i)) "$i"
    done
  } >"$r/etc/hosts"
  # No resolver answers in the namespace: none is named.
  rm -f -- "$r/etc/resolv.conf"
  : >"$r/etc/resolv.conf"
  install -d -m 0700 "$r/root/.ssh"
  install -m 0600 "$ssh_key.pub" "$r/root/.ssh/authorized_keys"
  mkdir -p "$r/etc/ssh/sshd_config.d"
  printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n' >"$r/etc/ssh/sshd_config.d/hakube-vm.conf"
  # The journal survives reboots (to read what happened before one).
  mkdir -p "$r/var/log/journal" "$r/etc/systemd/journald.conf.d"
  printf '[Journal]\nStorage=persistent\nSystemMaxUse=64M\n' >"$r/etc/systemd/journald.conf.d/hakube-vm.conf"
  rm -f -- "$r/usr/sbin/policy-rc.d"
  # The network from ip= on the kernel command line: systemd-network-generator
  # writes the .network file, systemd-networkd applies it, and its
  # wait-online service is what network-online.target (hakube.service's
  # After=) waits for. hakube runs etcd and containerd itself: the packages'
  # own services are masked, as scripts/deps.sh does on a systemd host.
  # Timers that would run apt or scrub disks in an emulated CPU are masked.
  in_root "$r"
  run_logged "$log" 300 "${in_root_cmd[@]}" systemctl enable systemd-networkd.service systemd-network-generator.service ||
    die "cannot enable systemd-networkd in the VM root"
  local -a masks=()
  for unit in etcd.service containerd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    e2scrub_reap.service fstrim.timer man-db.timer dpkg-db-backup.timer logrotate.timer; do
    [[ -e $r/lib/systemd/system/$unit || -e $r/usr/lib/systemd/system/$unit ]] && masks+=("$unit")
  done
  run_logged "$log" 300 "${in_root_cmd[@]}" systemctl mask "${masks[@]}" || die "cannot mask ${masks[*]} in the VM root"
  rm -rf -- "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* "$r/debootstrap"
}

# ensure_image BIN BUNDLE: sets image_dir to a directory with disk.img,
# vmlinuz and initrd.img, building what is missing.
ensure_image() {
  local bin=$1 bundle=$2 bkey ikey base dir work t0=$SECONDS kernel initrd
  ensure_ssh_key
  mkdir -p -- "$cache_dir"
  exec 8>>"$cache_dir/.lock"
  flock -w 3600 8 || die "$cache_dir/.lock is still held after an hour: is another vm.sh building?"
  bkey=$(base_key)
  ikey=$(image_key "$bin" "$bundle")
  dir=$cache_dir/image-$ikey
  if [[ -e $dir/.complete ]]; then
    msg "image cached: $dir"
    image_dir=$dir
    exec 8>&-
    return 0
  fi
  base=$cache_dir/base-$bkey
  if [[ -e $base/.complete ]]; then
    msg "VM root cached: $base/root"
  else
    build_base "$bkey"
  fi
  work=$cache_dir/image-$ikey.tmp
  rm -rf -- "$work"
  mkdir -p -- "$work"
  msg "making the disk image: $base/root + /opt/hakube (hakube $(sha256_of "$bin" | cut -c1-12), install.sh, bundle ${bundle##*/})"
  # /opt/hakube is the only part of the root that differs between images.
  rm -rf -- "$base/root/opt/hakube"
  install -d -m 0755 "$base/root/opt/hakube"
  install -m 0755 "$bin" "$base/root/opt/hakube/hakube"
  install -m 0755 "$script_dir/install.sh" "$base/root/opt/hakube/install.sh"
  cp -a --reflink=auto -- "$bundle" "$base/root/opt/hakube/bundle"
  run_logged "$work/mkfs.log" 1200 mkfs.ext4 -q -F -L hakube-vm -d "$base/root" "$work/disk.img" "$disk_size" ||
    die "mkfs.ext4 -d failed"
  kernel=$(readlink -f -- "$base/root/vmlinuz" 2>/dev/null || true)
  initrd=$(readlink -f -- "$base/root/initrd.img" 2>/dev/null || true)
  # The root's symlinks are absolute inside the root.
  [[ -f $kernel ]] || kernel=$base/root/$(readlink -- "$base/root/vmlinuz")
  [[ -f $initrd ]] || initrd=$base/root/$(readlink -- "$base/root/initrd.img")
  [[ -f $kernel && -f $initrd ]] || die "no kernel or initrd in $base/root (vmlinuz, initrd.img)"
  cp -- "$kernel" "$work/vmlinuz"
  cp -- "$initrd" "$work/initrd.img"
  printf 'base=%s\nhakube=%s\nbundle=%s\nbuilt_at=%s\n' "$bkey" "$(sha256_of "$bin")" "$bundle" \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$work/INPUTS"
  mv -T -- "$work" "$dir"
  : >"$dir/.complete"
  msg "disk image made in $(fmt_secs $((SECONDS - t0))): $dir ($(du -sh -- "$dir/disk.img" | cut -f1) used of $disk_size)"
  prune_cache "$dir" "$base"
  image_dir=$dir
  exec 8>&-
}

# Removes the disk images and roots that nothing uses: an image stays while a
# state directory that names it in its "image" file exists (its VMs'
# overlays are deltas to it); each state directory that takes an image is
# listed in the image's "users" file.
prune_cache() {
  local keep=$1 keep_base=$2 d user used
  for d in "$cache_dir"/image-*; do
    [[ -d $d && $d != "$keep" ]] || continue
    used=0
    if [[ -r $d/users ]]; then
      while read -r user; do
        [[ -r $user/image && $(<"$user/image") == "$d" ]] && used=1
      done <"$d/users"
    fi
    ((used)) && continue
    rm -rf -- "$d" && msg "removed the unused image $d"
  done
  for d in "$cache_dir"/base-*; do
    [[ -d $d && $d != "$keep_base" ]] || continue
    rm -rf --one-file-system -- "$d" && msg "removed the old VM root $d"
  done
}

# ---------------------------------------------------------------------------
# Accelerator

# kvm when a bounded probe boots the image's kernel with it (it gets as far
# as panicking for want of a root file system), else tcg. On machines whose
# /dev/kvm cannot run an ordinary guest, a KVM boot hangs at the firmware:
# the probe's bound is what keeps that from hanging us.
choose_accel() {
  local kernel=$1 out
  case ${HAKUBE_VM_ACCEL:-} in
    kvm | tcg)
      accel=$HAKUBE_VM_ACCEL
      msg "accelerator: $accel (HAKUBE_VM_ACCEL)"
      return 0
      ;;
    "") ;;
    *) die "HAKUBE_VM_ACCEL must be kvm or tcg (got '$HAKUBE_VM_ACCEL')" ;;
  esac
  if [[ -r $state_dir/accel ]]; then
    accel=$(<"$state_dir/accel")
    return 0
  fi
  accel=tcg
  if [[ -r /dev/kvm && -w /dev/kvm ]]; then
    out=$(mktemp "${TMPDIR:-/tmp}/hakube-kvm-probe.XXXXXX")
    # In a subshell that outlives it: a qemu that aborts is reported by
    # the shell that waits for it, here into /dev/null.
    (
      timeout -k 2 20 qemu-system-x86_64 -accel kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config \
        -display none -no-reboot -serial "file:$out" -kernel "$kernel" \
        -append 'console=ttyS0 panic=-1' </dev/null || true
    ) >/dev/null 2>&1
    if grep -q 'Linux version' "$out"; then
      accel=kvm
      msg "accelerator: kvm (a probe booted a kernel with it)"
    else
      msg "accelerator: tcg, software emulation (/dev/kvm is there, but a kernel booted with it printed nothing within 20 s)"
    fi
    rm -f -- "$out"
  else
    msg "accelerator: tcg, software emulation (no usable /dev/kvm)"
  fi
  printf '%s\n' "$accel" >"$state_dir/accel"
}

# ---------------------------------------------------------------------------
# VMs

recorded_hosts() {
  [[ -f $hosts_file ]] || return 0
  awk 'NF == 2 && $1 ~ /^[mw][0-9]$/ {print $1, $2}' "$hosts_file"
}

ip_of() {
  local ip
  ip=$(awk -v n="$1" '$1 == n {print $2}' "$hosts_file" 2>/dev/null)
  [[ -n $ip ]] || die "no VM named '$1' (known: $(recorded_hosts | awk '{print $1}' | xargs))"
  printf '%s\n' "$ip"
}

record_host() {
  if [[ -f $hosts_file ]] && awk -v n="$1" '$1 == n {found = 1} END {exit !found}' "$hosts_file"; then
    return 0
  fi
  printf '%s %s\n' "$1" "$2" >>"$hosts_file"
}

ns_exists() { ip netns list | awk '{print $1}' | grep -qxF -- "$ns"; }

# The namespace with the bridge the VMs' taps join (nothing in the
# machine's own namespace).
ensure_network() {
  if ! { { ns_exists || ip netns add "$ns"; } && ip -n "$ns" link set lo up &&
    { ip -n "$ns" link show "$bridge" >/dev/null 2>&1 || ip -n "$ns" link add "$bridge" type bridge; } &&
    ip -n "$ns" link set "$bridge" up; }; then
    die "cannot set up the namespace $ns"
  fi
  ip -n "$ns" addr replace "$gateway/$net_bits" dev "$bridge" || die "cannot address $bridge in $ns"
}

ensure_tap() {
  local tap=tap-$1
  if ! ip -n "$ns" link show "$tap" >/dev/null 2>&1; then
    ip -n "$ns" tuntap add dev "$tap" mode tap || die "cannot create $tap in $ns (is /dev/net/tun there?)"
  fi
  ip -n "$ns" link set "$tap" master "$bridge" up || die "cannot attach $tap to $bridge in $ns"
}

# The pid of NAME's qemu when it runs (checked against its command line:
# pids are reused).
qemu_pid() {
  local pid
  [[ -r $state_dir/$1.pid ]] || return 1
  read -r pid <"$state_dir/$1.pid" || return 1
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$state_dir/$1.qcow2" || return 1
  printf '%s\n' "$pid"
}

vm_cmdline() {
  local name=$1 ip=$2 machine_id
  machine_id=$(printf 'hakube-vm %s' "$name" | md5sum | cut -c1-32)
  printf '%s' "root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.hostname=$name systemd.machine_id=$machine_id" \
    " ip=$ip::$gateway:$netmask:$name:eth0:off panic=10"
}

# Starts NAME's qemu (detached) unless it runs; records when.
vm_start() {
  local name=$1 ip=$2 overlay=$state_dir/$1.qcow2 last cpu mac
  qemu_pid "$name" >/dev/null && return 0
  if [[ ! -e $overlay ]]; then
    qemu-img create -q -f qcow2 -F raw -b "$image_dir/disk.img" "$overlay" ||
      die "cannot create the overlay $overlay"
  fi
  ensure_tap "$name"
  last=${ip##*.}
  mac=$(printf '52:54:00:78:00:%02x' "$last")
  cpu=max
  [[ $accel == kvm ]] && cpu=host
  [[ $lifetime =~ ^[0-9]+$ ]] || die "HAKUBE_VM_LIFETIME must be a number of seconds (got '$lifetime')"
  rm -f -- "$state_dir/$name.pid"
  printf '%s\n' "$(date +%s)" >"$state_dir/$name.started"
  # cache=writeback: a guest's flush reaches the host's page cache, so
  # SIGKILLing qemu loses exactly what a power cut would (cache=unsafe would
  # also drop qcow2 metadata the guest believes is on disk).
  # In a session of its own (a Ctrl-C of ours is not its power cut), under
  # timeout for HAKUBE_VM_LIFETIME; 9>&-: the VM must not hold our lock.
  ip netns exec "$ns" setsid timeout -s KILL "$lifetime" qemu-system-x86_64 \
    -name "$name,process=hakube-vm-$name" \
    -machine pc -accel "$accel" -cpu "$cpu" -smp 1 -m "$memory" \
    -nodefaults -no-user-config -display none \
    -kernel "$image_dir/vmlinuz" -initrd "$image_dir/initrd.img" -append "$(vm_cmdline "$name" "$ip")" \
    -drive "file=$overlay,format=qcow2,if=virtio,cache=writeback" \
    -netdev "tap,id=net0,ifname=tap-$name,script=no,downscript=no" \
    -device "virtio-net-pci,netdev=net0,mac=$mac" \
    -device virtio-rng-pci \
    -chardev "file,id=console,path=$state_dir/$name.console,append=on" -serial chardev:console \
    -pidfile "$state_dir/$name.pid" \
    </dev/null >>"$state_dir/$name.qemu.log" 2>&1 9>&- &
  local launcher=$! i
  # qemu writes its pid file once its devices are set up.
  for ((i = 0; i < 300; i++)); do
    qemu_pid "$name" >/dev/null && return 0
    kill -0 "$launcher" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 5 -- "$state_dir/$name.qemu.log" | sed 's/^/    /' >&2
  die "qemu for $name did not start; see $state_dir/$name.qemu.log"
}

ssh_opts() {
  printf '%s\n' -i "$ssh_key" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o LogLevel=ERROR -o ConnectTimeout=10 -o ServerAliveInterval=10 -o ServerAliveCountMax=6
}

# vm_ssh NAME COMMAND...: runs COMMAND on NAME as root (a shell command line,
# as ssh passes it), with no input (`$script ssh` passes its input on).
vm_ssh() {
  local name=$1 ip
  shift
  ip=$(ip_of "$name")
  local -a opts
  mapfile -t opts < <(ssh_opts)
  ip netns exec "$ns" ssh -n "${opts[@]}" "root@$ip" -- "$@" </dev/null 9>&-
}

# Waits (bounded) until NAME answers ssh and systemd has finished booting;
# prints how long since its qemu started.
wait_booted() {
  local name=$1 limit=${2:-$boot_timeout} deadline started state
  deadline=$((SECONDS + limit))
  started=$(cat -- "$state_dir/$name.started" 2>/dev/null || date +%s)
  until timeout -k 5 20 "$script" ssh "$name" true </dev/null 2>/dev/null; do
    qemu_pid "$name" >/dev/null || die "$name's qemu exited; see $state_dir/$name.console and $name.qemu.log"
    ((SECONDS < deadline)) || die "$name did not answer ssh within $limit s; its console: $state_dir/$name.console"
    sleep 2
  done
  state=$(timeout -k 5 $((deadline - SECONDS > 10 ? deadline - SECONDS : 10)) \
    "$script" ssh "$name" systemctl is-system-running --wait </dev/null 2>/dev/null) || true
  case $state in
    running) ;;
    degraded) warn "$name booted degraded: $(vm_ssh "$name" systemctl --failed --no-legend --plain 2>/dev/null | awk '{print $1}' | xargs)" ;;
    *) die "$name did not finish booting within $limit s (systemd says '${state:-nothing}'); its console: $state_dir/$name.console" ;;
  esac
  printf '%s\n' $(($(date +%s) - started))
}

# ---------------------------------------------------------------------------
# Commands

cmd_image() {
  local bin bundle
  require_root image
  hakube_ensure_deps vm || die "could not install the dependencies"
  bin=$(hakube_binary "$repo") || die "no hakube binary"
  bundle=$(bash "$script_dir/kube-bundle.sh") || die "could not build or find the Kubernetes bundle"
  ensure_image "$bin" "$bundle"
  printf '%s\n' "$image_dir"
}

cmd_up() {
  local masters=3 workers=0 bin bundle i name ip t0 secs
  local -a extra_words=()
  read -r -a extra_words <<<"${HAKUBE_VM_INSTALL:-}"
  while (($#)); do
    case "$1" in
      --masters | --workers)
        if (($# < 2)) || ! [[ $2 =~ ^[0-9]+$ ]]; then
          usage
          die "$1 needs a number"
        fi
        if [[ $1 == --masters ]]; then masters=$((10#$2)); else workers=$((10#$2)); fi
        shift 2
        ;;
      --masters=* | --workers=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
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
  if ! [[ $memory =~ ^[0-9]+$ ]] || ((memory < 512)); then
    die "HAKUBE_VM_MEMORY must be a number of MiB, at least 512"
  fi

  require_root up
  hakube_ensure_deps vm || die "could not install the dependencies"
  [[ -c /dev/net/tun ]] || die "/dev/net/tun is missing: qemu needs it for the VMs' taps"
  bin=$(hakube_binary "$repo") || die "no hakube binary"
  bundle=$(bash "$script_dir/kube-bundle.sh") || die "could not build or find the Kubernetes bundle"

  if [[ -e $state_dir && ! -e $marker ]] && [[ -n $(ls -A -- "$state_dir" 2>/dev/null) ]]; then
    die "$state_dir exists, is not empty and was not made by $prog; set HAKUBE_VM_DIR elsewhere"
  fi
  [[ $state_dir != / && $state_dir != "$repo" ]] || die "HAKUBE_VM_DIR must be a directory of its own, not $state_dir"
  take_lock
  mkdir -p -- "$state_dir"
  : >"$marker"

  t0=$SECONDS
  if [[ -r $state_dir/image && -e $(<"$state_dir/image")/.complete ]]; then
    # VMs made from an image keep it: their overlays are deltas to it.
    image_dir=$(<"$state_dir/image")
    msg "the VMs use $image_dir (a new binary takes: scripts/$prog down, then up)"
  else
    ensure_image "$bin" "$bundle"
    printf '%s\n' "$image_dir" >"$state_dir/image"
    printf '%s\n' "$state_dir" >>"$image_dir/users"
  fi
  local image_secs=$((SECONDS - t0))
  choose_accel "$image_dir/vmlinuz"
  if [[ -z $master_components ]]; then
    master_components=$all_components
    [[ $accel == tcg ]] && master_components=etcd
  fi
  ensure_network

  local -a names=()
  for ((i = 1; i <= masters; i++)); do
    record_host "m$i" "$net_prefix.$((10 + i))"
    names+=("m$i")
  done
  for ((i = 1; i <= workers; i++)); do
    record_host "w$i" "$net_prefix.$((20 + i))"
    names+=("w$i")
  done
  local -a booting=()
  for name in "${names[@]}"; do
    qemu_pid "$name" >/dev/null && continue
    vm_start "$name" "$(ip_of "$name")"
    booting+=("$name")
  done
  if ((${#booting[@]})); then
    msg "booting ${booting[*]} ($accel, 1 vCPU and $memory MiB each; at most $boot_timeout s)"
    local boot_max=0
    for name in "${booting[@]}"; do
      secs=$(wait_booted "$name")
      msg "  $name reached multi-user ${secs} s after its qemu started"
      ((secs > boot_max)) && boot_max=$secs
    done
  fi

  local install_secs=- join_secs=-
  if vm_ssh m1 test -e /etc/hakube/cluster.yaml 2>/dev/null; then
    msg "hakube is installed on m1 already"
  else
    msg "installing hakube on m1 with systemd: /opt/hakube/install.sh ha ${extra_words[*]} (components $master_components; at most $install_timeout s)"
    t0=$SECONDS
    timeout -k 10 "$install_timeout" "$script" ssh m1 /opt/hakube/install.sh ha "${extra_words[@]}" \
      bundle=/opt/hakube/bundle "components=$master_components" "timeout=${install_timeout}s" ||
      die "hakube install on m1 failed or timed out; look: scripts/$prog ssh m1 journalctl -u hakube; ls /var/lib/hakube/logs"
    install_secs=$((SECONDS - t0))
    msg "m1 installed in $install_secs s"
  fi
  join_secs=$(join_vms)
  msg "hakube.service on every VM:"
  local rc=0
  while read -r name _; do
    printf '== %s: %s, %s\n' "$name" \
      "$(vm_ssh "$name" systemctl is-enabled hakube.service 2>/dev/null || true)" \
      "$(vm_ssh "$name" systemctl is-active hakube.service 2>/dev/null || true)"
    timeout -k 5 60 "$script" ssh "$name" hakube status </dev/null || rc=$?
  done < <(recorded_hosts)
  cat >&2 <<EOF

$prog: up: image $image_secs s ($image_dir), $accel; seconds to boot (slowest): ${boot_max:--}, to install m1: $install_secs, to join the others: $join_secs
  scripts/$prog ssh m1                       # a root shell on m1
  scripts/$prog ssh m1 hakube status
  scripts/$prog ssh m1 journalctl -u hakube  # the agent's journal
  scripts/$prog kill m2; scripts/$prog boot m2   # power loss, and back
  scripts/$prog down
EOF
  ((rc == 0)) || die "a VM is not healthy (hakube status exited $rc)"
}

# Joins every VM that has no hakube yet, all at once, with the scripts m1
# prints. Prints how long the joins took ("-" when there was nothing to do).
join_vms() {
  local name ip role failed=0 i t0=$SECONDS
  local -a todo=() pids=()
  while read -r name ip; do
    [[ $name == m1 ]] && continue
    vm_ssh "$name" test -e /etc/hakube/cluster.yaml 2>/dev/null && continue
    todo+=("$name")
  done < <(recorded_hosts)
  if ((${#todo[@]} == 0)); then
    echo -
    return 0
  fi
  for role in master worker; do
    local flag=
    [[ $role == master ]] && flag=--master
    # shellcheck disable=SC2086 # $flag is one word or none
    timeout -k 5 120 "$script" ssh m1 hakube node-join-script $flag </dev/null >"$state_dir/join-$role.sh" ||
      die "hakube node-join-script $flag on m1 failed"
    chmod 0600 "$state_dir/join-$role.sh"
  done
  msg "joining ${todo[*]} at the same moment with the scripts m1 printed (at most $install_timeout s)"
  for name in "${todo[@]}"; do
    if [[ $name == m* ]]; then
      role=master components=$master_components
    else
      role=worker components=$worker_components
    fi
    (
      timeout -k 5 60 "$script" ssh "$name" 'umask 077; cat >/root/join.sh' <"$state_dir/join-$role.sh" &&
        timeout -k 10 "$install_timeout" "$script" ssh "$name" bash /root/join.sh \
          --bundle /opt/hakube/bundle --components "$components" --timeout "${install_timeout}s" </dev/null
    ) >"$state_dir/join-$name.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then
      msg "  ${todo[$i]} joined ($((SECONDS - t0)) s)"
    else
      warn "${todo[$i]} failed to join; its output: $state_dir/join-${todo[$i]}.log"
      tail -n 20 -- "$state_dir/join-${todo[$i]}.log" | sed 's/^/    /' >&2
      failed=1
    fi
  done
  ((failed == 0)) || die "some VMs did not join"
  echo $((SECONDS - t0))
}

cmd_status() {
  local name ip rc=0 pid
  require_root status
  [[ -e $marker ]] || {
    msg "the VMs are not up (start them with: scripts/$prog up)"
    exit 1
  }
  while read -r name ip; do
    if ! pid=$(qemu_pid "$name"); then
      printf '== %s (%s): not running\n' "$name" "$ip"
      rc=1
      continue
    fi
    if ! timeout -k 5 20 "$script" ssh "$name" true </dev/null 2>/dev/null; then
      printf '== %s (%s): qemu pid %s, no ssh\n' "$name" "$ip" "$pid"
      rc=1
      continue
    fi
    printf '== %s (%s): qemu pid %s, hakube.service %s, %s\n' "$name" "$ip" "$pid" \
      "$(vm_ssh "$name" systemctl is-enabled hakube.service 2>/dev/null || true)" \
      "$(vm_ssh "$name" systemctl is-active hakube.service 2>/dev/null || true)"
    timeout -k 5 60 "$script" ssh "$name" hakube status </dev/null || rc=1
  done < <(recorded_hosts)
  exit "$rc"
}

cmd_ssh() {
  (($# >= 1)) || die "ssh needs a host (one of: $(recorded_hosts | awk '{print $1}' | xargs))"
  local name=$1 ip
  shift
  require_root ssh
  ns_exists || die "the namespace $ns does not exist: scripts/$prog up"
  ip=$(ip_of "$name")
  local -a opts
  mapfile -t opts < <(ssh_opts)
  if (($# == 0)) && [[ -t 0 ]]; then
    exec ip netns exec "$ns" ssh -t "${opts[@]}" "root@$ip"
  fi
  exec ip netns exec "$ns" ssh "${opts[@]}" "root@$ip" -- "$@"
}

cmd_kill() {
  (($# == 1)) || die "kill needs one host"
  local name=$1 pid i
  require_root kill
  ip_of "$name" >/dev/null
  pid=$(qemu_pid "$name") || die "$name is not running"
  kill -KILL "$pid"
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && die "$name's qemu (pid $pid) is still there 10 s after SIGKILL"
  rm -f -- "$state_dir/$name.pid"
  msg "$name: power cut (qemu pid $pid killed)"
}

cmd_boot() {
  (($# == 1)) || die "boot needs one host"
  local name=$1 secs
  require_root boot
  [[ -r $state_dir/image ]] || die "no VMs: scripts/$prog up"
  image_dir=$(<"$state_dir/image")
  choose_accel "$image_dir/vmlinuz"
  take_lock
  ensure_network
  if qemu_pid "$name" >/dev/null; then
    msg "$name runs already"
  else
    vm_start "$name" "$(ip_of "$name")"
  fi
  exec 9>&-
  secs=$(wait_booted "$name")
  msg "$name reached multi-user ${secs} s after its qemu started"
}

cmd_down() {
  local name pid pids i failed=0
  (($# == 0)) || die "down takes no arguments"
  require_root down
  take_lock
  if [[ -f $hosts_file ]]; then
    while read -r name _; do
      pid=$(qemu_pid "$name") || continue
      kill -KILL "$pid" 2>/dev/null || true
      msg "stopped $name (qemu pid $pid)"
    done < <(recorded_hosts)
  fi
  if ns_exists; then
    # Anything else still in the namespace (ssh clients, a qemu whose pid
    # file is gone): TERM, then KILL what is left after 10 s.
    pids=$(ip netns pids "$ns" 2>/dev/null | xargs)
    if [[ -n $pids ]]; then
      msg "stopping what is left in $ns: $pids"
      # shellcheck disable=SC2086 # one pid per word
      kill -TERM $pids 2>/dev/null || true
      for ((i = 0; i < 100; i++)); do
        [[ -n $(ip netns pids "$ns" 2>/dev/null) ]] || break
        sleep 0.1
      done
      pids=$(ip netns pids "$ns" 2>/dev/null | xargs)
      # shellcheck disable=SC2086
      [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
    fi
    if ip netns del "$ns"; then
      msg "deleted namespace $ns"
    else
      warn "could not delete namespace $ns"
      failed=1
    fi
  fi
  if [[ -d $state_dir ]]; then
    if [[ $state_dir == / || $state_dir == "$repo" || $state_dir == "${HOME:-/}" ]]; then
      warn "refusing to remove $state_dir"
      failed=1
    elif [[ -e $marker ]] || [[ -z $(ls -A -- "$state_dir") ]]; then
      for ((i = 0; i < 50; i++)); do
        rm -rf --one-file-system -- "$state_dir" 2>/dev/null && break
        sleep 0.2
      done
      if [[ -e $state_dir ]]; then
        warn "could not remove all of $state_dir"
        failed=1
      else
        msg "removed $state_dir"
      fi
    else
      warn "$state_dir was not made by $prog (no ${marker##*/}); leaving it alone"
      failed=1
    fi
  fi
  ((failed == 0)) || die "the VMs were not removed completely"
  msg "the VMs are down (the image stays cached in $cache_dir)"
}

main() {
  local cmd=${1:-}
  case "$cmd" in
    up | status | down | image | kill | boot | ssh | exec) hakube_as_root "$script" "$@" ;;
  esac
  (($#)) && shift
  case "$cmd" in
    up) cmd_up "$@" ;;
    status) cmd_status "$@" ;;
    ssh | exec) cmd_ssh "$@" ;;
    kill) cmd_kill "$@" ;;
    boot) cmd_boot "$@" ;;
    image) cmd_image "$@" ;;
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

main "$@"; exit
