#!/usr/bin/env bash
# Split and coalesce speed against tailscale's wireguard-go (issue 13), in
# one run: bench/peer is a module of its own (the main module does not
# depend on wireguard-go) whose benchmarks give both the same input and
# check first that both produce the same frames.
#
#   scripts/bench-gso.sh [ROUNDS]       (make bench-gso ROUNDS=5)
#
# Each round runs every pair once, vmnet then tailscale back to back, so the
# pairs alternate A B A B over the rounds. The table shows per round ns/op
# and cpu-ns/op (this thread's CPU time: the machine may be shared) of both,
# and the speed-up tailscale/vmnet; then the medians. With CACHEGRIND=1 it
# also counts instructions per operation under valgrind, which load does
# not disturb: the difference between a 100x and a 600x run, over 500.
set -euo pipefail
cd "$(dirname "$0")/../bench/peer"
GO=${GO:-go}
rounds=${1:-${ROUNDS:-5}}
BENCH=${BENCH:-.}
bin=$(mktemp /tmp/vmnet-peer-XXXXXX.test)
out=$(mktemp /tmp/vmnet-peer-XXXXXX.txt)
trap 'rm -f "$bin" "$out" "$out".cg*' EXIT
$GO test -c -o "$bin" .
"$bin" -test.run '.' -test.count=1 >/dev/null # same output, or stop here
echo "load: $(uptime | sed 's/.*load average: //')"
for r in $(seq 1 "$rounds"); do
  "$bin" -test.run '^$' -test.bench "$BENCH" -test.count=1 -test.benchtime=${BENCHTIME:-1s} |
    awk -v r="$r" '/^Benchmark/ { sub(/-[0-9]+$/, "", $1); for (i = 3; i < NF; i++) { if ($(i+1) == "ns/op") ns = $i; if ($(i+1) == "cpu-ns/op") cpu = $i }; print r, $1, ns, cpu }' >>"$out"
done
echo "load: $(uptime | sed 's/.*load average: //')"
awk '
function median(a, n,   i, j, t) {
  for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j+1] = a[j]; a[j+1] = t }
  return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
}
{
  n = split($2, p, "/"); impl = p[n]; case_ = $2; sub("/" impl "$", "", case_)
  ns[case_, impl, $1] = $3; cpu[case_, impl, $1] = $4
  if (!(case_ in seen)) { seen[case_] = 1; cases[++nc] = case_ }
  if (!((case_, impl) in seenImpl)) { seenImpl[case_, impl] = 1; impls[case_] = impls[case_] " " impl }
  if ($1 > rounds) rounds = $1
}
END {
  for (c = 1; c <= nc; c++) {
    k = cases[c]; split(substr(impls[k], 2), im, " ")
    printf "\n%s\n%-6s", k, "round"
    for (i in im) ;
    for (i = 1; im[i] != ""; i++) if (im[i] != "tailscale") printf " %14s %14s %8s %8s", im[i] " ns", im[i] " cpu-ns", "ratio", "cpu-ratio"
    printf " %14s %14s\n", "tailscale ns", "tailscale cpu"
    delete rn; delete rc
    for (r = 1; r <= rounds; r++) {
      printf "%-6s", r
      for (i = 1; im[i] != ""; i++) if (im[i] != "tailscale") {
        a = ns[k, im[i], r]; b = ns[k, "tailscale", r]; ac = cpu[k, im[i], r]; bc = cpu[k, "tailscale", r]
        printf " %14.0f %14.0f %7.2fx %7.2fx", a, ac, b / a, bc / ac
        rn[im[i], r] = b / a; rc[im[i], r] = bc / ac
      }
      printf " %14.0f %14.0f\n", ns[k, "tailscale", r], cpu[k, "tailscale", r]
    }
    for (i = 1; im[i] != ""; i++) if (im[i] != "tailscale") {
      delete x; delete y
      for (r = 1; r <= rounds; r++) { x[r] = rn[im[i], r]; y[r] = rc[im[i], r] }
      printf "median speed-up of %s over tailscale: %.2fx (wall), %.2fx (thread cpu)\n", im[i], median(x, rounds), median(y, rounds)
    }
  }
}' "$out"
if [ "${CACHEGRIND:-0}" = 1 ]; then
  echo
  echo "instructions per op (valgrind cachegrind, 600x minus 100x, over 500):"
  for name in $("$bin" -test.list '^Benchmark' | sed 's/^Benchmark//'); do
    for sub in $("$bin" -test.run '^$' -test.bench "^Benchmark$name\$" -test.benchtime=1x | awk '/^Benchmark/ { sub(/-[0-9]+$/, "", $1); print $1 }'); do
      ir() {
        valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$out.cg" "$bin" -test.run '^$' -test.bench "^${sub}\$" -test.benchtime="$1x" -test.cpu=1 2>&1 >/dev/null |
          awk '/I *refs:/ { gsub(",", "", $NF); print $NF }'
      }
      a=$(ir 100); b=$(ir 600)
      printf "%-45s %10d\n" "$sub" $(( (b - a) / 500 ))
    done
  done
fi
