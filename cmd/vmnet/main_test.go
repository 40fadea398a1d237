package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/netns"
)

// vmnet runs the command line in-process and returns status and output.
func vmnet(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	st := run(args, &out, &errb)
	return st, out.String(), errb.String()
}

// nsPath names a test namespace so that --netns can enter it.
func nsPath(ns netns.Handle) string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns)) }

// inNS runs an independent tool (ip, ethtool) inside ns.
func inNS(t *testing.T, ns netns.Handle, name string, args ...string) string {
	t.Helper()
	var out []byte
	testenv.Do(t, ns, func() error {
		var err error
		out, err = exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %v: %v: %s", name, args, err, out)
		}
		return nil
	})
	return string(out)
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"nonsense"},
		{"tap", "frobnicate"},
		{"tap", "create"},
		{"tap", "create", "a", "b"},
		{"tap", "create", "t0", "--queues"},
		{"tap", "create", "t0", "--no-such-flag"},
		{"tap", "show", "t0", "-o", "yaml"},
		{"tap", "create", "t0", "--offload", "csum,warp"},
		{"bridge", "port", "add", "br0", "p0", "--tagged", "5000"},
		{"--netns"},
		{"link", "tap:a"},
		{"link", "vde:x", "tap:y"},
		{"link", "tap:a", "tap:b", "--datapath", "kernel"},
		{"run", "lab.toml"},
	} {
		st, _, stderr := vmnet(t, args...)
		if st != exitUsage || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("vmnet %q: status %d, want %d with a one-line message (stderr %q)", args, st, exitUsage, stderr)
		}
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"tap", "--help"}, {"tap", "create", "--help"}, {"bridge", "port", "add", "-h"}, {"features", "--help"}} {
		st, out, _ := vmnet(t, args...)
		if st != exitOK || !strings.Contains(out, "Usage") {
			t.Errorf("vmnet %q: status %d, output %q", args, st, out)
		}
	}
}

func TestTapLifecycle(t *testing.T) {
	ns := testenv.NetNS(t)
	p := nsPath(ns)
	st, out, stderr := vmnet(t, "--netns", p, "bridge", "create", "br0", "--mtu", "9000", "--address", "10.7.0.1/24")
	if st != 0 || !strings.Contains(out, "created bridge br0") {
		t.Fatalf("bridge create: %d %q %s", st, out, stderr)
	}
	st, out, stderr = vmnet(t, "--netns", p, "tap", "create", "t0", "--queues", "4", "--offload", "csum,tso4,tso6", "--bridge", "br0", "--owner", "65534")
	if st != 0 {
		t.Fatalf("tap create: %d %s", st, stderr)
	}
	if !strings.Contains(out, "4 queue(s)") {
		t.Errorf("tap create output %q", out)
	}

	// The kernel's own view, through iproute2.
	var ipv []struct {
		Mtu      int    `json:"mtu"`
		Master   string `json:"master"`
		Linkinfo struct {
			InfoKind string `json:"info_kind"`
			InfoData struct {
				Type       string `json:"type"`
				MultiQueue bool   `json:"multi_queue"`
				VnetHdr    bool   `json:"vnet_hdr"`
				Persist    bool   `json:"persist"`
				User       string `json:"user"`
			} `json:"info_data"`
		} `json:"linkinfo"`
	}
	if err := json.Unmarshal([]byte(inNS(t, ns, "ip", "-d", "-j", "link", "show", "t0")), &ipv); err != nil || len(ipv) != 1 {
		t.Fatalf("ip -j link: %v %v", err, ipv)
	}
	d := ipv[0].Linkinfo.InfoData
	if ipv[0].Master != "br0" || ipv[0].Mtu != 9000 || !d.MultiQueue || !d.VnetHdr || !d.Persist || d.Type != "tap" {
		t.Errorf("kernel sees %+v", ipv[0])
	}
	// A bridge port gets no IPv6 link-local address (the bridge takes its
	// frames, so nothing would reach it).
	if a := inNS(t, ns, "ip", "-6", "-o", "addr", "show", "dev", "t0"); strings.TrimSpace(a) != "" {
		t.Errorf("tap t0 on bridge br0 has IPv6 addresses:\n%s", a)
	}
	if k := inNS(t, ns, "ethtool", "-k", "t0"); !strings.Contains(k, "tcp-segmentation-offload: on") {
		t.Errorf("ethtool -k t0 does not show TSO on:\n%s", k)
	}

	st, out, _ = vmnet(t, "--netns", p, "tap", "show", "t0", "-o", "json")
	var info struct {
		Name       string   `json:"name"`
		MultiQueue bool     `json:"multi_queue"`
		VnetHdr    bool     `json:"vnet_hdr"`
		Master     string   `json:"master"`
		Owner      int      `json:"owner"`
		Tag        string   `json:"tag"`
		Offloads   []string `json:"offloads"`
	}
	if st != 0 || json.Unmarshal([]byte(out), &info) != nil {
		t.Fatalf("tap show: %d %q", st, out)
	}
	if info.Name != "t0" || !info.MultiQueue || !info.VnetHdr || info.Master != "br0" || info.Owner != 65534 || info.Tag != "vmnet:adhoc" ||
		strings.Join(info.Offloads, ",") != "csum,tso4,tso6" {
		t.Errorf("tap show: %+v", info)
	}
	st, out, _ = vmnet(t, "--netns", p, "bridge", "show", "br0")
	if st != 0 || !strings.Contains(out, "t0") || !strings.Contains(out, "10.7.0.1/24") {
		t.Errorf("bridge show: %d\n%s", st, out)
	}
	st, out, _ = vmnet(t, "--netns", p, "tap", "list")
	if st != 0 || !strings.Contains(out, "t0") {
		t.Errorf("tap list: %d\n%s", st, out)
	}
	if st, _, stderr = vmnet(t, "--netns", p, "tap", "delete", "t0"); st != 0 {
		t.Fatalf("tap delete: %s", stderr)
	}
	if st, _, stderr = vmnet(t, "--netns", p, "bridge", "delete", "br0"); st != 0 {
		t.Fatalf("bridge delete: %s", stderr)
	}
	if out := inNS(t, ns, "ip", "-o", "link"); strings.Contains(out, "t0") || strings.Contains(out, "br0") {
		t.Errorf("left behind:\n%s", out)
	}
}

func TestUserErrors(t *testing.T) {
	ns := testenv.NetNS(t)
	p := nsPath(ns)
	inNS(t, ns, "ip", "tuntap", "add", "dev", "foreign0", "mode", "tap")
	inNS(t, ns, "ip", "link", "add", "foreignbr", "type", "bridge")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"tap", "create", "t2", "--bridge", "nobr"}, "nobr"},
		{[]string{"tap", "create", "t3", "--owner", "no-such-user-here"}, "no-such-user-here"},
		{[]string{"tap", "delete", "foreign0"}, "--force"},
		{[]string{"tap", "show", "missing0"}, "missing0"},
		{[]string{"bridge", "delete", "foreignbr"}, "--force"},
		{[]string{"bridge", "port", "add", "foreignbr", "missing0"}, "missing0"},
		{[]string{"tap", "create", "foreign0", "--queues", "2"}, "foreign0"},
	} {
		st, _, stderr := vmnet(t, append([]string{"--netns", p}, c.args...)...)
		if st != exitError || !strings.Contains(stderr, c.want) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("vmnet %q: status %d, stderr %q; want status 1 and one line naming %q", c.args, st, stderr, c.want)
		}
	}
	// Nothing was left behind by the failed creates; the foreign devices stay.
	out := inNS(t, ns, "ip", "-o", "link")
	for _, name := range []string{"t1", "t2", "t3"} {
		if strings.Contains(out, name+":") {
			t.Errorf("failed create left %s behind:\n%s", name, out)
		}
	}
	for _, name := range []string{"foreign0", "foreignbr"} {
		if !strings.Contains(out, name) {
			t.Errorf("%s was removed", name)
		}
	}
	if st, _, stderr := vmnet(t, "--netns", p, "tap", "delete", "foreign0", "--force"); st != 0 {
		t.Errorf("delete --force: %s", stderr)
	}
}

func TestFeaturesJSON(t *testing.T) {
	testenv.RequireRoot(t)
	st, out, stderr := vmnet(t, "features", "-o", "json")
	var f struct {
		DevNetTun bool     `json:"dev_net_tun"`
		Offloads  []string `json:"offloads"`
		Flags     []string `json:"flags"`
	}
	if st != 0 || json.Unmarshal([]byte(out), &f) != nil {
		t.Fatalf("features: %d %q %q", st, out, stderr)
	}
	if !f.DevNetTun || !strings.Contains(strings.Join(f.Flags, ","), "multi_queue") || !strings.Contains(strings.Join(f.Offloads, ","), "tso4") {
		t.Errorf("features: %+v", f)
	}
}

// TestBridgeCreateForeignNeedsForce: `bridge create` on a bridge vmnet did
// not create (or made for a lab) refuses and changes nothing; --force
// configures it and leaves it untagged.
func TestBridgeCreateForeignNeedsForce(t *testing.T) {
	ns := testenv.NetNS(t)
	p := nsPath(ns)
	inNS(t, ns, "ip", "link", "add", "foreignbr", "mtu", "9000", "type", "bridge")
	if st, _, stderr := vmnet(t, "--netns", p, "bridge", "create", "labbr", "--tag", "vmnet:lab:somelab"); st != 0 {
		t.Fatalf("bridge create --tag: %s", stderr)
	}
	for _, c := range []struct{ name, want string }{
		{"foreignbr", "is not vmnet's"},
		{"labbr", fmt.Sprintf("owner tag %q", aliasOf(t, ns, "labbr"))},
	} {
		st, _, stderr := vmnet(t, "--netns", p, "bridge", "create", c.name, "--mtu", "1500", "--stp", "--address", "10.9.9.1/24")
		if st != exitError || !strings.Contains(stderr, "bridge "+c.name+" exists") || !strings.Contains(stderr, c.want) ||
			!strings.Contains(stderr, "--force") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("bridge create %s: status %d, stderr %q; want 1, one line naming it, %q and --force", c.name, st, stderr, c.want)
		}
	}
	if out := inNS(t, ns, "ip", "-d", "addr", "show", "foreignbr"); !strings.Contains(out, "mtu 9000") ||
		strings.Contains(out, "stp_state 1") || strings.Contains(out, "10.9.9.1") {
		t.Errorf("refused create changed foreignbr:\n%s", out)
	}
	st, out, stderr := vmnet(t, "--netns", p, "bridge", "create", "foreignbr", "--mtu", "1500", "--force")
	if st != 0 || !strings.Contains(out, "configured existing bridge foreignbr") {
		t.Fatalf("bridge create --force: %d %q %q", st, out, stderr)
	}
	if out := inNS(t, ns, "ip", "-d", "link", "show", "foreignbr"); !strings.Contains(out, "mtu 1500") || strings.Contains(out, "alias") {
		t.Errorf("after --force:\n%s", out)
	}
	// vmnet's own ad-hoc bridge needs no --force.
	if st, _, stderr := vmnet(t, "--netns", p, "bridge", "create", "mine"); st != 0 {
		t.Fatal(stderr)
	}
	if st, _, stderr := vmnet(t, "--netns", p, "bridge", "create", "mine", "--stp"); st != 0 {
		t.Errorf("bridge create on vmnet's own bridge: %d %s", st, stderr)
	}
}

// aliasOf is the interface alias (vmnet's owner tag) as iproute2 reports it.
func aliasOf(t *testing.T, ns netns.Handle, name string) string {
	t.Helper()
	var v []struct {
		Alias string `json:"ifalias"`
	}
	if err := json.Unmarshal([]byte(inNS(t, ns, "ip", "-j", "link", "show", "dev", name)), &v); err != nil || len(v) != 1 || v[0].Alias == "" {
		t.Fatalf("alias of %s: %v %v", name, err, v)
	}
	return v[0].Alias
}
