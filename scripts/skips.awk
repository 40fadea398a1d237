# skips.awk reads the output of `go test -v` and prints one line per
# skipped test: its "--- SKIP" line, " :: ", and the test's last log line
# (the skip message). scripts/gotest.sh judges skips by that message.
#
# go test -v prints a test's log as it comes, under a "=== NAME" (or RUN,
# CONT, PAUSE) header whenever the output switches tests, but its
# "--- SKIP" line later, when the result is reported: with parallel tests
# other tests' lines can come in between (seen: tap's TestImpairment's
# "--- SKIP" right after TestQdisc's "--- PASS"). So the last log line is
# kept per test, by the name in the headers, not taken from the line
# before.
/^=== (RUN|PAUSE|CONT|NAME) / { cur = $3; next }
/^[ \t]*--- (PASS|FAIL|SKIP): / {
  if ($2 == "SKIP:") print $0 " :: " last[$3]
  cur = $3
  next
}
# A package's summary line: the next package's tests start afresh.
/^(ok|FAIL|\?)[ \t]/ { split("", last); cur = ""; next }
cur != "" && !/^[ \t]*$/ { last[cur] = $0 }
