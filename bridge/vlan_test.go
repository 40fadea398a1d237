package bridge_test

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/vmnet/vmnet/bridge"
	"golang.org/x/sys/unix"
)

const vlanFeature = "CONFIG_BRIDGE_VLAN_FILTERING"

// vlanFilteringSupported asks the kernel through iproute2, independently
// of the package: `vlan_filtering 1` gives EOPNOTSUPP without the feature.
func vlanFilteringSupported(t *testing.T, e *env) bool {
	t.Helper()
	e.run("ip", "link", "add", "brprobe", "type", "bridge")
	defer e.run("ip", "link", "del", "brprobe")
	out, err := e.runErr("ip", "link", "set", "brprobe", "type", "bridge", "vlan_filtering", "1")
	switch {
	case err == nil:
		return true
	case strings.Contains(out, "Operation not supported"):
		return false
	}
	t.Fatalf("probing VLAN filtering: %v: %s", err, out)
	return false
}

// requireVLANFiltering skips, even under CI, on kernels without bridge
// VLAN filtering: the host kernel lacks it, and CI runs these tests again
// inside a guest whose kernel has it.
func requireVLANFiltering(t *testing.T, e *env) {
	t.Helper()
	if !vlanFilteringSupported(t, e) {
		t.Skipf("needs %s, which this kernel lacks (`ip link set BR type bridge vlan_filtering 1` gives EOPNOTSUPP); "+
			"run inside a guest whose kernel has it", vlanFeature)
	}
}

func TestVLANFilteringMissingIsNamed(t *testing.T) {
	e := newEnv(t)
	if vlanFilteringSupported(t, e) {
		t.Skipf("this kernel has %s; the test covers kernels without it", vlanFeature)
	}
	for _, cfg := range []bridge.Config{
		{Name: "br0", VLANFiltering: true},
		{Name: "br0", VLANFiltering: true, DefaultPVID: 10},
	} {
		_, err := e.m.Ensure(cfg)
		mustErr(t, err, "bridge br0: VLAN filtering: this kernel lacks CONFIG_BRIDGE_VLAN_FILTERING (EOPNOTSUPP)")
		if !errors.Is(err, bridge.ErrNoVLANFiltering) || !errors.Is(err, unix.EOPNOTSUPP) {
			t.Errorf("%v: does not match ErrNoVLANFiltering and EOPNOTSUPP", err)
		}
		if strings.Contains(err.Error(), "operation not supported") {
			t.Errorf("raw errno text in %q", err)
		}
		if e.exists("br0") {
			t.Fatal("failed Ensure left br0 behind")
		}
	}
	if _, err := e.m.Ensure(bridge.Config{Name: "br0"}); err != nil {
		t.Fatal(err)
	}
	info, err := e.m.Show("br0")
	if err != nil {
		t.Fatal(err)
	}
	if info.VLANFilteringSupported || info.DefaultPVID != nil || info.VLANFiltering {
		t.Errorf("Show on a kernel without VLAN filtering: supported=%v default_pvid=%v filtering=%v",
			info.VLANFilteringSupported, info.DefaultPVID, info.VLANFiltering)
	}
}

// Port VLANs on a bridge without filtering are refused before the port is
// touched: with the feature missing, or with filtering off.
func TestPortVLANsNeedFiltering(t *testing.T) {
	e := newEnv(t)
	supported := vlanFilteringSupported(t, e)
	if _, err := e.m.Ensure(bridge.Config{Name: "br0"}); err != nil {
		t.Fatal(err)
	}
	e.veth("p0", "hp0")
	for _, pc := range []bridge.PortConfig{{Name: "p0", PVID: 10}, {Name: "p0", Tagged: []uint16{10, 20}}} {
		err := e.m.AddPort("br0", pc)
		if supported {
			mustErr(t, err, "bridge br0: port p0 VLANs", "VLAN filtering off", "turn VLAN filtering on for the bridge")
		} else {
			mustErr(t, err, "bridge br0: port p0 VLANs", "this kernel lacks CONFIG_BRIDGE_VLAN_FILTERING (EOPNOTSUPP)")
		}
		if _, ok := e.ipLink("p0")["master"]; ok {
			t.Fatal("refused AddPort attached the port anyway")
		}
	}
}

// bridgeVLANs is `bridge -j vlan show`: port name -> VLANs.
func (e *env) bridgeVLANs() map[string][]bridge.VLAN {
	e.t.Helper()
	var v []struct {
		Ifname string `json:"ifname"`
		VLANs  []struct {
			VLAN    uint16   `json:"vlan"`
			VLANEnd uint16   `json:"vlanEnd"`
			Flags   []string `json:"flags"`
		} `json:"vlans"`
	}
	out := e.run("bridge", "-j", "vlan", "show")
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		e.t.Fatalf("bridge -j vlan show: %v: %s", err, out)
	}
	m := map[string][]bridge.VLAN{}
	for _, p := range v {
		for _, x := range p.VLANs {
			end := max(x.VLANEnd, x.VLAN)
			for id := x.VLAN; id <= end; id++ {
				m[p.Ifname] = append(m[p.Ifname], bridge.VLAN{ID: id, PVID: slices.Contains(x.Flags, "PVID"),
					Untagged: slices.Contains(x.Flags, "Egress Untagged")})
			}
		}
	}
	return m
}

func TestVLANs(t *testing.T) {
	requireVLANFiltering(t, newEnv(t))
	cfg := bridge.Config{Name: "br0", VLANFiltering: true, DefaultPVID: 1}
	e, s := scene(t, cfg,
		bridge.PortConfig{Name: "a0", PVID: 10},
		bridge.PortConfig{Name: "a1", PVID: 10},
		bridge.PortConfig{Name: "b0", PVID: 20},
		bridge.PortConfig{Name: "tr", Tagged: []uint16{10, 20}}) // native VLAN: the default PVID 1
	a0, a1, b0, tr := s[0], s[1], s[2], s[3]

	access := func(id uint16) []bridge.VLAN { return []bridge.VLAN{{ID: id, PVID: true, Untagged: true}} }
	want := map[string][]bridge.VLAN{
		"a0": access(10), "a1": access(10), "b0": access(20),
		"tr": {{ID: 1, PVID: true, Untagged: true}, {ID: 10}, {ID: 20}},
	}
	got := e.bridgeVLANs()
	for port, w := range want {
		if !slices.Equal(got[port], w) {
			t.Errorf("bridge vlan show %s = %+v, want %+v", port, got[port], w)
		}
	}
	info, err := e.m.Show("br0")
	if err != nil {
		t.Fatal(err)
	}
	if !info.VLANFiltering || !info.VLANFilteringSupported || info.DefaultPVID == nil || *info.DefaultPVID != 1 {
		t.Errorf("Show: filtering=%v supported=%v default_pvid=%v", info.VLANFiltering, info.VLANFilteringSupported, info.DefaultPVID)
	}
	for _, p := range info.Ports {
		if !slices.Equal(p.VLANs, want[p.Name]) {
			t.Errorf("Show port %s VLANs %+v, want %+v", p.Name, p.VLANs, want[p.Name])
		}
	}

	// Untagged from access port a0 (VLAN 10): a1 untagged, trunk tagged 10, not b0.
	f, tag := a0.frame(broadcast, testEtherType, 0)
	a0.send(f)
	if r, ok := a1.recv(tag, arrives); !ok || r.vlan != 0 {
		t.Errorf("a0 -> a1 (VLAN 10): arrived=%v vlan=%d, want untagged", ok, r.vlan)
	}
	if r, ok := tr.recv(tag, arrives); !ok || r.vlan != 10 {
		t.Errorf("a0 -> trunk: arrived=%v vlan=%d, want tagged 10", ok, r.vlan)
	}
	if _, ok := b0.recv(tag, silence); ok {
		t.Error("a0 (VLAN 10) reached b0 (VLAN 20)")
	}
	// Tagged 20 from the trunk reaches b0 untagged and nothing in VLAN 10.
	f, tag = tr.frame(broadcast, testEtherType, 20)
	tr.send(f)
	if r, ok := b0.recv(tag, arrives); !ok || r.vlan != 0 {
		t.Errorf("trunk VLAN 20 -> b0: arrived=%v vlan=%d, want untagged", ok, r.vlan)
	}
	if _, ok := a0.recv(tag, silence); ok {
		t.Error("trunk VLAN 20 reached a0 (VLAN 10)")
	}
	// A VLAN the trunk does not carry is dropped at ingress.
	f, tag = tr.frame(broadcast, testEtherType, 30)
	tr.send(f)
	if _, ok := b0.recv(tag, silence); ok {
		t.Error("trunk VLAN 30, which it does not carry, reached b0")
	}

	// Moving an access port replaces its VLAN.
	if err := e.m.AddPort("br0", bridge.PortConfig{Name: "a0", PVID: 20}); err != nil {
		t.Fatal(err)
	}
	if got := e.bridgeVLANs()["a0"]; !slices.Equal(got, access(20)) {
		t.Errorf("after moving a0 to VLAN 20: %+v", got)
	}

	// The owner's bridge turns filtering off again when its config does.
	if _, err := e.m.Ensure(bridge.Config{Name: "br0"}); err != nil {
		t.Fatal(err)
	}
	if d := infoData(e.ipLink("br0"), "info_data"); d["vlan_filtering"] != 0.0 {
		t.Errorf("vlan_filtering %v after Ensure without it, want 0", d["vlan_filtering"])
	}
}

// TestVLANReuseRestored: on a reused bridge, Ensure turns VLAN filtering
// on with another default PVID (the kernel takes a new default_pvid only
// while filtering is off, so the order matters both ways), and Restore
// turns both back.
func TestVLANReuseRestored(t *testing.T) {
	e := newEnv(t)
	requireVLANFiltering(t, e)
	e.run("ip", "link", "add", "brhost", "type", "bridge", "vlan_filtering", "0", "vlan_default_pvid", "1")
	// A port of the host's: the kernel moves ports on the default PVID
	// with it, so restoring the default PVID restores the port too.
	e.veth("hp0", "hp0-p")
	e.run("ip", "link", "set", "hp0", "master", "brhost")
	pvid1 := []bridge.VLAN{{ID: 1, PVID: true, Untagged: true}}
	if got := e.bridgeVLANs()["hp0"]; !slices.Equal(got, pvid1) {
		t.Fatalf("hp0 before: %v", got)
	}
	var u bridge.Undo
	if _, err := e.m.Ensure(bridge.Config{Name: "brhost", Reuse: true, VLANFiltering: true, DefaultPVID: 10,
		BeforeChange: func(x bridge.Undo) error { u = x; return nil }}); err != nil {
		t.Fatal(err)
	}
	d := infoData(e.ipLink("brhost"), "info_data")
	if d["vlan_filtering"] != 1.0 || d["vlan_default_pvid"] != 10.0 {
		t.Fatalf("after Ensure: vlan_filtering %v default_pvid %v, want 1 and 10", d["vlan_filtering"], d["vlan_default_pvid"])
	}
	if got := e.bridgeVLANs()["hp0"]; !slices.Equal(got, []bridge.VLAN{{ID: 10, PVID: true, Untagged: true}}) {
		t.Errorf("hp0 with default PVID 10: %v", got)
	}
	if err := e.m.Restore(u); err != nil {
		t.Fatal(err)
	}
	if got := e.bridgeVLANs()["hp0"]; !slices.Equal(got, pvid1) {
		t.Errorf("hp0 after Restore: %v, want %v", got, pvid1)
	}
	d = infoData(e.ipLink("brhost"), "info_data")
	if d["vlan_filtering"] != 0.0 || d["vlan_default_pvid"] != 1.0 {
		t.Errorf("after Restore: vlan_filtering %v default_pvid %v, want 0 and 1", d["vlan_filtering"], d["vlan_default_pvid"])
	}
	// A bridge that filters already gets its new default PVID too (off,
	// change, on again), and gets the old one back.
	e.run("ip", "link", "add", "brhost2", "type", "bridge", "vlan_filtering", "1", "vlan_default_pvid", "10")
	if _, err := e.m.Ensure(bridge.Config{Name: "brhost2", Reuse: true, VLANFiltering: true, DefaultPVID: 20,
		BeforeChange: func(x bridge.Undo) error { u = x; return nil }}); err != nil {
		t.Fatal(err)
	}
	if d := infoData(e.ipLink("brhost2"), "info_data"); d["vlan_filtering"] != 1.0 || d["vlan_default_pvid"] != 20.0 {
		t.Fatalf("brhost2 after Ensure: vlan_filtering %v default_pvid %v, want 1 and 20", d["vlan_filtering"], d["vlan_default_pvid"])
	}
	if err := e.m.Restore(u); err != nil {
		t.Fatal(err)
	}
	if d := infoData(e.ipLink("brhost2"), "info_data"); d["vlan_filtering"] != 1.0 || d["vlan_default_pvid"] != 10.0 {
		t.Errorf("brhost2 after Restore: vlan_filtering %v default_pvid %v, want 1 and 10", d["vlan_filtering"], d["vlan_default_pvid"])
	}
}
