package bridge

import (
	"errors"
	"net/netip"
	"slices"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

func TestCheckName(t *testing.T) {
	for name, ok := range map[string]bool{
		"br0": true, "a": true, "br-lab.1_x": true, "123456789012345": true,
		"": false, "1234567890123456": false, ".": false, "..": false,
		"a/b": false, "a:b": false, "a b": false, "a\tb": false, "br%d": false, "a\x01": false,
	} {
		if err := checkName("bridge", name); (err == nil) != ok {
			t.Errorf("checkName(%q) = %v, want ok=%v", name, err, ok)
		}
	}
}

func TestCheckAddress(t *testing.T) {
	for s, ok := range map[string]bool{
		"10.0.0.1/24": true, "10.0.0.254/24": true, "10.0.0.0/31": true, "10.0.0.1/31": true, "10.0.0.1/32": true,
		"192.168.1.0/23": true, "192.168.0.255/23": true, "fd00::1/64": true, "fe80::1/64": true, "2001:db8::/127": true,
		"10.0.0.0/24": false, "10.0.0.255/24": false, "192.168.1.255/23": false, "192.168.0.0/23": false,
		"0.0.0.0/0": false, "224.0.0.5/24": false, "127.0.0.1/8": false, "fd00::/64": false, "::/0": false,
		"ff02::1/64": false, "::ffff:10.0.0.1/120": false,
	} {
		if err := checkAddress("br0", netip.MustParsePrefix(s)); (err == nil) != ok {
			t.Errorf("checkAddress(%s) = %v, want ok=%v", s, err, ok)
		}
	}
}

func TestParseVLANs(t *testing.T) {
	attr := func(id, flags uint16) syscall.NetlinkRouteAttr {
		v := nl.BridgeVlanInfo{Flags: flags, Vid: id}
		return syscall.NetlinkRouteAttr{Attr: syscall.RtAttr{Type: nl.IFLA_BRIDGE_VLAN_INFO}, Value: append([]byte{}, v.Serialize()...)}
	}
	got := parseVLANs([]syscall.NetlinkRouteAttr{
		attr(1, nl.BRIDGE_VLAN_INFO_PVID|nl.BRIDGE_VLAN_INFO_UNTAGGED),
		attr(10, nl.BRIDGE_VLAN_INFO_RANGE_BEGIN),
		attr(12, nl.BRIDGE_VLAN_INFO_RANGE_END),
		attr(4094, 0),
		{Attr: syscall.RtAttr{Type: nl.IFLA_BRIDGE_FLAGS}, Value: []byte{1, 0}},
	})
	want := []VLAN{{ID: 1, PVID: true, Untagged: true}, {ID: 10}, {ID: 11}, {ID: 12}, {ID: 4094}}
	if !slices.Equal(got, want) {
		t.Fatalf("parseVLANs = %+v, want %+v", got, want)
	}
}

func TestFeatureError(t *testing.T) {
	err := vlanErr("br0", "set vlan_filtering 1", unix.EOPNOTSUPP)
	want := "bridge br0: VLAN filtering: set vlan_filtering 1: this kernel lacks CONFIG_BRIDGE_VLAN_FILTERING (EOPNOTSUPP); " +
		"boot a kernel built with it (Debian's linux-image-amd64 has it) or drop the VLAN settings"
	if err.Error() != want {
		t.Errorf("got  %q\nwant %q", err, want)
	}
	if !errors.Is(err, ErrNoVLANFiltering) || !errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, ErrNoMulticastSnooping) {
		t.Errorf("errors.Is does not match as documented: %v", err)
	}
	if err := vlanErr("br0", "x", unix.EINVAL); errors.Is(err, ErrNoVLANFiltering) || !errors.Is(err, unix.EINVAL) {
		t.Errorf("EINVAL became %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := []Config{
		{Name: "br0"},
		{Name: "br0", MTU: 68}, {Name: "br0", MTU: 65535},
		{Name: "br0", GroupFwdMask: TransparentMask},
		{Name: "br0", VLANFiltering: true, DefaultPVID: 4094},
	}
	for _, c := range ok {
		if err := c.validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
	for _, p := range []PortConfig{{Name: "p"}, {Name: "p", GroupFwdMask: PortTransparentMask}, {Name: "p", PVID: 1, Tagged: []uint16{2, 4094}}} {
		if err := p.validate("br0"); err != nil {
			t.Errorf("%+v: %v", p, err)
		}
	}
	for _, p := range []PortConfig{{Name: "br0"}, {Name: "p", Tagged: []uint16{0}}, {Name: "p", Tagged: []uint16{5, 5}}, {Name: "p", Tagged: []uint16{4095}}} {
		if err := p.validate("br0"); err == nil {
			t.Errorf("%+v: no error", p)
		}
	}
}
