#!/usr/bin/env bash
# Runs `go test` verbosely, prints everything but the RUN/PASS chatter,
# and under CI (CI=true) fails when any test was skipped: a missing
# prerequisite there is a defect, not a reason to pass. The one exception
# is a test that needs a kernel feature this host's kernel lacks (its skip
# message says "this kernel lacks ...", or "this kernel has ..." for the
# host-only counterpart): internal/gexec's TestGuestOnly runs those inside
# a guest whose kernel has the feature and fails if any of them did not
# run and pass there.
set -uo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
go test -count=1 -v "$@" 2>&1 | tee "$log" | grep -v -E '^\s*(=== (RUN|PAUSE|CONT|NAME)|--- PASS)'
status=${PIPESTATUS[0]}
# Each skipped test with its skip message (its last log line; see
# skips.awk for why not simply the line before its "--- SKIP").
skips=$(awk -f "$(dirname "$0")/skips.awk" "$log")
if [ -n "$skips" ]; then
  echo "skipped tests:"
  echo "$skips"
  bad=$(echo "$skips" | grep -v -E 'this kernel (lacks|has) ' || true)
  if [ "${CI:-}" = true ] && [ -n "$bad" ]; then
    echo "FAIL: tests were skipped under CI (CI=true); every prerequisite must be present:"
    echo "$bad"
    status=1
  fi
fi
passed=$(grep -c -E '^\s*--- PASS' "$log" || true)
failed=$(grep -c -E '^\s*--- FAIL' "$log" || true)
echo "tests: $passed passed, $failed failed"
exit "$status"
