package vmconfig

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// twoHosts is a lab with network "lan" spanning h1 and h2, network "dmz"
// only on h1 and a host h3 with a VM on "solo" only.
const twoHosts = `[lab]
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
[[network]]
name = "dmz"
vni = 77
[[network]]
name = "solo"
[[vm]]
name = "a"
host = "h1"
  [[vm.nic]]
  network = "lan"
  [[vm.nic]]
  network = "dmz"
[[vm]]
name = "b"
host = "h2"
  [[vm.nic]]
  network = "lan"
[[vm]]
name = "c"
host = "h3"
  [[vm.nic]]
  network = "solo"
`

func TestHostsResolved(t *testing.T) {
	lab, ps := parse(t, twoHosts)
	if lab == nil {
		t.Fatal(ps)
	}
	if len(lab.Hosts) != 3 || lab.Hosts[1].VXLANPort != 4790 || lab.Hosts[0].VXLANPort != DefaultVXLANPort ||
		lab.Hosts[0].UnderlayMTU != 1500 || lab.Hosts[0].Address != netip.MustParseAddr("10.200.0.1") {
		t.Errorf("hosts = %+v %+v %+v", lab.Hosts[0], lab.Hosts[1], lab.Hosts[2])
	}
	if got := lab.Networks[0].VNI; got != DeriveVNI("mh", "lan") || got < 1 || got > MaxVNI {
		t.Errorf("lan vni = %d, want derived %d", got, DeriveVNI("mh", "lan"))
	}
	if lab.Networks[1].VNI != 77 {
		t.Errorf("dmz vni = %d, want 77", lab.Networks[1].VNI)
	}
	if got := lab.HostsOf("lan"); !reflect.DeepEqual(got, []string{"h1", "h2"}) {
		t.Errorf("HostsOf(lan) = %v", got)
	}

	h1, err := lab.Part("h1")
	if err != nil {
		t.Fatal(err)
	}
	if len(h1.VMs) != 1 || h1.VMs[0].Name != "a" || len(h1.Networks) != 2 || h1.Host.Name != "h1" {
		t.Fatalf("part h1: vms %v networks %v", h1.VMs, h1.Networks)
	}
	want := &VXLAN{VNI: DeriveVNI("mh", "lan"), Local: netip.MustParseAddr("10.200.0.1"), Port: 4789,
		Peers: []Peer{{Host: "h2", Address: netip.MustParseAddr("10.200.0.2"), Port: 4790}}}
	if !reflect.DeepEqual(h1.Networks[0].VXLAN, want) {
		t.Errorf("part h1: lan vxlan = %+v, want %+v", h1.Networks[0].VXLAN, want)
	}
	if h1.Networks[1].VXLAN != nil {
		t.Errorf("part h1: dmz has VMs on h1 only, but vxlan = %+v", h1.Networks[1].VXLAN)
	}
	if lab.Networks[0].VXLAN != nil {
		t.Error("Part changed the whole lab's network")
	}
	h2, _ := lab.Part("h2")
	if v := h2.Networks[0].VXLAN; len(h2.Networks) != 1 || v == nil || v.Port != 4790 || v.Local != netip.MustParseAddr("10.200.0.2") {
		t.Errorf("part h2: %+v", h2.Networks)
	}
	h3, _ := lab.Part("h3")
	if len(h3.Networks) != 1 || h3.Networks[0].Name != "solo" || h3.Networks[0].VXLAN != nil {
		t.Errorf("part h3 (no VM on lan) gets lan or a vxlan: %+v", h3.Networks[0])
	}
	for _, bad := range []string{"", "h9"} {
		if _, err := lab.Part(bad); err == nil || !strings.Contains(err.Error(), "h1, h2, h3") {
			t.Errorf("Part(%q) = %v, want an error listing the hosts", bad, err)
		}
	}
}

func TestDeriveVNIStable(t *testing.T) {
	// Stable across releases: a changed derivation splits running labs.
	if got := DeriveVNI("mh", "lan"); got != DeriveVNI("mh", "lan") || got != deriveVNIWant {
		t.Errorf("DeriveVNI(mh, lan) = %d, want %d", got, deriveVNIWant)
	}
	if DeriveVNI("mh", "lan") == DeriveVNI("mh", "lan2") {
		t.Error("different networks, same VNI")
	}
}

func TestSingleHostUnchanged(t *testing.T) {
	for _, doc := range []string{head, `[[host]]
name = "only"
address = "192.0.2.1"
` + head + "[[vm]]\nname = \"v\"\n  [[vm.nic]]\n  network = \"n\"\n"} {
		lab, ps := parse(t, doc)
		if lab == nil {
			t.Fatal(ps)
		}
		p, err := lab.Part("")
		if err != nil || p != lab {
			t.Errorf("Part(\"\") = %v, %v; want the lab itself", p, err)
		}
		for _, vm := range lab.VMs {
			if vm.Host != "only" {
				t.Errorf("vm %s: host %q, want the only host", vm.Name, vm.Host)
			}
		}
	}
	lab, _ := parse(t, head)
	if _, err := lab.Part("h1"); err == nil || !strings.Contains(err.Error(), "no [[host]]") {
		t.Errorf("--host on a lab without hosts: %v", err)
	}
}

// wired is VMs a (on host ha) and b (on hb), two NICs each without
// network, and a link between their first NICs ([[link]] last, so that
// keys can be appended to it).
func wired(ha, hb string) string {
	var s string
	for _, v := range [][2]string{{"a", ha}, {"b", hb}} {
		s += "[[vm]]\nname = \"" + v[0] + "\"\n"
		if v[1] != "" {
			s += "host = \"" + v[1] + "\"\n"
		}
		s += "  [[vm.nic]]\n  [[vm.nic]]\n"
	}
	return s + "[[link]]\na = \"vm:a:0\"\nb = \"vm:b:0\"\n"
}

// TestLinkAcrossHosts: a [[link]] between VMs on two hosts becomes, in
// each host's part, a UDP tunnel from the local VM's NIC to the other
// host's underlay address, on a port both derive alone (or port =), with
// the key file both hold; each host impairs only what its own VM sends;
// without key the lab file gets a warning.
func TestLinkAcrossHosts(t *testing.T) {
	hosts := "[lab]\nname = \"t\"\n[[host]]\nname = \"h1\"\naddress = \"10.200.0.1\"\n[[host]]\nname = \"h2\"\naddress = \"10.200.0.2\"\n"
	lab, ps := parse(t, hosts+wired("h1", "h2")+"key = \"link.key\"\nloss = \"50%\"\n[[link]]\na = \"vm:b:1\"\nb = \"vm:a:1\"\nport = 6000\n")
	if lab == nil {
		t.Fatal(ps)
	}
	if len(ps) != 1 || !strings.Contains(ps[0].Msg, "link 1: runs between hosts \"h2\" and \"h1\" as a UDP tunnel without key") || ps[0].Pos.Line != 24 {
		t.Errorf("warnings = %v, want one about link 1 without key at line 24", ps)
	}
	port := DeriveLinkPort("t", 0)
	if port < 20000 || port > 32767 || lab.Links[0].Port != port || lab.Links[1].Port != 6000 || lab.Links[0].Key != "/cfg/link.key" {
		t.Errorf("links: port %d key %q, port %d; want derived %d, /cfg/link.key, 6000", lab.Links[0].Port, lab.Links[0].Key, lab.Links[1].Port, port)
	}
	ep := func(local, remote string, p int, key string) Endpoint {
		return Endpoint{Kind: KindUDP, Local: netip.AddrPortFrom(netip.MustParseAddr(local), uint16(p)),
			Remote: netip.AddrPortFrom(netip.MustParseAddr(remote), uint16(p)), Key: key}
	}
	vm := func(name string, nic int) Endpoint { return Endpoint{Kind: KindVM, Name: name, NIC: nic} }
	for _, tt := range []struct {
		host   string
		a0, b0 Endpoint
		ab, ba bool // link 0 impaired a to b, b to a
		a1, b1 Endpoint
	}{
		{"h1", vm("a", 0), ep("10.200.0.1", "10.200.0.2", port, "/cfg/link.key"), true, false, ep("10.200.0.1", "10.200.0.2", 6000, ""), vm("a", 1)},
		{"h2", ep("10.200.0.2", "10.200.0.1", port, "/cfg/link.key"), vm("b", 0), false, true, vm("b", 1), ep("10.200.0.2", "10.200.0.1", 6000, "")},
	} {
		p, err := lab.Part(tt.host)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Links) != 2 {
			t.Fatalf("%s: %d links, want 2", tt.host, len(p.Links))
		}
		l0, l1 := p.Links[0], p.Links[1]
		if l0.A != tt.a0 || l0.B != tt.b0 || l1.A != tt.a1 || l1.B != tt.b1 || l0.Index != 0 || l1.Index != 1 {
			t.Errorf("%s: links %s <-> %s, %s <-> %s; want %s <-> %s, %s <-> %s", tt.host, l0.A, l0.B, l1.A, l1.B, tt.a0, tt.b0, tt.a1, tt.b1)
		}
		if (l0.AtoB != nil) != tt.ab || (l0.BtoA != nil) != tt.ba {
			t.Errorf("%s: link 0 impaired a to b %v, b to a %v; want %v, %v", tt.host, l0.AtoB != nil, l0.BtoA != nil, tt.ab, tt.ba)
		}
	}
	if lab.Links[0].B != vm("b", 0) || lab.Links[0].BtoA == nil {
		t.Errorf("Part changed the whole lab's link: %s, %v", lab.Links[0].B, lab.Links[0].BtoA)
	}
}

func TestHostProblems(t *testing.T) {
	hosts := "[lab]\nname = \"t\"\n[[host]]\nname = \"h1\"\naddress = \"10.200.0.1\"\n[[host]]\nname = \"h2\"\naddress = \"10.200.0.2\"\n"
	vm := func(name, host, network string) string {
		s := "[[vm]]\nname = \"" + name + "\"\n"
		if host != "" {
			s += "host = \"" + host + "\"\n"
		}
		return s + "  [[vm.nic]]\n  network = \"" + network + "\"\n"
	}
	tests := []struct {
		name, doc, at, msg string
	}{
		{"unknown host", hosts + "[[network]]\nname = \"n\"\n" + vm("a", "h9", "n"), "13:1",
			`vm "a": host "h9" is not defined (defined hosts: h1, h2)`},
		{"vm without host", hosts + "[[network]]\nname = \"n\"\n" + vm("a", "", "n"), "11:1",
			`vm "a": host is required when the lab has several [[host]] tables`},
		{"host without hosts", "[lab]\nname = \"t\"\n[[network]]\nname = \"n\"\n" + vm("a", "h1", "n"), "7:1",
			`host "h1" is not defined (no [[host]] is defined)`},
		{"duplicate host name", hosts + "[[host]]\nname = \"h1\"\naddress = \"10.200.0.3\"\n", "10:1",
			`host "h1" is defined twice (first at line 3)`},
		{"duplicate address", hosts + "[[host]]\nname = \"h3\"\naddress = \"10.200.0.1\"\n", "11:1",
			`address 10.200.0.1 is already the address of host "h1"`},
		{"bad address", "[lab]\nname = \"t\"\n[[host]]\nname = \"h1\"\naddress = \"10.0.0.1/24\"\n", "5:1",
			`address "10.0.0.1/24" is not an IP address`},
		{"missing address", "[lab]\nname = \"t\"\n[[host]]\nname = \"h1\"\n", "3:1", `host "h1": address is required`},
		{"duplicate vni", hosts + "[[network]]\nname = \"n\"\nvni = 5\n[[network]]\nname = \"m\"\nvni = 5\n", "14:1",
			`network "m": vni 5 (set) is already the vni of network "n" at line 9`},
		{"vni out of range", hosts + "[[network]]\nname = \"n\"\nvni = 16777216\n", "11:1", "vni = 16777216 is out of range: use 1 to 16777215"},
		{"mtu does not fit", hosts + "[[network]]\nname = \"n\"\nmtu = 1500\n" + vm("a", "h1", "n") + vm("b", "h2", "n"), "11:1",
			`mtu 1500 does not fit underlay_mtu 1500 of host "h1": set mtu = 1450 on the network`},
		{"default mtu does not fit", hosts + "[[network]]\nname = \"n\"\n" + vm("a", "h1", "n") + vm("b", "h2", "n"), "9:1",
			`network "n" spans hosts h1, h2 over VXLAN, which adds 50 bytes on an IPv4 underlay: mtu 1500 does not fit`},
		{"ipv6 underlay mtu", "[lab]\nname = \"t\"\n[[host]]\nname = \"h1\"\naddress = \"fd00::1\"\n[[host]]\nname = \"h2\"\naddress = \"fd00::2\"\n" +
			"[[network]]\nname = \"n\"\nmtu = 1450\n" + vm("a", "h1", "n") + vm("b", "h2", "n"), "11:1",
			`adds 70 bytes on an IPv6 underlay: mtu 1450 does not fit underlay_mtu 1500 of host "h1": set mtu = 1430`},
		{"mixed families", "[lab]\nname = \"t\"\n[[host]]\nname = \"h1\"\naddress = \"10.200.0.1\"\n[[host]]\nname = \"h2\"\naddress = \"fd00::2\"\n" +
			"[[network]]\nname = \"n\"\nmtu = 1400\n" + vm("a", "h1", "n") + vm("b", "h2", "n"), "11:1",
			`host "h1" has an IPv4 address and host "h2" an IPv6 one`},
		{"link port on one host", hosts + wired("h1", "h1") + "port = 5000\n", "22:1",
			"link 0: port applies only to a link between VMs on two different hosts"},
		{"link key without hosts", "[lab]\nname = \"t\"\n" + wired("", "") + "key = \"k\"\n", "14:1",
			"link 0: key applies only to a link between VMs on two different hosts"},
		{"link port is vxlan_port", hosts + wired("h1", "h2") + "port = 4789\n", "22:1",
			`link 0: UDP port 4789 is host "h1"'s vxlan_port: set port = N`},
		{"link ports clash", hosts + wired("h1", "h2") + "port = 5000\n[[link]]\na = \"vm:a:1\"\nb = \"vm:b:1\"\nport = 5000\n", "26:1",
			`link 1: UDP port 5000 on host "h1" is already the port of link 0 at line 19`},
		{"link across families", "[lab]\nname = \"t\"\n[[host]]\nname = \"h1\"\naddress = \"10.200.0.1\"\n[[host]]\nname = \"h2\"\naddress = \"fd00::2\"\n" +
			wired("h1", "h2"), "19:1", `link 0: joins a VM on host "h1" (IPv4 address) and one on host "h2" (IPv6 address)`},
		{"link without vm", hosts + "[[link]]\na = \"tap:x\"\nb = \"tap:y\"\n", "9:1", "link 0: with several [[host]] tables a link needs a vm: end"},
		{"vxlan name taken", hosts + "[[network]]\nname = \"n\"\nmtu = 1450\nvni = 7\n" + vm("a", "h1", "n") + vm("b", "h2", "n") +
			"[[vm]]\nname = \"c\"\nhost = \"h1\"\n  [[vm.nic]]\n  network = \"n\"\n  ifname = \"vx7\"\n", "12:1",
			`network "n": VXLAN device: interface name "vx7" is already used at line 28`},
		{"host in defaults", hosts + "[defaults]\nhost = \"h1\"\n", "10:1", "host cannot have a default"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lab, ps := parse(t, tt.doc)
			if lab != nil {
				t.Fatalf("no error; want %s: %s", tt.at, tt.msg)
			}
			for _, p := range ps {
				if p.Severity == Error && strings.Contains(p.Msg, tt.msg) {
					if got := strings.TrimPrefix(p.Pos.String(), "/cfg/lab.toml:"); got != tt.at {
						t.Errorf("at %s, want %s: %s", got, tt.at, p.Msg)
					}
					return
				}
			}
			t.Errorf("want %q at %s; got:\n%v", tt.msg, tt.at, ps)
		})
	}
}

const deriveVNIWant = 9562290
