#!/usr/bin/env bash
# Network-namespace helpers shared by the sandbox and the benchmarks (sourced,
# not run).

# hakube_stop_ns_processes NS [verbose]: TERM every process in NS, KILL what
# is left after 10 s. With "verbose", says what it does on stderr.
hakube_stop_ns_processes() {
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
