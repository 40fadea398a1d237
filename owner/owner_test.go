package owner_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/owner"
	"golang.org/x/sys/unix"
)

func TestTags(t *testing.T) {
	for alias, want := range map[string]string{"vmnet:lab:lab1": "vmnet:lab:lab1", "vmnet:adhoc": owner.AdHoc,
		"vmnet:lab:vmnet": "vmnet:lab:vmnet", "vmnet:lab:adhoc": "vmnet:lab:adhoc"} {
		l := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Alias: alias}}
		if got, ok := owner.Of(l); !ok || got != want {
			t.Errorf("Of(alias %q) = %q, %v; want %q, true", alias, got, ok, want)
		}
	}
	// Foreign: no tag, someone else's text, an older vmnet's "vmnet:NAME",
	// and lab tags whose name breaks the grammar.
	for _, alias := range []string{"", "uplink to core", "VMNET:adhoc", " vmnet:adhoc", "vmnet:", "vmnet:lab1",
		"vmnet:vmnet", "vmnet:lab:", "vmnet:lab:..", "vmnet:lab:a/b", "vmnet:lab:a:b", "vmnet:adhoc:x"} {
		if got, ok := owner.Of(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Alias: alias}}); ok {
			t.Errorf("Of(alias %q) = %q, true; want not owned", alias, got)
		}
	}
	if owner.Lab("lab1") != "vmnet:lab:lab1" || owner.AdHoc != "vmnet:adhoc" {
		t.Errorf("Lab(lab1) = %q, AdHoc = %q", owner.Lab("lab1"), owner.AdHoc)
	}
	// Scenario 2: a lab named like the ad-hoc tag, or like vmnet itself,
	// gets a tag of its own.
	for _, name := range []string{"vmnet", "adhoc", "vmnet-adhoc"} {
		if owner.Lab(name) == owner.AdHoc {
			t.Errorf("lab %q has the ad-hoc tag", name)
		}
		if got, ok := owner.LabName(owner.Lab(name)); !ok || got != name {
			t.Errorf("LabName(Lab(%q)) = %q, %v", name, got, ok)
		}
	}
	if _, ok := owner.LabName(owner.AdHoc); ok {
		t.Error("the ad-hoc tag names a lab")
	}
	for _, bad := range []string{"", "lab1", "vmnet:lab1", "vmnet:lab:", "vmnet:lab:.."} {
		if err := owner.Valid(bad); !errors.Is(err, owner.ErrBadOwner) {
			t.Errorf("Valid(%q) = %v, want ErrBadOwner", bad, err)
		}
	}
}

func TestSetCheckList(t *testing.T) {
	ns := testenv.NetNS(t)
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE) // only ROUTE: xfrm_user may be missing (guest kernels)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	add := func(name string) netlink.Link {
		a := netlink.NewLinkAttrs()
		a.Name = name
		if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: a}); err != nil {
			t.Fatal(err)
		}
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	a, b, c, untagged, adhoc, old := add("a"), add("b"), add("c"), add("untagged"), add("adhoc"), add("old")
	if err := h.LinkSetAlias(old, "vmnet:lab1"); err != nil { // an older vmnet's tag
		t.Fatal(err)
	}
	for l, o := range map[netlink.Link]string{a: owner.Lab("lab1"), b: owner.Lab("lab1"), c: owner.Lab("lab2"), adhoc: owner.AdHoc} {
		if err := owner.Set(h, l, o); err != nil {
			t.Fatal(err)
		}
	}
	// What the kernel stores, read back independently of Set.
	for name, want := range map[string]string{"a": "vmnet:lab:lab1", "c": "vmnet:lab:lab2", "adhoc": "vmnet:adhoc", "untagged": ""} {
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if l.Attrs().Alias != want {
			t.Errorf("%s: alias %q, want %q", name, l.Attrs().Alias, want)
		}
	}
	names := func(o string) []string {
		links, err := owner.List(h, o)
		if err != nil {
			t.Fatal(err)
		}
		var n []string
		for _, l := range links {
			n = append(n, l.Attrs().Name)
		}
		slices.Sort(n)
		return n
	}
	if got := names(owner.Lab("lab1")); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("List(lab1) = %v", got)
	}
	if got := names(owner.AdHoc); !slices.Equal(got, []string{"adhoc"}) {
		t.Errorf("List(AdHoc) = %v", got)
	}
	if got := names(owner.Lab("nobody")); len(got) != 0 {
		t.Errorf("List(nobody) = %v", got)
	}
	// Nothing matches an empty or malformed owner (scenario 1: down "").
	for _, bad := range []string{"", "lab1", "vmnet:", "vmnet:lab:"} {
		if got, err := owner.List(h, bad); !errors.Is(err, owner.ErrBadOwner) || len(got) != 0 {
			t.Errorf("List(%q) = %v, %v; want ErrBadOwner", bad, got, err)
		}
	}
	all, err := owner.ListAll(h)
	if err != nil {
		t.Fatal(err)
	}
	var allNames []string
	for _, l := range all {
		allNames = append(allNames, l.Attrs().Name)
	}
	slices.Sort(allNames)
	if !slices.Equal(allNames, []string{"a", "adhoc", "b", "c"}) {
		t.Errorf("ListAll = %v (the old-format and untagged links are foreign)", allNames)
	}

	a, _ = h.LinkByName("a")
	c, _ = h.LinkByName("c")
	old, _ = h.LinkByName("old")
	if err := owner.Check(old, owner.Lab("lab1")); !errors.Is(err, owner.ErrNotOwned) || !strings.Contains(err.Error(), "older vmnet") {
		t.Errorf("Check(old-format tag) = %v", err)
	}
	if err := owner.Check(a, owner.Lab("lab1")); err != nil {
		t.Errorf("Check(a, lab1) = %v", err)
	}
	for _, tc := range []struct {
		l    netlink.Link
		want string
	}{
		{c, `c: not created by vmnet for this owner (owned by "vmnet:lab:lab2", not "vmnet:lab:lab1"; use --force`},
		{untagged, "untagged: not created by vmnet for this owner (no vmnet tag; use --force"},
	} {
		err := owner.Check(tc.l, owner.Lab("lab1"))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, owner.ErrNotOwned) {
			t.Errorf("Check(%s, lab1) = %v, want %q wrapping ErrNotOwned", tc.l.Attrs().Name, err, tc.want)
		}
	}
	gone := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "gone", Index: 9999}}
	if err := owner.Set(h, gone, owner.Lab("lab1")); err == nil || !strings.Contains(err.Error(), `gone: tag owner "vmnet:lab:lab1"`) {
		t.Errorf("Set on a missing link = %v", err)
	}
	if err := owner.Set(h, a, ""); !errors.Is(err, owner.ErrBadOwner) {
		t.Errorf("Set with an empty owner = %v", err)
	}
}

// TestAdd: Add creates a device tagged as its owner's; a bad owner
// creates nothing; a name in use is the kernel's EEXIST, and the device
// that holds it is untouched.
func TestAdd(t *testing.T) {
	ns := testenv.NetNS(t)
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	br := func(name string) *netlink.Bridge { return &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}} }
	l, err := owner.Add(h, br("made"), owner.AdHoc)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := h.LinkByName("made"); err != nil || got.Attrs().Alias != owner.AdHoc || l.Attrs().Alias != owner.AdHoc || l.Attrs().Index != got.Attrs().Index {
		t.Errorf("Add: %+v, kernel has %v %v; want it tagged %q", l.Attrs(), got, err, owner.AdHoc)
	}
	if _, err := owner.Add(h, br("bad"), "vmnet:nope"); !errors.Is(err, owner.ErrBadOwner) {
		t.Errorf("Add with a bad owner: %v, want ErrBadOwner", err)
	}
	if _, err := h.LinkByName("bad"); err == nil {
		t.Error("Add with a bad owner created the device")
	}
	if _, err := owner.Add(h, br("made"), owner.Lab("x")); !errors.Is(err, unix.EEXIST) || !strings.Contains(err.Error(), "made") {
		t.Errorf("Add over an existing name: %v, want EEXIST naming it", err)
	}
	if got, err := h.LinkByName("made"); err != nil || got.Attrs().Alias != owner.AdHoc {
		t.Errorf("the existing device changed: %v %v", got, err)
	}
}
