package main

import (
	"strings"
	"testing"
)

// TestUpHostChoice: a lab with several [[host]] tables needs --host,
// which must name one of them; a lab without hosts refuses --host. All
// are usage errors (exit 2) that change nothing.
func TestUpHostChoice(t *testing.T) {
	const two = "../../examples/two-hosts.toml"
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"up", two}, "lab two-hosts spans 2 hosts: say which part to bring up here with --host NAME (h1, h2)"},
		{[]string{"up", two, "--host", "h9"}, `lab two-hosts has no host "h9": use one of h1, h2`},
		{[]string{"up", "../../examples/demo.toml", "--host", "h1"}, "lab demo has no [[host]] tables, so --host h1 has no meaning"},
	} {
		st, _, stderr := vmnet(t, tt.args...)
		if st != 2 || !strings.Contains(stderr, tt.want) {
			t.Errorf("vmnet %v: exit %d, stderr %q; want 2 and %q", tt.args, st, stderr, tt.want)
		}
	}
	st, out, stderr := vmnet(t, "validate", two)
	if st != 0 || !strings.Contains(out, "2 networks, 2 VMs, 5 NICs, 1 link, 2 hosts") {
		t.Errorf("validate two-hosts: exit %d, %q %q", st, out, stderr)
	}
}
