package vmconfig

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func TestParseEndpoint(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		in   string
		want Endpoint
		err  string // substring of the error; "" = must parse
	}{
		{in: "tap:lab0", want: Endpoint{Kind: KindTap, Name: "lab0"}},
		{in: "tap:t1,queues=4,vnet_hdr=off,netns=r1", want: Endpoint{Kind: KindTap, Name: "t1", Queues: 4, VnetHdr: Off, NetNS: "r1"}},
		{in: "tap:t1,vnet_hdr=on", want: Endpoint{Kind: KindTap, Name: "t1", VnetHdr: On}},
		{in: "packet:eth0,netns=ns-a", want: Endpoint{Kind: KindPacket, Name: "eth0", NetNS: "ns-a"}},
		{in: "udp:127.0.0.1:5000,remote=127.0.0.1:5001", want: Endpoint{Kind: KindUDP, Local: ap("127.0.0.1:5000"), Remote: ap("127.0.0.1:5001")}},
		{in: "udp:0.0.0.0:5000,remote=10.1.1.1:5001", want: Endpoint{Kind: KindUDP, Local: ap("0.0.0.0:5000"), Remote: ap("10.1.1.1:5001")}},
		{in: "udp:[::1]:5000,remote=[fe80::1%eth0]:5001", want: Endpoint{Kind: KindUDP, Local: ap("[::1]:5000"), Remote: ap("[fe80::1%eth0]:5001")}},
		{in: "udp:127.0.0.1:5000,remote=127.0.0.1:5001,key=/etc/vmnet/t.key", want: Endpoint{Kind: KindUDP, Local: ap("127.0.0.1:5000"), Remote: ap("127.0.0.1:5001"), Key: "/etc/vmnet/t.key"}},
		{in: "udp:127.0.0.1:5000,remote=127.0.0.1:5001,key=t=1.key", want: Endpoint{Kind: KindUDP, Local: ap("127.0.0.1:5000"), Remote: ap("127.0.0.1:5001"), Key: "t=1.key"}},
		{in: "vm:router:1", want: Endpoint{Kind: KindVM, Name: "router", NIC: 1}},
		{in: "vm:r-1.a:0", want: Endpoint{Kind: KindVM, Name: "r-1.a"}},
		{in: "vxlan:10.0.0.2,vni=42,port=4789", want: Endpoint{Kind: KindVXLAN, Remote: ap("10.0.0.2:4789"), VNI: 42}},
		{in: "vxlan:fd00::2,vni=16777215,port=8472,local=fd00::1,dev=eth1",
			want: Endpoint{Kind: KindVXLAN, Remote: ap("[fd00::2]:8472"), Local: ap("[fd00::1]:8472"), VNI: 16777215, Dev: "eth1"}},

		{in: "", err: "want KIND:SPEC"},
		{in: "tap", err: "want KIND:SPEC"},
		{in: "veth:x", err: `unknown kind "veth"`},
		{in: "tap:", err: "interface name is empty"},
		{in: "tap:abcdefghijklmnop", err: "16 bytes"},
		{in: "tap:a/b", err: `contains '/'`},
		{in: "tap:a b", err: "whitespace"},
		{in: "tap:a:b", err: `contains ':'`},
		{in: "tap:..", err: "not allowed"},
		{in: "tap:a\x00", err: "control character"},
		{in: "tap:x,queues=0", err: "queues=0"},
		{in: "tap:x,queues=257", err: "queues=257"},
		{in: "tap:x,queues=two", err: "queues=two"},
		{in: "tap:x,vnet_hdr=yes", err: "want on or off"},
		{in: "tap:x,remote=1.2.3.4:5", err: `unknown option "remote"`},
		{in: "tap:x,queues=1,queues=2", err: "given twice"},
		{in: "tap:x,queues", err: "not key=value"},
		{in: "tap:x,", err: "not key=value"},
		{in: "tap:x,netns=a/b", err: "netns"},
		{in: "packet:eth0,queues=2", err: `unknown option "queues"`},
		{in: "udp:127.0.0.1:5000", err: "needs remote"},
		{in: "udp:127.0.0.1,remote=127.0.0.1:1", err: "local address"},
		{in: "udp:::1:5000,remote=[::1]:1", err: "IPv6 as [ADDR]:PORT"},
		{in: "udp:127.0.0.1:0,remote=127.0.0.1:1", err: "port 0"},
		{in: "udp:127.0.0.1:1,remote=0.0.0.0:1", err: "unspecified"},
		{in: "udp:127.0.0.1:1,remote=[::1]:1", err: "different address families"},
		{in: "udp:127.0.0.1:70000,remote=127.0.0.1:1", err: "want ADDR:PORT"},
		{in: "udp:127.0.0.1:1,remote=127.0.0.1:2,key=", err: "key= needs the path of a key file"},
		{in: "udp:127.0.0.1:1,remote=127.0.0.1:2,key=a\nb", err: "control character"},
		{in: "udp:127.0.0.1:1,remote=127.0.0.1:2,key=a,key=b", err: "given twice"},
		{in: "tap:x,key=a", err: `unknown option "key"`},
		{in: "vxlan:10.0.0.2", err: "needs vni=N"},
		{in: "vxlan:10.0.0.2:4789,vni=1", err: "no port: give port=P"},
		{in: "vxlan:[fd00::2],vni=1", err: "no brackets"},
		{in: "vxlan:0.0.0.0,vni=1", err: "unspecified"},
		{in: "vxlan:239.1.1.1,vni=1", err: "multicast"},
		{in: "vxlan:fe80::1%eth0,vni=1", err: "dev=IFACE"},
		{in: "vxlan:::ffff:10.0.0.2,vni=1", err: "write the IPv4 address as such"},
		{in: "vxlan:10.0.0.2,vni=0", err: "vni=0: want a number from 1 to 16777215"},
		{in: "vxlan:10.0.0.2,vni=16777216", err: "vni=16777216"},
		{in: "vxlan:10.0.0.2,vni=1,port=0", err: "port=0: want a UDP port"},
		{in: "vxlan:10.0.0.2,vni=1,local=fd00::1", err: "different address families"},
		{in: "vxlan:10.0.0.2,vni=1,local=10.0.0.1:5", err: "local"},
		{in: "vxlan:10.0.0.2,vni=1,dev=a/b", err: "dev="},
		{in: "vxlan:10.0.0.2,vni=1,key=k", err: `unknown option "key" for vxlan endpoint`},
		{in: "vxlan:10.0.0.2,vni=1,netns=x", err: `unknown option "netns"`},
		{in: "vm:router", err: "want vm:NAME:NICINDEX"},
		{in: "vm:router:x", err: "NIC index"},
		{in: "vm:router:-1", err: "NIC index"},
		{in: "vm:-r:0", err: "VM name"},
		{in: "vm:r:0,netns=x", err: "take no options"},
	}
	for _, tc := range tests {
		got, err := ParseEndpoint(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseEndpoint(%q) = %+v, %v; want error containing %q", tc.in, got, err, tc.err)
			}
			if err != nil && !strings.Contains(err.Error(), "endpoint "+quote(tc.in)) {
				t.Errorf("ParseEndpoint(%q): error %q does not name the endpoint", tc.in, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseEndpoint(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			continue
		}
		if s := got.String(); s != tc.in {
			t.Errorf("ParseEndpoint(%q).String() = %q", tc.in, s)
		}
	}
}

func quote(s string) string { return fmt.Sprintf("%q", s) }

func FuzzParseEndpoint(f *testing.F) {
	for _, s := range []string{"tap:t1,queues=4,vnet_hdr=off,netns=r1", "packet:eth0", "udp:[::1]:5000,remote=[::1]:5001",
		"udp:127.0.0.1:5000,remote=127.0.0.1:5001", "udp:127.0.0.1:5000,remote=127.0.0.1:5001,key=k", "vm:r:0", "vm:r:01", "udp:[::ffff:1.2.3.4]:1,remote=[::ffff:1.2.3.5]:2",
		"vxlan:10.0.0.2,vni=42", "vxlan:fd00::2,vni=7,port=8472,local=fd00::1,dev=eth1", "vxlan:10.0.0.2,vni=1,local=0.0.0.0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseEndpoint(s)
		if err != nil {
			return
		}
		again, err := ParseEndpoint(e.String())
		if err != nil {
			t.Fatalf("%q parsed to %+v, whose String %q does not parse: %v", s, e, e.String(), err)
		}
		if again != e {
			t.Fatalf("%q parsed to %+v, String %q reparsed to %+v", s, e, e.String(), again)
		}
	})
}

// TestLinkKeyPath: a key file in a lab file is relative to the lab file's
// directory, like every other path in it; vmconfig does not read it.
func TestLinkKeyPath(t *testing.T) {
	lab, ps := parse(t, head+"[[link]]\na = \"tap:x1\"\nb = \"udp:127.0.0.1:6000,remote=127.0.0.1:6001,key=keys/t.key\"\n"+
		"[[link]]\na = \"tap:x2\"\nb = \"udp:127.0.0.1:6002,remote=127.0.0.1:6003,key=/etc/vmnet/t.key\"\n")
	if lab == nil {
		t.Fatalf("parse: %v", ps)
	}
	if got := lab.Links[0].B.Key; got != "/cfg/keys/t.key" {
		t.Errorf("relative key path resolved to %q, want /cfg/keys/t.key", got)
	}
	if got := lab.Links[1].B.Key; got != "/etc/vmnet/t.key" {
		t.Errorf("absolute key path became %q", got)
	}
}

// TestLinkVXLANInLab: a lab's [[link]] refuses a vxlan endpoint with a
// message that names the link and says what to use instead.
func TestLinkVXLANInLab(t *testing.T) {
	_, ps := parse(t, head+"[[link]]\na = \"tap:x1\"\nb = \"vxlan:10.0.0.2,vni=5\"\n")
	if ps == nil || !strings.Contains(ps.Error(), "vxlan endpoints are for `vmnet link`") || !strings.Contains(ps.Error(), "[[host]]") {
		t.Fatalf("lab with a vxlan link endpoint: got %v, want the vxlan refusal", ps)
	}
}
