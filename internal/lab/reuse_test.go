package lab

import (
	"context"
	"errors"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/vmconfig"
)

// TestDerivedNamesNeverShared: lab a-b's network c and lab a's network b-c
// both derive bridge a-b-c, and lab x's VM y-z and lab x-y's VM z both
// derive tap x-y-z-0. The second lab is refused with the interface, its
// owner tag and what to do; the first lab's interfaces stay as they were.
func TestDerivedNamesNeverShared(t *testing.T) {
	ns := testenv.NetNS(t)
	first := labOf(t, "[lab]\nname = \"a-b\"\n[[network]]\nname = \"c\"\naddresses = [\"10.67.0.1/24\"]\n")
	second := labOf(t, "[lab]\nname = \"a\"\n[[network]]\nname = \"b-c\"\nmtu = 9000\naddresses = [\"10.68.0.1/24\"]\n")
	tapA := labOf(t, "[lab]\nname = \"x\"\n[[vm]]\nname = \"y-z\"\nkernel = \"k\"\n[[vm.nic]]\n")
	tapB := labOf(t, "[lab]\nname = \"x-y\"\n[[vm]]\nname = \"z\"\nkernel = \"k\"\n[[vm.nic]]\n")
	testenv.Do(t, ns, func() error {
		l1 := newLab(t, first)
		if err := l1.EnsureNetwork("c"); err != nil {
			return err
		}
		// The error quotes the tag the bridge carries, whatever its format.
		tagOf := func(name string) string {
			link, err := l1.br.Handle().LinkByName(name)
			if err != nil || link.Attrs().Alias == "" {
				t.Fatalf("%s: %v, alias %q", name, err, link.Attrs().Alias)
			}
			return link.Attrs().Alias
		}
		tagAB := tagOf("a-b-c")
		l2 := newLab(t, second)
		err := l2.EnsureNetwork("b-c")
		if err == nil {
			t.Fatal("lab a took lab a-b's bridge a-b-c")
		}
		for _, want := range []string{"lab a", "network b-c", "bridge a-b-c exists", `owner tag "` + tagAB + `"`,
			"rename the lab or the network", `bridge = "..."`} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
		}
		if err := l2.Teardown(context.Background()); err != nil {
			t.Errorf("teardown of the refused lab: %v", err)
		}
		out, _ := exec.Command("ip", "-d", "addr", "show", "a-b-c").CombinedOutput()
		for _, want := range []string{"mtu 1500", "10.67.0.1/24", "alias " + tagAB} {
			if !strings.Contains(string(out), want) {
				t.Errorf("lab a-b's bridge lost %q:\n%s", want, out)
			}
		}
		if strings.Contains(string(out), "10.68.0.1") {
			t.Errorf("lab a's address went onto lab a-b's bridge:\n%s", out)
		}

		t1 := newLab(t, tapA)
		if err := t1.CreateTaps(tapA.VMs[0]); err != nil {
			return err
		}
		t2 := newLab(t, tapB)
		err = t2.CreateTaps(tapB.VMs[0])
		if err == nil {
			t.Fatal("lab x-y got a tap named like lab x's")
		}
		for _, want := range []string{"lab x-y", "vm z", "tap x-y-z-0", "exists", `owner tag "` + tagOf("x-y-z-0") + `"`,
			"rename the lab or the VM", `ifname = "..."`} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
		}
		if err := t2.Teardown(context.Background()); err != nil {
			t.Errorf("teardown of the refused lab: %v", err)
		}
		// The same lab's own leftover: the advice is `vmnet down`.
		t3 := newLab(t, tapA)
		if err := t3.CreateTaps(tapA.VMs[0]); err == nil || !strings.Contains(err.Error(), "tap x-y-z-0") ||
			!strings.Contains(err.Error(), "run `vmnet down x` first") {
			t.Errorf("second copy of lab x: %v", err)
		}
		if err := t3.Teardown(context.Background()); err != nil {
			t.Errorf("teardown of the refused copy: %v", err)
		}
		if t1.Tap(tapA.VMs[0].NICs[0]) == nil {
			t.Fatal("lab x lost its tap")
		}
		if out, err := exec.Command("ip", "link", "show", "x-y-z-0").CombinedOutput(); err != nil {
			t.Errorf("lab x's tap is gone: %v %s", err, out)
		}
		return errors.Join(l1.Teardown(context.Background()), t1.Teardown(context.Background()))
	})
}

// TestReusedBridgeRestored: a bridge the lab file names and vmnet did not
// create is used, and teardown puts back its MTU, STP, up/down state and
// addresses.
func TestReusedBridgeRestored(t *testing.T) {
	ns := testenv.NetNS(t)
	cfg := labOf(t, `[lab]
name = "p"
[[network]]
name = "n"
bridge = "pre0"
stp = true
addresses = ["10.69.0.1/24"]
[[vm]]
name = "v"
kernel = "k"
  [[vm.nic]]
  network = "n"
`)
	testenv.Do(t, ns, func() error {
		for _, args := range [][]string{{"link", "add", "pre0", "mtu", "9000", "type", "bridge"}, {"addr", "add", "10.69.0.9/24", "dev", "pre0"}} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %v: %v %s", args, err, out)
			}
		}
		before, _ := exec.Command("ip", "-d", "addr", "show", "pre0").CombinedOutput()
		l := newLab(t, cfg)
		if err := l.CreateTaps(cfg.VMs[0]); err != nil {
			return err
		}
		during, _ := exec.Command("ip", "-d", "addr", "show", "pre0").CombinedOutput()
		for _, want := range []string{"mtu 1500", "stp_state 1", "10.69.0.1/24", ",UP"} {
			if !strings.Contains(string(during), want) {
				t.Errorf("pre0 while the lab is up lacks %q:\n%s", want, during)
			}
		}
		if err := l.Teardown(context.Background()); err != nil {
			return err
		}
		after, _ := exec.Command("ip", "-d", "addr", "show", "pre0").CombinedOutput()
		// The MAC, qdisc and TSO limits follow the ports the lab added and
		// removed (the kernel's doing); the settings the lab made are back.
		if settings(after) != settings(before) {
			t.Errorf("pre0 after teardown:\n%s\nbefore the lab:\n%s", after, before)
		}
		return nil
	})
}

// settings picks from `ip -d addr show` what a lab may set on a bridge.
func settings(out []byte) string {
	re := regexp.MustCompile(`<[A-Z_,]+>|\bmtu \d+|\b(stp_state|vlan_filtering|group_fwd_mask|mcast_snooping|default_pvid) \S+|inet6? \S+`)
	return strings.Join(re.FindAllString(string(out), -1), " ")
}

// newLab is New in the calling thread's namespace, closed when t ends.
func newLab(t *testing.T, cfg *vmconfig.Lab) *Lab {
	t.Helper()
	l, err := New(cfg, Options{RunDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}
