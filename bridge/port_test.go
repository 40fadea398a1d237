package bridge_test

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vmnet/vmnet/bridge"
	"github.com/vmnet/vmnet/internal/testenv"
	"golang.org/x/sys/unix"
)

const (
	// arrives bounds the wait for a frame that must arrive; it ends
	// when the frame comes. These tests also run in a guest under TCG
	// (TestGuestOnly) on a loaded 2-core host, where 2 s was within
	// reach of a vCPU's scheduling delay.
	arrives  = 10 * time.Second
	silence  = 300 * time.Millisecond // how long "does not arrive" is watched
	lldpType = 0x88CC
	slowType = 0x8809 // slow protocols: LACP
)

func TestPortMTUAndFlags(t *testing.T) {
	e := newEnv(t)
	if _, err := e.m.Ensure(bridge.Config{Name: "br0", MTU: 9000}); err != nil {
		t.Fatal(err)
	}
	e.veth("vp0", "vp0-peer")
	// A tap made through /dev/net/tun in the namespace; 1500 like any tap.
	testenv.Do(t, e.ns, func() error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "tap0"
		tap := &netlink.Tuntap{LinkAttrs: attrs, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI, NonPersist: false}
		if err := e.h.LinkAdd(tap); err != nil {
			return err
		}
		for _, f := range tap.Fds {
			f.Close() // persistent: the device stays without a reader
		}
		return nil
	})
	if mtu := e.link("tap0").Attrs().MTU; mtu != 1500 {
		t.Fatalf("new tap has MTU %d, want 1500 for the test to mean something", mtu)
	}

	off := false
	if err := e.m.AddPort("br0", bridge.PortConfig{Name: "vp0", Hairpin: true, Isolated: true, Learning: &off, Flood: &off,
		GroupFwdMask: bridge.PortTransparentMask}); err != nil {
		t.Fatal(err)
	}
	if err := e.m.AddPort("br0", bridge.PortConfig{Name: "tap0"}); err != nil {
		t.Fatal(err)
	}

	br := e.ipLink("br0")
	if br["mtu"] != 9000.0 {
		t.Errorf("bridge MTU %v after attaching 1500-byte ports, want 9000", br["mtu"])
	}
	for _, p := range []string{"vp0", "tap0"} {
		l := e.ipLink(p)
		if l["mtu"] != 9000.0 || l["master"] != "br0" {
			t.Errorf("%s: mtu=%v master=%v; want 9000, br0", p, l["mtu"], l["master"])
		}
	}
	bl := e.bridgeLink("vp0")
	for k, want := range map[string]any{"hairpin": true, "isolated": true, "learning": false, "flood": false} {
		if bl[k] != want {
			t.Errorf("bridge link vp0: %s=%v, want %v", k, bl[k], want)
		}
	}
	if m := infoData(e.ipLink("vp0"), "info_slave_data")["group_fwd_mask"]; m != "0xfffd" {
		t.Errorf("vp0 group_fwd_mask %v, want 0xfffd", m)
	}
	bl = e.bridgeLink("tap0")
	for k, want := range map[string]any{"hairpin": false, "isolated": false, "learning": true, "flood": true} {
		if bl[k] != want {
			t.Errorf("bridge link tap0: %s=%v, want %v (defaults)", k, bl[k], want)
		}
	}

	info, err := e.m.Show("br0")
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Ports) != 2 {
		t.Fatalf("Show ports = %+v, want vp0 and tap0", info.Ports)
	}
	for _, p := range info.Ports {
		want := bridge.PortInfo{Name: "tap0", Type: "tuntap", MTU: 9000, Learning: true, Flood: true}
		if p.Name == "vp0" {
			want = bridge.PortInfo{Name: "vp0", Type: "veth", MTU: 9000, Hairpin: true, Isolated: true, GroupFwdMask: 0xfffd}
		}
		if p.Name != want.Name || p.Type != want.Type || p.MTU != want.MTU || p.Hairpin != want.Hairpin || p.Isolated != want.Isolated ||
			p.Learning != want.Learning || p.Flood != want.Flood || p.GroupFwdMask != want.GroupFwdMask {
			t.Errorf("Show port %+v, want %+v", p, want)
		}
	}

	// Re-adding updates the flags in place.
	if err := e.m.AddPort("br0", bridge.PortConfig{Name: "vp0"}); err != nil {
		t.Fatal(err)
	}
	bl = e.bridgeLink("vp0")
	if bl["hairpin"] != false || bl["isolated"] != false || bl["learning"] != true || bl["flood"] != true {
		t.Errorf("after re-adding vp0 with defaults: %v", bl)
	}

	for range 2 {
		if err := e.m.RemovePort("br0", "tap0"); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := e.ipLink("tap0")["master"]; ok {
		t.Error("tap0 still has a master after RemovePort")
	}
	if err := e.m.RemovePort("br0", "nosuch"); !errors.Is(err, bridge.ErrNotFound) {
		t.Errorf("RemovePort of a missing port: %v, want ErrNotFound", err)
	}
	if mtu := e.ipLink("br0")["mtu"]; mtu != 9000.0 {
		t.Errorf("bridge MTU %v after removing a port, want 9000", mtu)
	}
}

// scene is a bridge with n ports pN, each a veth whose far end hN stays
// outside the bridge with an AF_PACKET socket on it.
func scene(t *testing.T, cfg bridge.Config, ports ...bridge.PortConfig) (*env, []*packetSock) {
	e := newEnv(t)
	if _, err := e.m.Ensure(cfg); err != nil {
		t.Fatal(err)
	}
	var socks []*packetSock
	for _, p := range ports {
		host := "h" + p.Name
		e.veth(p.Name, host)
		// No IPv6 noise (DAD, MLD) from the test's own ends.
		e.run("ip", "link", "set", host, "addrgenmode", "none")
		if err := e.m.AddPort(cfg.Name, p); err != nil {
			t.Fatal(err)
		}
		socks = append(socks, e.packetSock(host))
	}
	waitForwarding(t, e, cfg.Name, len(ports))
	return e, socks
}

// waitForwarding waits until the bridge reports every port forwarding,
// as seen by `bridge -j link`. A veth port starts forwarding only when
// the kernel's link watcher, which runs at most once a second, has seen
// its carrier: under TCG on a loaded host that takes seconds.
func waitForwarding(t *testing.T, e *env, br string, n int) {
	const within = 20 * time.Second
	deadline := time.Now().Add(within)
	for {
		info, err := e.m.Show(br)
		if err != nil {
			t.Fatal(err)
		}
		fwd := 0
		for _, p := range info.Ports {
			if p.STPState == "forwarding" {
				fwd++
			}
		}
		if fwd == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("bridge %s: ports not forwarding after %v: %+v", br, within, info.Ports)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFramesCrossBridgeAndIsolation(t *testing.T) {
	_, s := scene(t, bridge.Config{Name: "br0"},
		bridge.PortConfig{Name: "p0", Isolated: true},
		bridge.PortConfig{Name: "p1", Isolated: true},
		bridge.PortConfig{Name: "p2"})

	// p0 -> everyone: the non-isolated p2 gets it, the isolated p1 must not.
	f, tag := s[0].frame(broadcast, testEtherType, 0)
	s[0].send(f)
	if _, ok := s[2].recv(tag, arrives); !ok {
		t.Fatal("broadcast from isolated p0 did not reach non-isolated p2")
	}
	if _, ok := s[1].recv(tag, silence); ok {
		t.Fatal("broadcast from isolated p0 reached isolated p1")
	}
	// Unicast to p1's far end from p2 arrives; from p0 it does not.
	f, tag = s[2].frame(s[1].mac, testEtherType, 0)
	s[2].send(f)
	if r, ok := s[1].recv(tag, arrives); !ok || !equalMAC(r.frame[:6], s[1].mac) {
		t.Fatal("unicast p2 -> p1 did not arrive")
	}
	f, tag = s[0].frame(s[1].mac, testEtherType, 0)
	s[0].send(f)
	if _, ok := s[1].recv(tag, silence); ok {
		t.Fatal("unicast from isolated p0 reached isolated p1")
	}
}

func TestHairpinReflectsFrames(t *testing.T) {
	_, s := scene(t, bridge.Config{Name: "br0"},
		bridge.PortConfig{Name: "p0", Hairpin: true},
		bridge.PortConfig{Name: "p1"})
	f, tag := s[0].frame(broadcast, testEtherType, 0)
	s[0].send(f)
	if _, ok := s[0].recv(tag, arrives); !ok {
		t.Fatal("hairpin port p0 did not get its own broadcast back")
	}
	f, tag = s[1].frame(broadcast, testEtherType, 0)
	s[1].send(f)
	if _, ok := s[0].recv(tag, arrives); !ok {
		t.Fatal("broadcast p1 -> p0 did not arrive")
	}
	if _, ok := s[1].recv(tag, silence); ok {
		t.Fatal("non-hairpin port p1 got its own broadcast back")
	}
}

// TestLinkLocalForwarding checks what TransparentMask and
// PortTransparentMask promise, with the kernel as the judge.
func TestLinkLocalForwarding(t *testing.T) {
	lldp := net.HardwareAddr{0x01, 0x80, 0xc2, 0, 0, 0x0e}
	lacp := net.HardwareAddr{0x01, 0x80, 0xc2, 0, 0, 0x02}
	dot1x := net.HardwareAddr{0x01, 0x80, 0xc2, 0, 0, 0x03}
	stp := net.HardwareAddr{0x01, 0x80, 0xc2, 0, 0, 0x00}
	// crosses sends from p0 and reports whether p1 got it, waiting long
	// for what should arrive and briefly for what should not.
	crosses := func(s []*packetSock, dst net.HardwareAddr, typ uint16, expect bool) bool {
		f, tag := s[0].frame(dst, typ, 0)
		s[0].send(f)
		d := silence
		if expect {
			d = arrives
		}
		_, ok := s[1].recv(tag, d)
		return ok
	}

	t.Run("default", func(t *testing.T) {
		_, s := scene(t, bridge.Config{Name: "br0"}, bridge.PortConfig{Name: "p0"}, bridge.PortConfig{Name: "p1"})
		if crosses(s, lldp, lldpType, false) || crosses(s, dot1x, unix.ETH_P_PAE, false) || crosses(s, lacp, slowType, false) {
			t.Fatal("a link-local frame crossed a bridge with group_fwd_mask 0")
		}
		if !crosses(s, broadcast, testEtherType, true) {
			t.Fatal("control: broadcast did not cross")
		}
		// 802.3 length field instead of an EtherType, as in a real BPDU.
		if !crosses(s, stp, 0x0026, true) {
			t.Fatal("an STP BPDU did not cross a bridge with STP off")
		}
	})
	t.Run("bridge mask", func(t *testing.T) {
		_, s := scene(t, bridge.Config{Name: "br0", GroupFwdMask: bridge.TransparentMask},
			bridge.PortConfig{Name: "p0"}, bridge.PortConfig{Name: "p1"})
		if !crosses(s, lldp, lldpType, true) || !crosses(s, dot1x, unix.ETH_P_PAE, true) {
			t.Fatal("LLDP or 802.1X did not cross a bridge with TransparentMask")
		}
		if crosses(s, lacp, slowType, false) {
			t.Fatal("LACP crossed with only the bridge mask; the kernel refuses bit 2 there, so it should not")
		}
	})
	t.Run("port mask", func(t *testing.T) {
		_, s := scene(t, bridge.Config{Name: "br0", GroupFwdMask: bridge.TransparentMask},
			bridge.PortConfig{Name: "p0", GroupFwdMask: bridge.PortTransparentMask}, bridge.PortConfig{Name: "p1"})
		if !crosses(s, lacp, slowType, true) || !crosses(s, lldp, lldpType, true) {
			t.Fatal("LACP or LLDP did not cross from a port with PortTransparentMask")
		}
	})
}

func equalMAC(a, b []byte) bool { return net.HardwareAddr(a).String() == net.HardwareAddr(b).String() }

// TestAddPortRefusedChangesNothing: when the kernel refuses part of
// attaching a new port, AddPort names the refused step and leaves the
// port as it was: not attached, still down, MTU unchanged. The bridge
// has the largest MTU there is, which a tap cannot take (its limit is
// 65535 less its Ethernet header); the batched path sends MTU, master
// and up together and must undo what the kernel did before refusing.
func TestAddPortRefusedChangesNothing(t *testing.T) {
	e := newEnv(t)
	if _, err := e.m.Ensure(bridge.Config{Name: "br0", MTU: 65535}); err != nil {
		t.Fatal(err)
	}
	testenv.Do(t, e.ns, func() error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "tap0"
		tap := &netlink.Tuntap{LinkAttrs: attrs, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI}
		if err := e.h.LinkAdd(tap); err != nil {
			return err
		}
		for _, f := range tap.Fds {
			f.Close() // persistent: the device stays without a reader
		}
		return nil
	})
	err := e.m.AddPort("br0", bridge.PortConfig{Name: "tap0", Hairpin: true})
	if err == nil || !strings.Contains(err.Error(), "bridge br0: port tap0: set MTU 65535 to match the bridge: ") {
		t.Fatalf("AddPort of a tap that cannot take MTU 65535: %v, want the MTU step named", err)
	}
	l := e.ipLink("tap0")
	if _, ok := l["master"]; ok || l["mtu"] != 1500.0 || strings.Contains(fmt.Sprint(l["flags"]), "UP") {
		t.Errorf("tap0 after the refused AddPort: master=%v mtu=%v flags=%v; want no master, 1500, down", l["master"], l["mtu"], l["flags"])
	}
}
