package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/owner"
	"github.com/vmnet/vmnet/vmconfig"
)

// multiHost is a lab over three hosts: network lan spans h1 and h2
// (VMs a and b), network solo is on h3 only (VM c).
const multiHost = `[lab]
name = "mh"
[[host]]
name = "h1"
address = "10.200.0.1"
[[host]]
name = "h2"
address = "10.200.0.2"
vxlan_port = 4790
[[host]]
name = "h3"
address = "10.200.0.3"
[[network]]
name = "lan"
mtu = 1450
addresses = ["10.201.0.1/24"]
[[network]]
name = "solo"
[[vm]]
name = "a"
host = "h1"
kernel = "k"
  [[vm.nic]]
  network = "lan"
[[vm]]
name = "b"
host = "h2"
kernel = "k"
  [[vm.nic]]
  network = "lan"
[[vm]]
name = "c"
host = "h3"
kernel = "k"
  [[vm.nic]]
  network = "solo"
`

// upPart brings up the networks (bridges and VXLAN devices) of host's
// part of cfg in the calling thread's namespace, without guests.
func upPart(t *testing.T, cfg *vmconfig.Lab, host string) *Lab {
	t.Helper()
	part, err := cfg.Part(host)
	if err != nil {
		t.Fatal(err)
	}
	l := newLab(t, part)
	for _, n := range part.Networks {
		if err := l.EnsureNetwork(n.Name); err != nil {
			t.Fatalf("host %s: %v", host, err)
		}
	}
	return l
}

type ipLink struct {
	IfName   string `json:"ifname"`
	Master   string `json:"master"`
	MTU      int    `json:"mtu"`
	IfAlias  string `json:"ifalias"`
	LinkInfo struct {
		Kind string `json:"info_kind"`
		Data struct {
			ID       int    `json:"id"`
			Local    string `json:"local"`
			Port     int    `json:"port"`
			Learning bool   `json:"learning"`
		} `json:"info_data"`
	} `json:"linkinfo"`
}

// vxlans is `ip -d -j link show type vxlan` in the calling thread's
// namespace.
func vxlans(t *testing.T) []ipLink {
	t.Helper()
	out, err := exec.Command("ip", "-d", "-j", "link", "show", "type", "vxlan").Output()
	if err != nil {
		t.Fatalf("ip link: %v", err)
	}
	var links []ipLink
	if err := json.Unmarshal(out, &links); err != nil {
		t.Fatalf("ip -j link: %v: %s", err, out)
	}
	return links
}

// floods is the destinations of the all-zeros FDB entries of dev
// (`bridge -j fdb show dev DEV`).
func floods(t *testing.T, dev string) []string {
	t.Helper()
	out, err := exec.Command("bridge", "-j", "fdb", "show", "dev", dev).Output()
	if err != nil {
		t.Fatalf("bridge fdb: %v", err)
	}
	var entries []struct {
		MAC  string `json:"mac"`
		Dst  string `json:"dst"`
		Port int    `json:"port"`
	}
	if err := json.Unmarshal(out, &entries); err != nil {
		t.Fatalf("bridge -j fdb: %v: %s", err, out)
	}
	var dsts []string
	for _, e := range entries {
		if e.MAC == "00:00:00:00:00:00" {
			dsts = append(dsts, fmt.Sprintf("%s:%d", e.Dst, e.Port))
		}
	}
	return dsts
}

// TestVXLANSpansHosts: on three simulated hosts, network lan (VMs on h1
// and h2) gets a VXLAN device on h1 and h2 with its VNI, port, local
// address, no learning, the lab's tag, on lan's bridge, with one flood
// entry for the other host; a host address on h2's bridge reaches the
// one on h1's (ARP, a broadcast, crosses the VXLAN); h3, with no VM on
// lan, has no VXLAN device; teardown and `down` leave nothing.
func TestVXLANSpansHosts(t *testing.T) {
	hosts := testenv.Underlay(t, 3)
	cfg := labOf(t, multiHost)
	vni := vmconfig.DeriveVNI("mh", "lan")
	dev := vmconfig.VXLANName(vni)
	labs := make([]*Lab, 3)
	for i, host := range []string{"h1", "h2", "h3"} {
		testenv.Do(t, hosts[i], func() error {
			labs[i] = upPart(t, cfg, host)
			return nil
		})
	}
	for i, want := range []struct {
		local, peer string
		port        int
	}{{"10.200.0.1", "10.200.0.2:4790", 4789}, {"10.200.0.2", "10.200.0.1:4789", 4790}} {
		testenv.Do(t, hosts[i], func() error {
			links := vxlans(t)
			if len(links) != 1 {
				t.Fatalf("h%d: %d VXLAN devices, want 1: %+v", i+1, len(links), links)
			}
			v := links[0]
			d := v.LinkInfo.Data
			if v.IfName != dev || d.ID != vni || d.Local != want.local || d.Port != want.port || d.Learning ||
				v.Master != "mh-lan" || v.IfAlias != owner.Lab("mh") || v.MTU != 1450 {
				t.Errorf("h%d: vxlan = %+v, want %s VNI %d local %s port %d nolearning on mh-lan tagged %s mtu 1450",
					i+1, v, dev, vni, want.local, want.port, owner.Lab("mh"))
			}
			if got := floods(t, dev); len(got) != 1 || got[0] != want.peer {
				t.Errorf("h%d: flood entries to %v, want [%s]", i+1, got, want.peer)
			}
			return nil
		})
	}
	testenv.Do(t, hosts[2], func() error {
		if links := vxlans(t); len(links) != 0 {
			t.Errorf("h3 has no VM on lan but has VXLAN devices: %+v", links)
		}
		return nil
	})

	// Host addresses on lan: the lab file's on h1 only (one layer-2
	// domain, one owner of the address); h2 gets one by hand.
	var ln net.Listener
	testenv.Do(t, hosts[0], func() error {
		var err error
		ln, err = net.Listen("tcp", "10.201.0.1:7000")
		return err
	})
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Write([]byte("across"))
			c.Close()
		}
	}()
	testenv.Do(t, hosts[1], func() error {
		h := &netlink.Handle{}
		br, err := h.LinkByName("mh-lan")
		if err != nil {
			return err
		}
		if addrs, _ := h.AddrList(br, netlink.FAMILY_V4); len(addrs) != 0 {
			t.Errorf("h2's bridge of lan got the lab file's address too: %v", addrs)
		}
		a, _ := netlink.ParseAddr("10.201.0.2/24")
		if err := h.AddrAdd(br, a); err != nil {
			return err
		}
		c, err := net.DialTimeout("tcp", "10.201.0.1:7000", 10*time.Second)
		if err != nil {
			return fmt.Errorf("h2 -> h1 across the VXLAN: %w", err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 16)
		n, _ := c.Read(buf)
		if string(buf[:n]) != "across" {
			t.Errorf("read %q from h1, want %q", buf[:n], "across")
		}
		out, _ := exec.Command("ip", "neigh", "show", "10.201.0.1", "dev", "mh-lan").CombinedOutput()
		if !strings.Contains(string(out), "lladdr") {
			t.Errorf("h2 did not learn h1's bridge address by ARP: %s", out)
		}
		return nil
	})

	// status of h1's part: its networks only, the VXLAN device with its
	// VNI, port, peer and the traffic that just crossed.
	testenv.Do(t, hosts[0], func() error {
		r := Describe(&State{Lab: "mh", Host: "h1", VXLANs: []string{dev}}, cfg, nil)
		if len(r.Networks) != 1 || r.Networks[0].Name != "lan" || r.Host != "h1" {
			t.Errorf("status of h1 shows networks %+v, want lan only", r.Networks)
		}
		if len(r.VXLANs) != 1 {
			t.Fatalf("status vxlans = %+v", r.VXLANs)
		}
		v := r.VXLANs[0]
		if v.Name != dev || v.Network != "lan" || v.VNI != vni || v.Port != 4789 || v.Local != "10.200.0.1" ||
			len(v.Peers) != 1 || v.Peers[0] != "10.200.0.2" || v.TxPackets == 0 || v.RxPackets == 0 {
			t.Errorf("status vxlan = %+v", v)
		}
		var b strings.Builder
		r.WriteTable(&b)
		if want := fmt.Sprintf("vxlan %-10s net lan", dev); !strings.Contains(b.String(), want) || !strings.Contains(b.String(), "peers 10.200.0.2") {
			t.Errorf("status table lacks %q and the peer:\n%s", want, b.String())
		}
		return nil
	})

	// h1 and h3 tear down their own part; h2's part goes with `down`,
	// which finds it by its tags.
	for i := range []int{0, 2} {
		i *= 2
		testenv.Do(t, hosts[i], func() error {
			if err := labs[i].Teardown(context.Background()); err != nil {
				t.Errorf("h%d: teardown: %v", i+1, err)
			}
			return nil
		})
	}
	testenv.Do(t, hosts[1], func() error {
		ns, err := CurrentNetNS()
		if err != nil {
			return err
		}
		return Down(context.Background(), "mh", t.TempDir(), ns, t.Logf)
	})
	for i, hn := range hosts {
		testenv.Do(t, hn, func() error {
			if links, _ := owner.List(&netlink.Handle{}, owner.Lab("mh")); len(links) != 0 {
				t.Errorf("h%d: left after down: %v", i+1, links)
			}
			if links := vxlans(t); len(links) != 0 {
				t.Errorf("h%d: VXLAN devices left: %+v", i+1, links)
			}
			return nil
		})
	}
}

// TestUnderlayNotHere: bringing up h1's part where h1's underlay address
// is not on any interface fails naming the host and the address, and
// creates nothing.
func TestUnderlayNotHere(t *testing.T) {
	hosts := testenv.Underlay(t, 3)
	cfg := labOf(t, multiHost)
	part, err := cfg.Part("h1")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Do(t, hosts[2], func() error {
		l := newLab(t, part)
		err := l.Up(context.Background(), time.Second)
		if err == nil {
			t.Fatal("up of h1's part on h3 succeeded")
		}
		for _, want := range []string{"host h1", "10.200.0.1", "not on this host"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
		}
		links, _ := netlink.LinkList()
		for _, l := range links {
			if l.Attrs().Name != "lo" && l.Attrs().Name != "eth0" {
				t.Errorf("created %s", l.Attrs().Name)
			}
		}
		return nil
	})
}

// TestVNIClash: on one host, a lab whose spanning network has the VNI
// (and port) of another lab's network that is up there is refused, by
// `vmnet up`'s check and again before the VXLAN device would be made,
// with an error naming both labs, the network and the VNI (its teardown
// leaves nothing); another VNI, and the first lab's own devices, pass.
func TestVNIClash(t *testing.T) {
	hosts := testenv.Underlay(t, 2)
	withVNI := func(lab string, vni int) *vmconfig.Lab {
		body := strings.Replace(strings.Replace(multiHost, `name = "mh"`, `name = "`+lab+`"`, 1),
			"mtu = 1450\n", fmt.Sprintf("mtu = 1450\nvni = %d\n", vni), 1)
		return labOf(t, body)
	}
	first, clash, other := withVNI("one", 4242), withVNI("two", 4242), withVNI("six", 4243)
	testenv.Do(t, hosts[0], func() error {
		l := upPart(t, first, "h1")
		defer l.Teardown(context.Background())
		part, err := clash.Part("h1")
		if err != nil {
			return err
		}
		if err := CheckVNIs(part); err == nil {
			t.Error("CheckVNIs accepts VNI 4242 of lab one for lab two")
		} else {
			for _, want := range []string{"lab two: network lan (VNI 4242, port 4789) clashes with lab one", "VXLAN device vx4242 (VNI 4242, port 4789) on bridge one-lan", "set vni = N on network lan"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
		}
		l2 := newLab(t, part)
		err = l2.EnsureNetwork("lan")
		if err == nil || !strings.Contains(err.Error(), "clashes with lab one") {
			t.Errorf("EnsureNetwork of lab two: %v, want the clash", err)
		}
		l2.Teardown(context.Background())
		if n, _ := Tagged("two"); n != 0 {
			t.Errorf("lab two left %d interfaces", n)
		}
		part, _ = other.Part("h1")
		if err := CheckVNIs(part); err != nil {
			t.Errorf("VNI 4243: %v", err)
		}
		own, _ := first.Part("h1")
		if err := CheckVNIs(own); err != nil {
			t.Errorf("lab one's own devices count as a clash: %v", err)
		}
		return nil
	})
}
