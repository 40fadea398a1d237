package link

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/owner"
	"github.com/vmnet/vmnet/tap"
	"github.com/vmnet/vmnet/vmconfig"
	"github.com/vmnet/vmnet/vnethdr"
)

// The VXLAN endpoint (vxlan.go), judged by the real kernel. Two "hosts":
// L (brA, tA, vA to A) and H (brB, tB, vB to B), joined by a veth
// underlay ul (10.200.0.1 in L, 10.200.0.2 in H). One link per host
// joins its tap to a vxlan endpoint towards the other host, so every
// frame between A and B crosses the underlay encapsulated. (Both ends in
// one namespace would not do: the kernel hands a vxlan packet for a local
// address straight to the local device, vxlan_encap_bypass.)

// vxlanWorld is a world whose B side is on the second host H.
type vxlanWorld struct {
	*world
	H   netns.Handle
	nlH *netlink.Handle
}

// newVXLANWorld builds the two hosts with an underlay of MTU underMTU.
func newVXLANWorld(t *testing.T, underMTU int) *vxlanWorld {
	t.Helper()
	w := &vxlanWorld{world: newWorld(t, true), H: testenv.NetNS(t)}
	var err error
	if w.nlH, err = netlink.NewHandleAt(w.H, unix.NETLINK_ROUTE); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.nlH.Close)
	lo, err := w.nlH.LinkByName("lo")
	w.must(err)
	w.must(w.nlH.LinkSetUp(lo))
	// B's veth moves to H, into a bridge of H's own.
	vB, err := w.nlL.LinkByName("vB")
	w.must(err)
	w.must(w.nlL.LinkSetNsFd(vB, int(w.H)))
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "brB"}}
	w.must(w.nlH.LinkAdd(br))
	w.must(w.nlH.LinkSetUp(br))
	vB, err = w.nlH.LinkByName("vB")
	w.must(err)
	w.must(w.nlH.LinkSetMaster(vB, br))
	w.must(w.nlH.LinkSetUp(vB))
	// The underlay.
	ul := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ul", MTU: underMTU}, PeerName: "ul", PeerNamespace: netlink.NsFd(w.H)}
	w.must(w.nlL.LinkAdd(ul))
	for i, h := range []*netlink.Handle{w.nlL, w.nlH} {
		l, err := h.LinkByName("ul")
		w.must(err)
		w.must(h.LinkSetMTU(l, underMTU))
		a, _ := netlink.ParseAddr([]string{"10.200.0.1/24", "10.200.0.2/24"}[i])
		w.must(h.AddrAdd(l, a))
		a6, _ := netlink.ParseAddr([]string{"fd00:200::1/64", "fd00:200::2/64"}[i])
		a6.Flags = unix.IFA_F_NODAD // usable at once
		w.must(h.AddrAdd(l, a6))
		w.must(h.LinkSetUp(l))
	}
	return w
}

// openH opens an endpoint inside H.
func (w *vxlanWorld) openH(spec string) *Endpoint {
	w.t.Helper()
	ep, err := vmconfig.ParseEndpoint(spec)
	w.must(err)
	var e *Endpoint
	testenv.Do(w.t, w.H, func() error {
		e, err = Open(context.Background(), ep, OpenOptions{})
		return err
	})
	return e
}

// plugH puts a tap in H into a bridge of H.
func (w *vxlanWorld) plugH(tapName, bridge string) {
	w.t.Helper()
	tl, err := w.nlH.LinkByName(tapName)
	w.must(err)
	br, err := w.nlH.LinkByName(bridge)
	w.must(err)
	w.must(w.nlH.LinkSetMaster(tl, br))
	w.must(w.nlH.LinkSetUp(tl))
}

// links starts tap:tA <-> vxlan in L and vxlan <-> tap:tB in H, over
// the underlay's IPv4 addresses.
func (w *vxlanWorld) links(opts Options) (l1, l2 *Link) {
	w.t.Helper()
	return w.linksOver(opts, "10.200.0.1", "10.200.0.2")
}

// linksOver is links over the underlay addresses ipL (of L) and ipH.
func (w *vxlanWorld) linksOver(opts Options, ipL, ipH string) (l1, l2 *Link) {
	w.t.Helper()
	var err error
	l1, err = New(w.open("tap:tA"), w.open("vxlan:"+ipH+",vni=42"), opts)
	w.must(err)
	l2, err = New(w.openH("vxlan:"+ipL+",vni=42"), w.openH("tap:tB"), opts)
	w.must(err)
	w.plug("tA", "brA")
	w.plugH("tB", "brB")
	return l1, l2
}

// underlayBytes is what H's end of the underlay received.
func (w *vxlanWorld) underlayBytes() uint64 {
	w.t.Helper()
	l, err := w.nlH.LinkByName("ul")
	w.must(err)
	return l.Attrs().Statistics.RxBytes
}

// TestVXLANTransfer: frames pass both ways through a VXLAN tunnel over a
// veth underlay between two hosts: ping, and TCP data intact both ways.
// By default the kernel carries them (a redirect between tap and vxlan
// device on each host); with the userspace data path the links read and
// write the vxlan devices through AF_PACKET. The devices are vmnet's
// (tagged, MTU the underlay's less 50, or 70 over IPv6) and go when the
// links stop.
func TestVXLANTransfer(t *testing.T) {
	for _, c := range []struct {
		name, dp, ipL, ipH string
		underMTU           int
	}{
		{"kernel", DatapathAuto, "10.200.0.1", "10.200.0.2", 1550},
		{"userspace", DatapathUserspace, "10.200.0.1", "10.200.0.2", 1550},
		{"ipv6", DatapathAuto, "fd00:200::1", "fd00:200::2", 1570},
	} {
		dp := c.dp
		t.Run(c.name, func(t *testing.T) {
			w := newVXLANWorld(t, c.underMTU)
			l1, l2 := w.linksOver(Options{Datapath: dp}, c.ipL, c.ipH)
			stop1, stop2 := stopper(t, l1), stopper(t, l2)
			want := DatapathUserspace
			if dp == DatapathAuto {
				want = DatapathKernel
				waitFor(t, "the kernel data path", func() bool {
					return l1.Stats().Datapath == DatapathKernel && l2.Stats().Datapath == DatapathKernel
				})
			}
			for i, h := range []*netlink.Handle{w.nlL, w.nlH} {
				vx, err := h.LinkByName("vx42")
				if err != nil {
					t.Fatalf("host %d: vxlan device vx42: %v", i+1, err)
				}
				v, ok := vx.(*netlink.Vxlan)
				if !ok || v.VxlanId != 42 || v.Port != vmconfig.DefaultVXLANPort || vx.Attrs().MTU != 1500 || vx.Attrs().Alias != owner.AdHoc {
					t.Errorf("host %d: vx42 is %T %+v; want VXLAN VNI 42 port 4789 MTU 1500 tagged %q", i+1, vx, vx.Attrs(), owner.AdHoc)
				}
			}
			before := w.underlayBytes()
			rtt := w.ping(3)
			w.tcpTransfer(transferSize)
			s1, s2 := l1.Stats(), l2.Stats()
			t.Logf("ping %v\n%s\n%s", rtt, s1, s2)
			if s1.Datapath != want || s2.Datapath != want {
				t.Errorf("datapaths %q and %q, want %q", s1.Datapath, s2.Datapath, want)
			}
			if s1.AtoB.Frames == 0 || s2.AtoB.Frames == 0 || s1.BtoA.Frames == 0 || s2.BtoA.Frames == 0 {
				t.Errorf("a direction counted nothing: %+v %+v", s1, s2)
			}
			if got := w.underlayBytes() - before; got < transferSize {
				t.Errorf("the underlay carried %d bytes to host 2, less than the %d-byte transfer: the frames did not cross it", got, transferSize)
			}
			testenv.NoSNMPErrors(t, w.B, "B")
			stop1()
			stop2()
			for i, h := range []*netlink.Handle{w.nlL, w.nlH} {
				if _, err := h.LinkByName("vx42"); err == nil {
					t.Errorf("host %d: vxlan device vx42 is still there after the link stopped", i+1)
				}
			}
		})
	}
}

// TestVXLANNotOurs: vmnet never deletes a device it did not make. An
// interface that holds the name, or a VXLAN device with the VNI and port,
// is named in the error (and stays); a device whose
// tag someone changed while the link ran stays after the link, and
// closing says why.
func TestVXLANNotOurs(t *testing.T) {
	w := newVXLANWorld(t, 1550)
	w.must(w.nlL.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "vx43"}}))
	ep, err := vmconfig.ParseEndpoint("vxlan:10.200.0.2,vni=43")
	w.must(err)
	testenv.Do(t, w.L, func() error {
		e, err := Open(context.Background(), ep, OpenOptions{})
		if err == nil {
			e.Close()
			t.Fatalf("Open(%s) succeeded over a foreign interface vx43", ep)
		}
		t.Logf("%v", err)
		for _, s := range []string{"vxlan:10.200.0.2", "an interface named vx43 (a bridge) exists already", "use another vni", "ip link del vx43"} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q does not mention %q", err, s)
			}
		}
		return nil
	})
	if l, err := w.nlL.LinkByName("vx43"); err != nil || l.Type() != "bridge" {
		t.Errorf("the foreign bridge vx43: %v, %v after the failed open", l, err)
	}

	// Another VXLAN device with the VNI and port: the kernel allows one.
	w.must(w.nlL.LinkAdd(&netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "fx47"}, VxlanId: 47, Port: vmconfig.DefaultVXLANPort}))
	ep47, err := vmconfig.ParseEndpoint("vxlan:10.200.0.2,vni=47")
	w.must(err)
	testenv.Do(t, w.L, func() error {
		e, err := Open(context.Background(), ep47, OpenOptions{})
		if err == nil {
			e.Close()
			t.Fatalf("Open(%s) succeeded next to a foreign VXLAN device with VNI 47", ep47)
		}
		t.Logf("%v", err)
		if !strings.Contains(err.Error(), "VXLAN device fx47, with that VNI and port, exists already") || !strings.Contains(err.Error(), "ip link del fx47") {
			t.Errorf("error %q does not name fx47", err)
		}
		return nil
	})
	if _, err := w.nlL.LinkByName("fx47"); err != nil {
		t.Errorf("the foreign fx47: %v after the failed open", err)
	}

	e := w.open("vxlan:10.200.0.2,vni=44")
	vx, err := w.nlL.LinkByName("vx44")
	w.must(err)
	w.must(w.nlL.LinkSetAlias(vx, "someone-else"))
	err = e.Close()
	if err == nil || !strings.Contains(err.Error(), "vx44") || !errors.Is(err, owner.ErrNotOwned) {
		t.Errorf("Close of a vxlan endpoint whose device was retagged: %v; want it named and not deleted", err)
	}
	if _, err := w.nlL.LinkByName("vx44"); err != nil {
		t.Errorf("vx44, tagged by someone else, was deleted: %v", err)
	}
}

// TestVXLANMTU: VXLAN adds 50 bytes, so over a 1500-byte underlay the
// tunnel carries 1450-byte frames. A tap that exists already (someone
// else's settings) with MTU 1500 is refused, with both MTUs and both ways
// out, keeps its MTU, and the vxlan device the endpoint made is gone
// again; with its MTU lowered as the error says, the link starts. A tap
// the link creates itself takes the tunnel's MTU, and the link says so
// once; with the hosts' MTU at 1450 too, TCP data passes intact.
func TestVXLANMTU(t *testing.T) {
	w := newVXLANWorld(t, 1500)
	persistentTap := func(mtu int) {
		testenv.Do(t, w.L, func() error {
			cfg := tap.NewConfig("tA", 1)
			cfg.MTU, cfg.Persist, cfg.VnetHdrSize = mtu, true, vnethdr.HdrLen
			tp, err := tap.Create(cfg)
			if err != nil {
				return err
			}
			return tp.Close()
		})
	}
	persistentTap(1500)
	_, err := New(w.open("tap:tA"), w.open("vxlan:10.200.0.2,vni=45"), Options{})
	if err == nil {
		t.Fatal("link of an existing 1500-byte tap over a VXLAN on a 1500-byte underlay was made")
	}
	t.Logf("%v", err)
	for _, s := range []string{"interface tA has MTU 1500", "vxlan:10.200.0.2", "at most 1450", "ul has MTU 1500", "ip link set tA mtu 1450", "raise the underlay's MTU to 1550"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
	if _, err := w.nlL.LinkByName("vx45"); err == nil {
		t.Error("vx45 is still there after the refused link")
	}
	tA, err := w.nlL.LinkByName("tA")
	w.must(err)
	if tA.Attrs().MTU != 1500 {
		t.Errorf("the refused link changed tA's MTU to %d", tA.Attrs().MTU)
	}
	// The advice works.
	w.must(w.nlL.LinkSetMTU(tA, 1450))
	l, err := New(w.open("tap:tA"), w.open("vxlan:10.200.0.2,vni=45"), Options{})
	if err != nil {
		t.Fatalf("with tA at MTU 1450: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	w.must(w.nlL.LinkDel(tA))

	// Taps the links make take the tunnel's MTU.
	var rec logLines
	l1, l2 := w.links(Options{Logf: rec.logf})
	stopper(t, l1)
	stopper(t, l2)
	// Frames flow once both links are in the kernel (no switch under way,
	// see TestVXLANFallback).
	waitFor(t, "the kernel data path", func() bool {
		return l1.Stats().Datapath == DatapathKernel && l2.Stats().Datapath == DatapathKernel
	})
	logs := rec.lines()
	t.Logf("log: %q", logs)
	if len(logs) != 2 || !strings.Contains(logs[0], "tap tA: MTU 1450, not 1500") || !strings.Contains(logs[0], "give the guests and bridge ports behind it MTU 1450") {
		t.Errorf("log %q: want one line per link saying the tap's MTU and what to do", logs)
	}
	for i, h := range []*netlink.Handle{w.nlL, w.nlH} {
		name := []string{"tA", "tB"}[i]
		if l, err := h.LinkByName(name); err != nil || l.Attrs().MTU != 1450 {
			t.Errorf("tap %s made by the link: %v %v, want MTU 1450", name, l, err)
		}
	}
	for _, ns := range []netns.Handle{w.A, w.B} {
		testenv.Do(t, ns, func() error {
			h := &netlink.Handle{}
			eth, err := h.LinkByName("eth0")
			if err != nil {
				return err
			}
			return h.LinkSetMTU(eth, 1450)
		})
	}
	w.ping(3)
	w.tcpTransfer(1 << 20)
}

// TestVXLANOpenErrors: bad vxlan endpoints fail with the endpoint named,
// say what to do, and leave no device behind.
func TestVXLANOpenErrors(t *testing.T) {
	w := newVXLANWorld(t, 1550)
	for _, tc := range []struct {
		spec string
		want []string
	}{
		{"vxlan:10.200.0.2,vni=46,dev=nosuch0", []string{"vxlan:10.200.0.2,vni=46", "underlay interface nosuch0 (dev=)", "this network namespace"}},
		{"vxlan:192.0.2.7,vni=46", []string{"vxlan:192.0.2.7", "no route to 192.0.2.7", "dev=IFACE"}},
		{"vxlan:10.200.0.2,vni=46,local=10.9.9.9", []string{"vxlan:10.200.0.2", "local 10.9.9.9 is not an address of this host", "leave local= out"}},
	} {
		ep, err := vmconfig.ParseEndpoint(tc.spec)
		w.must(err)
		testenv.Do(t, w.L, func() error {
			e, err := Open(context.Background(), ep, OpenOptions{})
			if err == nil {
				e.Close()
				t.Errorf("Open(%s) succeeded", ep)
				return nil
			}
			t.Logf("%s: %v", ep, err)
			for _, s := range tc.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("Open(%s): error %q does not mention %q", ep, err, s)
				}
			}
			return nil
		})
		if _, err := w.nlL.LinkByName("vx46"); err == nil {
			t.Errorf("after Open(%s): vx46 is left behind", ep)
			if l, err := w.nlL.LinkByName("vx46"); err == nil {
				w.nlL.LinkDel(l)
			}
		}
	}
}

// TestVXLANFallback: where the kernel data path cannot go in on host 1
// (a filter of someone else's at vmnet's priority on tA) that link says
// so in one line, with what to do, and carries the tunnel in userspace;
// host 2's link still forwards in the kernel, and frames pass both ways.
func TestVXLANFallback(t *testing.T) {
	w := newVXLANWorld(t, 1550)
	testenv.Do(t, w.L, func() error {
		cfg := tap.NewConfig("tA", 1)
		cfg.Persist, cfg.VnetHdrSize = true, vnethdr.HdrLen
		tp, err := tap.Create(cfg)
		if err != nil {
			return err
		}
		return tp.Close()
	})
	prio := fmt.Sprint(kernelPrio)
	w.tc("qdisc", "add", "dev", "tA", "clsact")
	w.tc("filter", "add", "dev", "tA", "egress", "prio", prio, "protocol", "ip", "u32", "match", "ip", "protocol", "253", "0xff", "classid", "1:1")
	var rec logLines
	l1, l2 := w.links(Options{Logf: rec.logf})
	stopper(t, l1)
	stopper(t, l2)
	// No switch may be under way while frames flow: a frame that reaches
	// an AF_PACKET end (the vxlan device) between its socket filter and
	// its redirect changing is lost (see Link.Run).
	waitFor(t, "host 2's kernel data path and host 1's log line", func() bool {
		return l2.Stats().Datapath == DatapathKernel && len(rec.lines()) >= 1
	})
	w.ping(3)
	w.tcpTransfer(1 << 20)
	s1, s2 := l1.Stats(), l2.Stats()
	logs := rec.lines()
	t.Logf("log: %q\n%s\n%s", logs, s1, s2)
	if len(logs) != 1 || !strings.Contains(logs[0], "forwarding in userspace") || !strings.Contains(logs[0], "tc filter del dev tA egress prio "+prio) {
		t.Errorf("log %q: want one line saying why and what to do", logs)
	}
	if s1.Datapath != DatapathUserspace || s1.AtoB.Frames == 0 || s1.BtoA.Frames == 0 {
		t.Errorf("host 1: datapath %q, %d/%d frames; want userspace carrying both ways", s1.Datapath, s1.AtoB.Frames, s1.BtoA.Frames)
	}
	if s2.Datapath != DatapathKernel {
		t.Errorf("host 2: datapath %q, want kernel", s2.Datapath)
	}
}

// TestVXLANMissingFallback: on a kernel without clsact, u32 or mirred (a
// `vmnet exec` guest loads none of those modules) both links log one line
// naming the kernel option and carry the tunnel in userspace. On a kernel
// that has them it skips; TestGuestOnly (internal/gexec) runs it in a
// guest: CGO_ENABLED=0 go test -exec "$PWD/vmnet exec" -run TestVXLANMissingFallback ./internal/link/
func TestVXLANMissingFallback(t *testing.T) {
	w := newVXLANWorld(t, 1550)
	var rec logLines
	l1, l2 := w.links(Options{Logf: rec.logf})
	stopper(t, l1)
	stopper(t, l2)
	kernel := func() bool { return l1.Stats().Datapath == DatapathKernel && l2.Stats().Datapath == DatapathKernel }
	waitFor(t, "the kernel data path or two log lines", func() bool { return kernel() || len(rec.lines()) >= 2 })
	if kernel() {
		t.Skip("this kernel has clsact, u32 and mirred: the fallback is tested in a guest without those modules")
	}
	w.ping(3)
	w.tcpTransfer(1 << 20)
	s1, s2 := l1.Stats(), l2.Stats()
	logs := rec.lines()
	t.Logf("log: %q\n%s\n%s", logs, s1, s2)
	if len(logs) != 2 {
		t.Errorf("log %q: want one line per link", logs)
	}
	for _, l := range logs {
		if !strings.Contains(l, "forwarding in userspace") || !strings.Contains(l, "this kernel lacks CONFIG_NET_") {
			t.Errorf("log line %q: want it to name the missing kernel option", l)
		}
	}
	if s1.Datapath != DatapathUserspace || s2.Datapath != DatapathUserspace || s1.AtoB.Frames == 0 || s2.BtoA.Frames == 0 {
		t.Errorf("datapaths %q %q; want userspace carrying the transfer:\n%s\n%s", s1.Datapath, s2.Datapath, s1, s2)
	}
}
