package main

import (
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/vmnet/vmnet/vmconfig"
)

// TestLinkImpairmentFlags: unprefixed flags set both directions, the
// --a-to-b- and --b-to-a- ones override them key by key, no flag means
// no stage, and bad values are usage errors that name the flag.
func TestLinkImpairmentFlags(t *testing.T) {
	parse := func(args ...string) (ab, ba *vmconfig.Impairment, err error) {
		var f linkFlags
		fs := pflag.NewFlagSet("link", pflag.ContinueOnError)
		f.registerImpairments(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return f.impairments()
	}
	ab, ba, err := parse("--delay", "20ms", "--jitter", "5ms", "--loss", "5%", "--duplicate", "1%", "--reorder", "10%",
		"--corrupt", "0.1%", "--rate", "100mbit", "--a-to-b-loss", "20%", "--b-to-a-delay", "1ms")
	if err != nil {
		t.Fatal(err)
	}
	both := vmconfig.Impairment{Delay: 20 * time.Millisecond, Jitter: 5 * time.Millisecond, Loss: 5, Duplicate: 1,
		Reorder: 10, Corrupt: 0.1, Rate: 100e6}
	wantAB, wantBA := both, both
	wantAB.Loss, wantBA.Delay = 20, time.Millisecond
	if ab == nil || ba == nil || *ab != wantAB || *ba != wantBA {
		t.Errorf("got %+v / %+v", ab, ba)
	}
	if ab, ba, err := parse("--b-to-a-loss", "1%"); err != nil || ab != nil || ba == nil || ba.Loss != 1 {
		t.Errorf("one direction: %+v / %+v, %v", ab, ba, err)
	}
	if ab, ba, err := parse(); err != nil || ab != nil || ba != nil {
		t.Errorf("no flags: %+v / %+v, %v", ab, ba, err)
	}
	if ab, _, err := parse("--delay", "0"); err != nil || ab == nil || !ab.IsZero() {
		t.Errorf("--delay 0 must make a stage that does nothing: %+v, %v", ab, err)
	}
	for _, bad := range [][]string{{"--loss", "5"}, {"--a-to-b-rate", "fast"}, {"--burst", "1kb"}, {"--b-to-a-jitter", "-1ms"}} {
		st, _, stderr := vmnet(t, append([]string{"link", "tap:a", "tap:b"}, bad...)...)
		flag := strings.TrimPrefix(bad[0], "--")
		if st != 2 || !strings.Contains(stderr, "vmnet link: ") || !(strings.Contains(stderr, flag) || strings.Contains(stderr, "burst needs a rate")) {
			t.Errorf("vmnet link %v: status %d, %q; want a usage error naming it", bad, st, stderr)
		}
	}
}

// TestLinkSetUsage: vmnet link set refuses a bad link number, no change
// and bad values before it looks for the lab, with status 2.
func TestLinkSetUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"link", "set", "demo", "x", "--loss", "1%"}, `link "x": want the link's number`},
		{[]string{"link", "set", "demo", "0"}, "nothing to change"},
		{[]string{"link", "set", "demo", "0", "--a-to-b-loss", "5"}, `--a-to-b-loss: "5" is not a percentage`},
	} {
		st, _, stderr := vmnet(t, c.args...)
		if st != 2 || !strings.Contains(stderr, "vmnet link set: "+c.want) {
			t.Errorf("vmnet %q: status %d, %q; want 2 and %q", c.args, st, stderr, c.want)
		}
	}
}

// TestNICSetUsage: vmnet nic set takes the unprefixed impairment flags
// only (a NIC's impairment has one direction), and refuses no change and
// bad values before it looks for the lab, with status 2.
func TestNICSetUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"nic", "set", "demo", "r2", "nic0"}, "vmnet nic set: nothing to change"},
		{[]string{"nic", "set", "demo", "r2", "nic0", "--loss", "5"}, `vmnet nic set: --loss: "5" is not a percentage`},
		{[]string{"nic", "set", "demo", "r2", "nic0", "--rate", "fast"}, `vmnet nic set: --rate: "fast" is not a rate`},
		{[]string{"nic", "set", "demo", "r2", "nic0", "--a-to-b-loss", "5%"}, "unknown flag: --a-to-b-loss"},
	} {
		st, _, stderr := vmnet(t, c.args...)
		if st != 2 || !strings.Contains(stderr, c.want) {
			t.Errorf("vmnet %q: status %d, %q; want 2 and %q", c.args, st, stderr, c.want)
		}
	}
}
