#!/usr/bin/env bash
# Statistics shared by the benchmarks (sourced, not run): times as seconds
# with three decimals, "-" for a missing value.

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# median VALUE...: the median, or "-" when there are no values.
median() {
  (($#)) || {
    echo -
    return
  }
  printf '%s\n' "$@" | sort -g | awk '
    { v[NR] = $1 }
    END {
      if (NR % 2) printf "%.3f\n", v[(NR + 1) / 2]
      else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2
    }'
}

# minmax VALUE...: "MIN MAX", or "- -" when there are no values.
minmax() {
  (($#)) || {
    echo "- -"
    return
  }
  printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.3f %.3f\n", lo, hi }'
}

# ratio A B: A/B to two decimals, "-" when either is missing or B is zero.
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f\n", a / b }'
}
