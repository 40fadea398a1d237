package lab

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vmnet/vmnet/tap"

	"github.com/vmnet/vmnet/internal/link"
	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/vmconfig"
)

// TestSetLinkImpairments: the supervisor's link-set changes the keys
// given on top of what runs, per direction or both; bad values, unknown
// links and directions started without impairments change nothing.
func TestSetLinkImpairments(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NetNS(t)
	var ln *link.Link
	testenv.Do(t, ns, func() error {
		var eps [2]*link.Endpoint
		for i, s := range []string{"tap:ia", "tap:ib"} {
			ep, err := vmconfig.ParseEndpoint(s)
			if err != nil {
				return err
			}
			if eps[i], err = link.Open(context.Background(), ep, link.OpenOptions{}); err != nil {
				return err
			}
		}
		var err error
		ln, err = link.New(eps[0], eps[1], link.Options{AtoB: &vmconfig.Impairment{Delay: 20 * time.Millisecond}, Datapath: link.DatapathUserspace})
		return err
	})
	t.Cleanup(func() { netns.Do(ns, ln.Close) })
	l := &Lab{cfg: &vmconfig.Lab{Name: "imp"}, links: []*runningLink{{l: ln}}}
	call := func(req Request) (Response, error) {
		var resp Response
		err := l.handle(context.Background(), req, &resp)
		return resp, err
	}
	resp, err := call(Request{Op: "link-set", Link: 0, Impair: map[string]map[string]string{"a_to_b": {"loss": "1%"}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Links[0].AtoB.Impairment; got != "delay 20ms loss 1%" {
		t.Errorf("after --a-to-b-loss 1%%: %q", got)
	}
	for _, bad := range []struct {
		req  Request
		want string
	}{
		{Request{Op: "link-set", Link: 0, Impair: map[string]map[string]string{"": {"loss": "1%"}}}, "started without impairments"},
		{Request{Op: "link-set", Link: 0, Impair: map[string]map[string]string{"a_to_b": {"loss": "2"}}}, `"2" is not a percentage`},
		{Request{Op: "link-set", Link: 0, Impair: map[string]map[string]string{"a_to_b": {"burst": "1kb"}}}, "burst needs a rate"},
		{Request{Op: "link-set", Link: 3, Impair: map[string]map[string]string{"a_to_b": {"loss": "2%"}}}, "no link 3"},
		{Request{Op: "link-set", Link: 0, Impair: map[string]map[string]string{"up": {"loss": "2%"}}}, `unknown direction "up"`},
	} {
		if _, err := call(bad.req); err == nil || !strings.Contains(err.Error(), bad.want) || !strings.Contains(err.Error(), "lab imp") {
			t.Errorf("%+v: %v, want an error with %q", bad.req.Impair, err, bad.want)
		}
	}
	if got := ln.Impairments(); got[0] == nil || got[0].String() != "delay 20ms loss 1%" || got[1] != nil {
		t.Errorf("refused changes changed the link: %v / %v", got[0], got[1])
	}
}

// TestUpNICImpairmentWithoutNetem: on a kernel without netem, `up` of a
// lab whose NIC asks for a delay fails naming the lab, VM, NIC, tap and
// the missing kernel option, and leaves nothing behind: not the tap and
// bridge made before it (one with a working tbf rate), not the state
// directory.
func TestUpNICImpairmentWithoutNetem(t *testing.T) {
	testenv.RequirePrivateRun(t)
	ns := testenv.NetNS(t)
	cfg := labOf(t, `[lab]
name = "nn"
[[network]]
name = "n"
[[vm]]
name = "a"
kernel = "/nonexistent/vmlinuz"
  [[vm.nic]]
  network = "n"
  rate = "10mbit"
[[vm]]
name = "b"
kernel = "/nonexistent/vmlinuz"
  [[vm.nic]]
  network = "n"
  delay = "20ms"
  loss = "1%"
`)
	testenv.Do(t, ns, func() error {
		l, err := New(cfg, Options{RunDir: t.TempDir()})
		if err != nil {
			return err
		}
		defer l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		err = l.Up(ctx, 30*time.Second)
		if err == nil || !strings.Contains(err.Error(), "netem") {
			t.Skipf("this kernel has netem (up: %v); the refusal is tested on a host without it", err)
		}
		for _, want := range []string{"lab nn: vm b nic 0", "delay 20ms loss 1%", "tap nn-b-0", "CONFIG_NET_SCH_NETEM", "modprobe sch_netem", "[[link]]"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q: %v", want, err)
			}
		}
		t.Logf("up: %v", err)
		links, lerr := netlink.LinkList()
		if lerr != nil {
			return lerr
		}
		for _, ln := range links {
			if ln.Attrs().Name != "lo" {
				t.Errorf("after the failed up, %s (%s) is left", ln.Attrs().Name, ln.Type())
			}
		}
		return nil
	})
	if _, err := os.Stat(cfg.StateDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state directory %s is left (%v)", cfg.StateDir, err)
	}
}

// TestNICImpairmentStatus: status reads a NIC's impairment back from
// its tap's qdiscs (tbf here: the host has it) and shows it in the
// table and the JSON.
func TestNICImpairmentStatus(t *testing.T) {
	ns := testenv.NetNS(t)
	testenv.Do(t, ns, func() error {
		cfg := tap.NewConfig("st0", 1)
		cfg.Impairment = TapImpairment(vmconfig.Impairment{Rate: 10e6, Burst: 32 << 10})
		tp, err := tap.Create(cfg)
		if err != nil {
			return err
		}
		defer tp.Close()
		r := describeNIC(NICState{ID: "nic0", Tap: "st0", Queues: 1, Network: "n"})
		if r.Impairment != "rate 10mbit burst 32768b" {
			t.Errorf("impairment read back: %q", r.Impairment)
		}
		var b, js bytes.Buffer
		rep := Report{Lab: "l", VMs: []VMReport{{Name: "v", NICs: []NICReport{r}}}}
		rep.WriteTable(&b)
		if !strings.Contains(b.String(), "impaired to the guest: rate 10mbit burst 32768b\n") {
			t.Errorf("table:\n%s", b.String())
		}
		if err := WriteStatus(&js, "json", []Report{rep}); err != nil {
			return err
		}
		if !strings.Contains(js.String(), `"impairment": "rate 10mbit burst 32768b"`) {
			t.Errorf("json: %s", js.String())
		}
		return nil
	})
}

// TestSetNICImpairment: the supervisor's nic-set changes the keys given
// on top of what the NIC's tap has (tbf's rate here: the host has tbf),
// read back by tc; bad values, a link's NIC, an unknown NIC and a delay
// on a kernel without netem change nothing.
func TestSetNICImpairment(t *testing.T) {
	testenv.RequireProgram(t, "tc")
	ns := testenv.NetNS(t)
	cfg := labOf(t, `[lab]
name = "ns"
[[network]]
name = "n"
rate = "10mbit"
[[vm]]
name = "v"
  [[vm.nic]]
  network = "n"
  [[vm.nic]]
[[link]]
a = "vm:v:1"
b = "tap:other"
`)
	testenv.Do(t, ns, func() error {
		l, err := New(cfg, Options{RunDir: t.TempDir()})
		if err != nil {
			return err
		}
		defer l.Close()
		defer l.Teardown(context.Background())
		if err := l.CreateTaps(cfg.VMs[0]); err != nil {
			return err
		}
		call := func(nic string, keys map[string]string) (Response, error) {
			var resp Response
			err := l.handle(context.Background(), Request{Op: "nic-set", VM: "v", NIC: nic, Impair: map[string]map[string]string{"": keys}}, &resp)
			return resp, err
		}
		tbfRate := func() string {
			out, _ := exec.Command("tc", "qdisc", "show", "dev", "ns-v-0").CombinedOutput()
			return strings.TrimSpace(string(out))
		}
		if got := tbfRate(); !strings.Contains(got, "tbf") || !strings.Contains(got, "rate 10Mbit") {
			t.Fatalf("from the network's rate: %s", got)
		}
		resp, err := call("nic0", map[string]string{"rate": "20mbit", "burst": "16kb"})
		if err != nil {
			return err
		}
		if resp.NICImpairment != "rate 20mbit burst 16384b" || !strings.Contains(tbfRate(), "rate 20Mbit burst 16") {
			t.Errorf("after rate 20mbit: %q, tc: %s", resp.NICImpairment, tbfRate())
		}
		for _, bad := range []struct {
			nic  string
			keys map[string]string
			want string
		}{
			{"nic0", map[string]string{"loss": "5"}, `"5" is not a percentage`},
			{"nic0", map[string]string{"speed": "5"}, `unknown impairment "speed"`},
			{"nic1", map[string]string{"loss": "5%"}, "vmnet link set"},
			{"nic7", map[string]string{"loss": "5%"}, `has no NIC "nic7"`},
		} {
			if _, err := call(bad.nic, bad.keys); err == nil || !strings.Contains(err.Error(), bad.want) || !strings.Contains(err.Error(), "lab ns") {
				t.Errorf("%s %v: %v, want an error with %q", bad.nic, bad.keys, err, bad.want)
			}
		}
		if _, err := call("ns-v-0", map[string]string{"delay": "5ms"}); err != nil {
			if !strings.Contains(err.Error(), "CONFIG_NET_SCH_NETEM") {
				t.Errorf("delay on a kernel without netem: %v", err)
			}
		} else if !strings.Contains(tbfRate(), "netem") {
			t.Errorf("delay accepted but tc shows %s", tbfRate())
		} else {
			return nil // a kernel with netem: the rest is about refusals
		}
		if got := tbfRate(); !strings.Contains(got, "rate 20Mbit") || strings.Contains(got, "netem") {
			t.Errorf("refused changes changed the tap: %s", got)
		}
		// Every key at zero, the rate too, puts the plain tap back.
		resp, err = call("nic0", map[string]string{"rate": "0", "burst": "0"})
		if err != nil {
			t.Fatalf("rate 0: %v", err)
		}
		if got := tbfRate(); resp.NICImpairment != "none" || strings.Contains(got, "tbf") || !strings.Contains(got, "noqueue") {
			t.Errorf("after rate 0 burst 0: %q, tc: %s", resp.NICImpairment, got)
		}
		return nil
	})
}
