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

func TestAliasOf(t *testing.T) {
	for alias, want := range map[string]string{"vmnet:lab1": "lab1", "vmnet:": "", "vmnet:a:b": "a:b"} {
		l := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Alias: alias}}
		if got, ok := owner.Of(l); !ok || got != want {
			t.Errorf("Of(alias %q) = %q, %v; want %q, true", alias, got, ok, want)
		}
	}
	for _, alias := range []string{"", "uplink to core", "VMNET:lab1", " vmnet:lab1"} {
		if got, ok := owner.Of(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Alias: alias}}); ok {
			t.Errorf("Of(alias %q) = %q, true; want not owned", alias, got)
		}
	}
	if owner.Alias("lab1") != "vmnet:lab1" {
		t.Errorf("Alias(lab1) = %q", owner.Alias("lab1"))
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
	a, b, c, untagged := add("a"), add("b"), add("c"), add("untagged")
	for l, o := range map[netlink.Link]string{a: "lab1", b: "lab1", c: "lab2"} {
		if err := owner.Set(h, l, o); err != nil {
			t.Fatal(err)
		}
	}
	// What the kernel stores, read back independently of Set.
	for name, want := range map[string]string{"a": "vmnet:lab1", "c": "vmnet:lab2", "untagged": ""} {
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
	if got := names("lab1"); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("List(lab1) = %v", got)
	}
	if got := names(""); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("List(\"\") = %v", got)
	}
	if got := names("nobody"); len(got) != 0 {
		t.Errorf("List(nobody) = %v", got)
	}

	a, _ = h.LinkByName("a")
	c, _ = h.LinkByName("c")
	if err := owner.Check(a, "lab1"); err != nil {
		t.Errorf("Check(a, lab1) = %v", err)
	}
	for _, tc := range []struct {
		l    netlink.Link
		want string
	}{
		{c, `c: not created by vmnet for this owner (owned by "lab2", not "lab1"; use --force`},
		{untagged, "untagged: not created by vmnet for this owner (no vmnet tag; use --force"},
	} {
		err := owner.Check(tc.l, "lab1")
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, owner.ErrNotOwned) {
			t.Errorf("Check(%s, lab1) = %v, want %q wrapping ErrNotOwned", tc.l.Attrs().Name, err, tc.want)
		}
	}
	gone := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "gone", Index: 9999}}
	if err := owner.Set(h, gone, "lab1"); err == nil || !strings.Contains(err.Error(), `gone: tag owner "lab1"`) {
		t.Errorf("Set on a missing link = %v", err)
	}
}
