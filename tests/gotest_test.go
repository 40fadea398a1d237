package tests

import (
	"os/exec"
	"strings"
	"testing"
)

// TestSkipMessages: scripts/gotest.sh pairs each "--- SKIP" with the
// skipped test's own message, even when parallel tests print in between
// (the output below is what `go test -v ./tap/` printed on this machine).
// Under CI a skip whose message does not say "this kernel lacks" fails
// the run, so a wrong pairing failed CI by chance; pairing with the line
// before the "--- SKIP" gave TestQdisc's "--- PASS" line here.
func TestSkipMessages(t *testing.T) {
	const out = `=== RUN   TestImpairment
=== PAUSE TestImpairment
=== RUN   TestQdisc
=== PAUSE TestQdisc
=== CONT  TestImpairment
=== CONT  TestQdisc
=== NAME  TestImpairment
    impair_test.go:168: needs the netem qdisc (CONFIG_NET_SCH_NETEM), which this kernel lacks; runs inside a guest (TestGuestOnly)
=== CONT  TestBusyAndMismatch
=== NAME  TestQdisc
    tap_test.go:10: some log line of TestQdisc
--- PASS: TestQdisc (0.96s)
--- SKIP: TestImpairment (0.03s)
=== RUN   TestSub
=== RUN   TestSub/a
    x_test.go:1: prerequisite missing: tshark
=== RUN   TestSub/b
    x_test.go:2: b's line
--- PASS: TestSub (0.00s)
    --- SKIP: TestSub/a (0.00s)
    --- PASS: TestSub/b (0.00s)
ok  	github.com/vmnet/vmnet/tap	1.0s
=== RUN   TestImpairment
--- SKIP: TestImpairment (0.00s)
FAIL	github.com/vmnet/vmnet/other	1.0s
`
	cmd := exec.Command("awk", "-f", "../scripts/skips.awk")
	cmd.Stdin = strings.NewReader(out)
	got, err := cmd.Output()
	if err != nil {
		t.Fatalf("awk -f scripts/skips.awk: %v", err)
	}
	want := `--- SKIP: TestImpairment (0.03s) ::     impair_test.go:168: needs the netem qdisc (CONFIG_NET_SCH_NETEM), which this kernel lacks; runs inside a guest (TestGuestOnly)
    --- SKIP: TestSub/a (0.00s) ::     x_test.go:1: prerequisite missing: tshark
--- SKIP: TestImpairment (0.00s) :: 
`
	if string(got) != want {
		t.Errorf("skips.awk printed\n%s\nwant\n%s", got, want)
	}
}
