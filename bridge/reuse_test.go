package bridge_test

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/vmnet/vmnet/bridge"
	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/owner"
)

// TestEnsureRefusesBridgesOfOthers: a bridge that exists and is not the
// owner's (no tag, or another owner's tag) is refused unless the caller
// asks to reuse it, and the refusal changes nothing on it.
func TestEnsureRefusesBridgesOfOthers(t *testing.T) {
	e := newEnv(t)
	e.run("ip", "link", "add", "brhost", "mtu", "9000", "type", "bridge")
	if _, err := e.m.Ensure(bridge.Config{Name: "a-b-c", Owner: owner.Lab("a-b")}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		want []string
	}{
		{"brhost", []string{"bridge brhost exists", "not vmnet's", "no vmnet owner tag"}},
		{"a-b-c", []string{"bridge a-b-c exists", "another owner", `"` + owner.Lab("a-b") + `"`}},
	} {
		_, err := e.m.Ensure(bridge.Config{Name: c.name, Owner: owner.Lab("a"), MTU: 1500, STP: true,
			Addresses: []netip.Prefix{netip.MustParsePrefix("10.9.0.1/24")}})
		mustErr(t, err, c.want...)
		var iu *bridge.InUseError
		if !errors.As(err, &iu) || iu.Name != c.name || !errors.Is(err, owner.ErrNotOwned) {
			t.Errorf("Ensure(%s): %v is not an InUseError naming it", c.name, err)
		}
	}
	if l := e.ipLink("brhost"); l["mtu"] != 9000.0 || infoData(l, "info_data")["stp_state"] != 0.0 {
		t.Errorf("refused Ensure changed brhost: mtu %v stp %v", l["mtu"], infoData(l, "info_data")["stp_state"])
	}
	if l := e.ipLink("a-b-c"); l["mtu"] != 1500.0 || infoData(l, "info_data")["stp_state"] != 0.0 || l["ifalias"] != owner.Lab("a-b") {
		t.Errorf("refused Ensure changed a-b-c: %v", l)
	}
	if got := e.ipAddrs("brhost"); len(got) != 0 {
		t.Errorf("refused Ensure added addresses to brhost: %v", got)
	}
	// The owner's own bridge is its to configure; Reuse opens the others.
	if _, err := e.m.Ensure(bridge.Config{Name: "a-b-c", Owner: owner.Lab("a-b"), STP: true}); err != nil {
		t.Errorf("owner's own bridge: %v", err)
	}
	if _, err := e.m.Ensure(bridge.Config{Name: "brhost", Owner: owner.Lab("a"), Reuse: true}); err != nil {
		t.Errorf("reuse on purpose: %v", err)
	}
}

// TestRestoreUndoesReuse: Ensure records what it changes on a reused
// bridge before changing it; the record survives JSON (a state file) and
// another Manager (another process) restores the bridge from it.
func TestRestoreUndoesReuse(t *testing.T) {
	e := newEnv(t)
	e.run("ip", "link", "add", "brhost", "mtu", "9000", "type", "bridge", "stp_state", "0", "mcast_snooping", "1")
	e.run("ip", "addr", "add", "10.9.0.5/24", "dev", "brhost")
	e.veth("vhost0", "vhost0-p")
	e.run("ip", "link", "set", "vhost0", "mtu", "9000")
	e.run("ip", "link", "set", "vhost0", "master", "brhost")
	before := e.ipLink("brhost")

	var saved []byte
	cfg := bridge.Config{Name: "brhost", Owner: owner.Lab("lab1"), Reuse: true, MTU: 1500, STP: true,
		GroupFwdMask: bridge.TransparentMask, MulticastSnooping: ptr(false),
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.9.0.1/24"), netip.MustParsePrefix("10.9.0.5/24"),
			netip.MustParsePrefix("fd09::1/64")},
		BeforeChange: func(u bridge.Undo) error {
			// Called before the first change: the bridge is as it was.
			if l := e.ipLink("brhost"); l["mtu"] != 9000.0 || slices.Contains(l["flags"].([]any), "UP") {
				t.Errorf("BeforeChange called after a change: %v", l)
			}
			var err error
			saved, err = json.Marshal(u)
			return err
		}}
	if created, err := e.m.Ensure(cfg); err != nil || created {
		t.Fatalf("Ensure reusing brhost: created=%v err=%v", created, err)
	}
	var u bridge.Undo
	if err := json.Unmarshal(saved, &u); err != nil {
		t.Fatalf("record %s: %v", saved, err)
	}
	want := bridge.Undo{Bridge: "brhost", Index: e.link("brhost").Attrs().Index, BroughtUp: true,
		MTU: &bridge.Change{From: 9000, To: 1500}, STP: &bridge.Change{From: 0, To: 1},
		GroupFwdMask:      &bridge.Change{From: 0, To: int(bridge.TransparentMask)},
		MulticastSnooping: &bridge.Change{From: 1, To: 0},
		Addresses:         []netip.Prefix{netip.MustParsePrefix("10.9.0.1/24"), netip.MustParsePrefix("fd09::1/64")}}
	if got, _ := json.Marshal(u); string(got) != string(must(json.Marshal(want))) {
		t.Errorf("record\n %s\nwant\n %s", got, must(json.Marshal(want)))
	}
	l := e.ipLink("brhost")
	d := infoData(l, "info_data")
	if l["mtu"] != 1500.0 || d["stp_state"] != 1.0 || d["mcast_snooping"] != 0.0 || !slices.Contains(e.ipAddrs("brhost"), "10.9.0.1/24") {
		t.Fatalf("Ensure did not apply the config: %v", l)
	}
	if _, tagged := l["ifalias"]; tagged {
		t.Errorf("reused bridge was tagged: %v", l["ifalias"])
	}

	m2, err := bridge.New(e.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	for range 2 { // twice: the second finds nothing left to do
		if err := m2.Restore(u); err != nil {
			t.Fatalf("Restore: %v", err)
		}
	}
	after := e.ipLink("brhost")
	for _, k := range []string{"mtu", "flags", "ifalias"} {
		if !jsonEqual(before[k], after[k]) {
			t.Errorf("after Restore %s = %v, was %v", k, after[k], before[k])
		}
	}
	db, da := infoData(before, "info_data"), infoData(after, "info_data")
	for _, k := range []string{"stp_state", "group_fwd_mask", "mcast_snooping", "vlan_filtering"} {
		if !jsonEqual(db[k], da[k]) {
			t.Errorf("after Restore %s = %v, was %v", k, da[k], db[k])
		}
	}
	if got := e.ipAddrs("brhost"); !slices.Equal(got, []string{"10.9.0.5/24"}) {
		t.Errorf("addresses after Restore: %v, want only the bridge's own 10.9.0.5/24", got)
	}
	if e.ipLink("vhost0")["master"] != "brhost" {
		t.Error("the bridge's own port was detached")
	}
}

// TestRestoreKeepsLaterChanges: a setting someone changed after Ensure is
// theirs; a bridge deleted and made again is not the one Ensure changed.
func TestRestoreKeepsLaterChanges(t *testing.T) {
	e := newEnv(t)
	e.run("ip", "link", "add", "brhost", "mtu", "9000", "type", "bridge")
	var u bridge.Undo
	if _, err := e.m.Ensure(bridge.Config{Name: "brhost", Reuse: true, MTU: 1500, STP: true,
		BeforeChange: func(x bridge.Undo) error { u = x; return nil }}); err != nil {
		t.Fatal(err)
	}
	e.run("ip", "link", "set", "brhost", "mtu", "7000")
	if err := e.m.Restore(u); err != nil {
		t.Fatal(err)
	}
	l := e.ipLink("brhost")
	if l["mtu"] != 7000.0 || infoData(l, "info_data")["stp_state"] != 0.0 {
		t.Errorf("after Restore: mtu %v (want 7000, set by someone else), stp %v (want 0)", l["mtu"], infoData(l, "info_data")["stp_state"])
	}

	e.run("ip", "link", "del", "brhost")
	e.run("ip", "link", "add", "brhost", "mtu", "1500", "type", "bridge", "stp_state", "1")
	if err := e.m.Restore(u); err != nil {
		t.Fatal(err)
	}
	if l := e.ipLink("brhost"); l["mtu"] != 1500.0 || infoData(l, "info_data")["stp_state"] != 1.0 {
		t.Errorf("Restore changed a new bridge of the same name: %v", l)
	}
	e.run("ip", "link", "del", "brhost")
	if err := e.m.Restore(u); err != nil {
		t.Errorf("Restore of a bridge that is gone: %v", err)
	}
}

// TestFailedReuseRestores: when Ensure fails half way on a reused bridge,
// what it changed already is put back.
func TestFailedReuseRestores(t *testing.T) {
	e := newEnv(t)
	e.run("ip", "link", "add", "brhost", "mtu", "9000", "type", "bridge")
	testenv.Do(t, e.ns, func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/brhost/disable_ipv6", []byte("1"), 0)
	})
	called := false
	_, err := e.m.Ensure(bridge.Config{Name: "brhost", Reuse: true, MTU: 1500, STP: true,
		Addresses:    []netip.Prefix{netip.MustParsePrefix("10.9.0.1/24"), netip.MustParsePrefix("fd09::1/64")},
		BeforeChange: func(bridge.Undo) error { called = true; return nil }})
	mustErr(t, err, "brhost", "fd09::1/64", "IPv6 is disabled")
	l := e.ipLink("brhost")
	if !called || l["mtu"] != 9000.0 || infoData(l, "info_data")["stp_state"] != 0.0 || slices.Contains(l["flags"].([]any), "UP") {
		t.Errorf("failed Ensure left brhost changed (record taken: %v): %v", called, l)
	}
	if got := e.ipAddrs("brhost"); len(got) != 0 {
		t.Errorf("failed Ensure left addresses: %v", got)
	}
	// A refused record changes nothing at all.
	_, err = e.m.Ensure(bridge.Config{Name: "brhost", Reuse: true, MTU: 1500,
		BeforeChange: func(bridge.Undo) error { return errors.New("disk full") }})
	mustErr(t, err, "brhost", "disk full")
	if l := e.ipLink("brhost"); l["mtu"] != 9000.0 {
		t.Errorf("Ensure changed brhost although its record could not be kept: mtu %v", l["mtu"])
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}
