package bridge_test

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vmnet/vmnet/bridge"
	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/owner"
)

func ptr[T any](v T) *T { return &v }

func TestExecRunsInNamespace(t *testing.T) {
	e := newEnv(t)
	e.run("ip", "link", "add", "brexec", "type", "bridge")
	if !e.exists("brexec") {
		t.Fatal("bridge made by `ip` inside netns.Do is not in the test namespace")
	}
	host := &netlink.Handle{} // the test goroutine's thread: the host namespace
	if _, err := host.LinkByName("brexec"); err == nil {
		t.Fatal("bridge made by `ip` inside netns.Do appeared in the host namespace")
	}
}

func TestEnsureCreatesAndIsIdempotent(t *testing.T) {
	e := newEnv(t)
	cfg := bridge.Config{
		Name:              "br0",
		MTU:               9000,
		Addresses:         []netip.Prefix{netip.MustParsePrefix("10.7.0.1/24"), netip.MustParsePrefix("fd00:7::1/64")},
		STP:               true,
		GroupFwdMask:      bridge.TransparentMask,
		MulticastSnooping: ptr(false),
		Owner:             owner.Lab("lab1"),
	}
	for i, wantCreated := range []bool{true, false, false} {
		created, err := e.m.Ensure(cfg)
		if err != nil {
			t.Fatalf("Ensure #%d: %v", i, err)
		}
		if created != wantCreated {
			t.Fatalf("Ensure #%d: created=%v, want %v", i, created, wantCreated)
		}
	}

	l := e.ipLink("br0")
	d := infoData(l, "info_data")
	if l["mtu"] != 9000.0 || l["ifalias"] != "vmnet:lab:lab1" || !slices.Contains(anyStrings(l["flags"]), "UP") {
		t.Errorf("ip link: mtu=%v ifalias=%v flags=%v; want 9000, vmnet:lab:lab1, UP", l["mtu"], l["ifalias"], l["flags"])
	}
	if d["stp_state"] != 1.0 || d["group_fwd_mask"] != "0xfff8" || d["mcast_snooping"] != 0.0 {
		t.Errorf("ip -d link: stp_state=%v group_fwd_mask=%v mcast_snooping=%v; want 1, 0xfff8, 0", d["stp_state"], d["group_fwd_mask"], d["mcast_snooping"])
	}
	if got := e.sysfs("br0", "mtu", "bridge/stp_state", "bridge/group_fwd_mask", "bridge/multicast_snooping"); !slices.Equal(got, []string{"9000", "1", "0xfff8", "0"}) {
		t.Errorf("sysfs mtu, stp_state, group_fwd_mask, multicast_snooping = %v; want 9000 1 0xfff8 0", got)
	}
	addrs := e.ipAddrs("br0")
	for _, want := range []string{"10.7.0.1/24", "fd00:7::1/64"} {
		if !slices.Contains(addrs, want) {
			t.Errorf("ip addr: %v lacks %s", addrs, want)
		}
	}

	info, err := e.m.Show("br0")
	if err != nil {
		t.Fatal(err)
	}
	if info.MTU != 9000 || !info.STP || info.GroupFwdMask != 0xfff8 || info.MulticastSnooping == nil ||
		*info.MulticastSnooping || info.Owner != "vmnet:lab:lab1" || !info.Up || info.MAC != l["address"] {
		t.Errorf("Show = %+v; disagrees with ip: %v", info, l)
	}
	for _, want := range cfg.Addresses {
		if !slices.Contains(info.Addresses, want) {
			t.Errorf("Show addresses %v lack %s", info.Addresses, want)
		}
	}
	js, err := json.Marshal(info)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"mtu":9000`, `"stp":true`, `"group_fwd_mask":65528`, `"multicast_snooping":false`,
		`"owner":"vmnet:lab:lab1"`, `"vlan_filtering":false`, `"10.7.0.1/24"`, `"ports":[]`} {
		if !strings.Contains(string(js), key) {
			t.Errorf("JSON %s lacks %s", js, key)
		}
	}

	// The owner's bridge follows its config back to the defaults; a nil
	// MulticastSnooping leaves it alone.
	if _, err := e.m.Ensure(bridge.Config{Name: "br0", Owner: owner.Lab("lab1")}); err != nil {
		t.Fatal(err)
	}
	d = infoData(e.ipLink("br0"), "info_data")
	if d["stp_state"] != 0.0 || d["group_fwd_mask"] != "0" && d["group_fwd_mask"] != "0x0" || d["mcast_snooping"] != 0.0 {
		t.Errorf("after Ensure with defaults: stp_state=%v group_fwd_mask=%v mcast_snooping=%v; want 0, 0x0, 0 (left alone)",
			d["stp_state"], d["group_fwd_mask"], d["mcast_snooping"])
	}
}

func anyStrings(v any) []string {
	var s []string
	for _, x := range v.([]any) {
		s = append(s, x.(string))
	}
	return s
}

func TestReusedBridgeIsNeverTaggedOrDeleted(t *testing.T) {
	e := newEnv(t)
	e.run("ip", "link", "add", "brhost", "type", "bridge", "stp_state", "1", "group_fwd_mask", "0x4000")

	created, err := e.m.Ensure(bridge.Config{Name: "brhost", MTU: 4000, Owner: owner.Lab("lab1"), Reuse: true})
	if err != nil || created {
		t.Fatalf("Ensure on an existing bridge: created=%v err=%v", created, err)
	}
	l := e.ipLink("brhost")
	d := infoData(l, "info_data")
	if _, tagged := l["ifalias"]; tagged {
		t.Errorf("reused bridge was tagged: ifalias=%v", l["ifalias"])
	}
	// Zero fields leave a reused bridge's settings alone; MTU was asked for.
	if l["mtu"] != 4000.0 || d["stp_state"] != 1.0 || d["group_fwd_mask"] != "0x4000" {
		t.Errorf("reused bridge: mtu=%v stp_state=%v group_fwd_mask=%v; want 4000, 1 (kept), 0x4000 (kept)", l["mtu"], d["stp_state"], d["group_fwd_mask"])
	}
	if infos, err := e.m.List(owner.Lab("lab1")); err != nil || len(infos) != 0 {
		t.Errorf("List(lab1) = %v, %v; want no bridges", infos, err)
	}

	err = e.m.Delete("brhost", owner.Lab("lab1"), false)
	mustErr(t, err, "brhost", "no vmnet tag", "--force")
	if !errors.Is(err, owner.ErrNotOwned) {
		t.Errorf("error %v does not wrap owner.ErrNotOwned", err)
	}
	if !e.exists("brhost") {
		t.Fatal("Delete without force removed an untagged bridge")
	}

	// Another owner's bridge is refused too, and its own owner may delete it.
	if _, err := e.m.Ensure(bridge.Config{Name: "brlab2", Owner: owner.Lab("lab2")}); err != nil {
		t.Fatal(err)
	}
	if created, err := e.m.Ensure(bridge.Config{Name: "brlab2", Owner: owner.Lab("lab1"), Reuse: true}); err != nil || created {
		t.Fatalf("lab1 reusing lab2's bridge: created=%v err=%v", created, err)
	}
	if got := e.ipLink("brlab2")["ifalias"]; got != "vmnet:lab:lab2" {
		t.Errorf("lab1's Ensure re-tagged lab2's bridge: ifalias=%v", got)
	}
	mustErr(t, e.m.Delete("brlab2", owner.Lab("lab1"), false), "brlab2", `owned by "vmnet:lab:lab2"`)
	if err := e.m.Delete("brlab2", owner.Lab("lab2"), false); err != nil {
		t.Fatal(err)
	}
	if e.exists("brlab2") {
		t.Fatal("brlab2 survived its owner's Delete")
	}

	if err := e.m.Delete("brhost", "lab1", true); err != nil {
		t.Fatalf("forced delete: %v", err)
	}
	if e.exists("brhost") {
		t.Fatal("forced Delete left the bridge")
	}
	if err := e.m.Delete("brhost", "lab1", true); !errors.Is(err, bridge.ErrNotFound) {
		t.Fatalf("Delete of a missing bridge: %v, want ErrNotFound", err)
	}
}

func TestListByOwner(t *testing.T) {
	e := newEnv(t)
	for _, c := range []bridge.Config{{Name: "bra", Owner: owner.Lab("lab1")}, {Name: "brb", Owner: owner.Lab("lab1")}, {Name: "brc", Owner: owner.Lab("lab2")}, {Name: "brd"}} {
		if _, err := e.m.Ensure(c); err != nil {
			t.Fatal(err)
		}
	}
	e.run("ip", "link", "add", "bruser", "type", "bridge")
	e.veth("vtagged", "vtagged-p")
	if err := owner.Set(e.h, e.link("vtagged"), owner.Lab("lab1")); err != nil { // tagged, but not a bridge
		t.Fatal(err)
	}
	names := func(owner string) []string {
		infos, err := e.m.List(owner)
		if err != nil {
			t.Fatal(err)
		}
		var n []string
		for _, i := range infos {
			n = append(n, i.Name)
		}
		return n
	}
	if got := names(owner.Lab("lab1")); !slices.Equal(got, []string{"bra", "brb"}) {
		t.Errorf("List(lab1) = %v", got)
	}
	if got := names(owner.Lab("lab2")); !slices.Equal(got, []string{"brc"}) {
		t.Errorf("List(lab2) = %v", got)
	}
	all, err := e.m.ListAll()
	if err != nil {
		t.Fatal(err)
	}
	var allNames []string
	for _, i := range all {
		allNames = append(allNames, i.Name)
	}
	if !slices.Equal(allNames, []string{"bra", "brb", "brc", "brd"}) {
		t.Errorf("ListAll = %v", allNames)
	}
	if _, err := e.m.List(""); !errors.Is(err, owner.ErrBadOwner) {
		t.Errorf("List(\"\") = %v, want ErrBadOwner: nothing matches an empty owner", err)
	}
	if got := names(owner.AdHoc); !slices.Equal(got, []string{"brd"}) {
		t.Errorf("List(%q) = %v", owner.AdHoc, got)
	}
}

func TestAddressesIdempotent(t *testing.T) {
	e := newEnv(t)
	if _, err := e.m.Ensure(bridge.Config{Name: "br0"}); err != nil {
		t.Fatal(err)
	}
	p4, p6 := netip.MustParsePrefix("192.168.77.1/24"), netip.MustParsePrefix("2001:db8:77::1/64")
	for range 2 {
		for _, p := range []netip.Prefix{p4, p6} {
			if err := e.m.AddAddress("br0", p); err != nil {
				t.Fatal(err)
			}
		}
	}
	got := e.ipAddrs("br0")
	if !slices.Contains(got, p4.String()) || !slices.Contains(got, p6.String()) {
		t.Fatalf("ip addr after AddAddress: %v", got)
	}
	for range 2 {
		if err := e.m.RemoveAddress("br0", p4); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.ipAddrs("br0"); slices.Contains(got, p4.String()) || !slices.Contains(got, p6.String()) {
		t.Fatalf("ip addr after RemoveAddress(%s): %v", p4, got)
	}
}

func TestBadInput(t *testing.T) {
	e := newEnv(t)
	e.veth("veth0", "veth0-p")
	for _, tc := range []struct {
		cfg  bridge.Config
		want []string
	}{
		{bridge.Config{Name: "br-this-is-too-long"}, []string{`"br-this-is-too-long"`, "19 bytes", "at most 15"}},
		{bridge.Config{Name: ""}, []string{"empty"}},
		{bridge.Config{Name: "br/0"}, []string{`"br/0"`, "'/'"}},
		{bridge.Config{Name: "br 0"}, []string{`"br 0"`, "whitespace"}},
		{bridge.Config{Name: "br%d"}, []string{`"br%d"`}},
		{bridge.Config{Name: "veth0"}, []string{"veth0", "is a veth interface, not a bridge"}},
		{bridge.Config{Name: "br0", MTU: 70000}, []string{"br0", "MTU 70000", "68-65535"}},
		{bridge.Config{Name: "br0", MTU: 20}, []string{"br0", "MTU 20"}},
		{bridge.Config{Name: "br0", MTU: 1000, Addresses: []netip.Prefix{netip.MustParsePrefix("fd00::1/64")}}, []string{"IPv6", "at least 1280"}},
		{bridge.Config{Name: "br0", Addresses: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}}, []string{"10.0.0.0/24", "network address", "10.0.0.1/24"}},
		{bridge.Config{Name: "br0", Addresses: []netip.Prefix{netip.MustParsePrefix("10.0.0.255/24")}}, []string{"broadcast address"}},
		{bridge.Config{Name: "br0", Addresses: []netip.Prefix{netip.MustParsePrefix("224.0.0.1/24")}}, []string{"224.0.0.1/24", "cannot be assigned"}},
		{bridge.Config{Name: "br0", Addresses: []netip.Prefix{{}}}, []string{"not a valid prefix"}},
		{bridge.Config{Name: "br0", GroupFwdMask: 0xffff}, []string{"group_fwd_mask 0xffff", "0x0007", "LACP", "0xfff8"}},
		{bridge.Config{Name: "br0", DefaultPVID: 5000, VLANFiltering: true}, []string{"PVID 5000", "1-4094"}},
		{bridge.Config{Name: "br0", DefaultPVID: 5}, []string{"VLAN filtering"}},
	} {
		_, err := e.m.Ensure(tc.cfg)
		mustErr(t, err, tc.want...)
		if tc.cfg.Name == "br0" && e.exists("br0") {
			t.Fatalf("Ensure(%+v) failed but left br0 behind", tc.cfg)
		}
	}
	if err := e.m.Delete("veth0", "", true); err == nil || !strings.Contains(err.Error(), "not a bridge") || !e.exists("veth0") {
		t.Fatalf("forced Delete of a veth: %v (exists: %v); want a refusal", err, e.exists("veth0"))
	}

	// Ports.
	for _, c := range []bridge.Config{{Name: "br0"}, {Name: "br1"}} {
		if _, err := e.m.Ensure(c); err != nil {
			t.Fatal(err)
		}
	}
	mustErr(t, e.m.AddPort("br0", bridge.PortConfig{Name: "nosuch"}), "br0", "port nosuch", "no such interface", "create it first")
	mustErr(t, e.m.AddPort("nobr", bridge.PortConfig{Name: "veth0"}), "bridge nobr", "no such interface")
	mustErr(t, e.m.AddPort("br0", bridge.PortConfig{Name: "br1"}), "br1 is itself a bridge")
	// The bridge is checked before the port, and a port must be Ethernet.
	mustErr(t, e.m.AddPort("veth0", bridge.PortConfig{Name: "nosuch"}), "bridge veth0", "is a veth interface, not a bridge")
	mustErr(t, e.m.AddPort("br0", bridge.PortConfig{Name: "lo"}), "port lo is a loopback device, not Ethernet")
	mustErr(t, e.m.AddPort("br0", bridge.PortConfig{Name: "tap-name-too-long0"}), "at most 15")
	mustErr(t, e.m.AddPort("br0", bridge.PortConfig{Name: "veth0", GroupFwdMask: 0x0002}), "MAC PAUSE", "0xfffd")
	mustErr(t, e.m.AddPort("br0", bridge.PortConfig{Name: "veth0", PVID: 4095}), "PVID 4095", "1-4094")
	mustErr(t, e.m.AddPort("br0", bridge.PortConfig{Name: "veth0", PVID: 10, Tagged: []uint16{10}}), "VLAN 10", "both")
	if err := e.m.AddPort("br1", bridge.PortConfig{Name: "veth0"}); err != nil {
		t.Fatal(err)
	}
	mustErr(t, e.m.AddPort("br0", bridge.PortConfig{Name: "veth0"}), "port veth0 is already attached to br1", "detach it")
	mustErr(t, e.m.RemovePort("br0", "veth0"), "attached to", "not to br0")
	if m := e.link("veth0").Attrs().MasterIndex; m != e.link("br1").Attrs().Index {
		t.Fatalf("failed calls moved veth0 to master %d", m)
	}
}

func TestFailedEnsureLeavesNothing(t *testing.T) {
	e := newEnv(t)
	// New interfaces in this namespace get IPv6 disabled, so the kernel
	// refuses the address after the bridge has been created.
	testenv.Do(t, e.ns, func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/default/disable_ipv6", []byte("1"), 0)
	})
	_, err := e.m.Ensure(bridge.Config{Name: "br0", Addresses: []netip.Prefix{netip.MustParsePrefix("fd00::1/64")}})
	mustErr(t, err, "br0", "fd00::1/64", "IPv6 is disabled")
	if e.exists("br0") {
		t.Fatal("a failed Ensure left the bridge it created")
	}
}
