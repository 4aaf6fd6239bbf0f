#!/usr/bin/env bash
# libFuzzer targets (fuzz/fuzz_targets/, run by cargo fuzz): every parser
# that reads input from outside the host.
#
#   scripts/fuzz.sh [--seconds N] [TARGET...]   # each target N seconds (default 60)
#
# Seeds come from fuzz/seeds/TARGET (committed); what the fuzzer learns
# goes to fuzz/corpus/TARGET (not committed). A crash, a hang over 10 s or
# over 2 GiB of memory stops the run with the input saved under
# fuzz/artifacts/TARGET/: `cargo +nightly fuzz run TARGET FILE` replays it.
set -euo pipefail
prog=fuzz.sh
# shellcheck source=scripts/lib.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/lib.sh"

seconds=60
targets=()
while (($#)); do
  case $1 in
    --seconds)
      [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--seconds needs a whole number of seconds, e.g. --seconds 60"
      seconds=$2
      shift 2
      ;;
    --seconds=*)
      seconds=${1#--seconds=}
      [[ $seconds =~ ^[1-9][0-9]*$ ]] || die "--seconds needs a whole number of seconds, e.g. --seconds=60"
      shift
      ;;
    -h | --help)
      sed -n '2,11p' "$script" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      targets+=("$1")
      shift
      ;;
  esac
done

hakube_find_cargo || die "cargo not found: install a Rust toolchain (https://rustup.rs), then re-run"
cargo +nightly --version >/dev/null 2>&1 ||
  die "cargo fuzz needs Rust nightly (libFuzzer's instrumentation and sanitizers): rustup toolchain install nightly"
hakube_ensure_cargo_tool fuzz || die "could not install cargo-fuzz"
hakube_ensure_needs c++ protoc protoc-includes ||
  die "could not install g++ (libFuzzer is C++) and protoc (the etcd client's build)"
cd -- "$repo"

mapfile -t all < <(cargo +nightly fuzz list)
((${#targets[@]})) || targets=("${all[@]}")
for t in "${targets[@]}"; do
  [[ " ${all[*]} " == *" $t "* ]] || die "no fuzz target $t (there are: ${all[*]})"
done

msg "building the fuzz targets (cargo +nightly fuzz build -O; several minutes cold)"
cargo +nightly fuzz build -O >&2 || die "could not build the fuzz targets"

failed=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t"
  log=$(mktemp)
  msg "$t: ${seconds} s"
  if cargo +nightly fuzz run -O "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    peak=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    msg "$t: ${runs:-?} inputs in ${seconds} s, no crash, hang or leak (corpus $corpus, peak ${peak:-?} MiB)"
  else
    tail -40 "$log" >&2
    warn "$t failed: the input is under fuzz/artifacts/$t/ (replay: cargo +nightly fuzz run $t FILE)"
    failed+=("$t")
  fi
  rm -f "$log"
done
((${#failed[@]} == 0)) || die "fuzz targets failed: ${failed[*]}"
msg "every target ran ${seconds} s without a failure"
