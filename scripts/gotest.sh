#!/usr/bin/env bash
# Runs `go test` verbosely, prints everything but the RUN/PASS chatter,
# and under CI (CI=true) fails when any test was skipped: a missing
# prerequisite there is a defect, not a reason to pass.
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
go test -count=1 -v "$@" 2>&1 | tee "$log" | grep -v -E '^\s*(=== (RUN|PAUSE|CONT|NAME)|--- PASS)'
status=${PIPESTATUS[0]}
skips=$(grep -E '^\s*--- SKIP' "$log" || true)
if [ -n "$skips" ]; then
  echo "skipped tests:"
  grep -E -A2 '^\s*--- SKIP' "$log" | grep -v -E '^\s*(=== |--- PASS|--$)' || true
  if [ "${CI:-}" = true ]; then
    echo "FAIL: tests were skipped under CI (CI=true); every prerequisite must be present"
    status=1
  fi
fi
passed=$(grep -c -E '^\s*--- PASS' "$log" || true)
failed=$(grep -c -E '^\s*--- FAIL' "$log" || true)
echo "tests: $passed passed, $failed failed"
exit "$status"
