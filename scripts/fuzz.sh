#!/usr/bin/env bash
# Runs every Fuzz target in the module for a short time each ($1, e.g. 10s).
#
# Go 1.26's fuzz coordinator can end a clean run with a bare "context
# deadline exceeded" at the -fuzztime boundary (golang/go#75804, fixed in
# Go 1.27). A real finding always writes its input under testdata/fuzz and
# says "Failing input written to", so only that, or any other failure,
# fails the run; the boundary race alone is retried once, then reported.
set -uo pipefail
t=${1:-10s}
status=0
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    for try in 1 2; do
      echo "fuzz: $pkg $f for $t"
      log=$(go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" -fuzzminimizetime 1s "$pkg" 2>&1)
      rc=$?
      echo "$log"
      [ $rc = 0 ] && break
      if echo "$log" | grep -q 'context deadline exceeded' && ! echo "$log" | grep -q -e 'Failing input written' -e '^panic:' -e '_test.go:[0-9]*:'; then
        echo "fuzz: $f: Go's fuzztime boundary race (golang/go#75804), no failing input; try $try of 2"
        [ $try = 2 ] && echo "fuzz: $f: accepted: both runs ended in the boundary race without a finding"
        continue
      fi
      status=1
      break
    done
  done
done
exit $status
