// Package owner marks the network interfaces vmnet creates with their
// owner in IFLA_IFALIAS, so that vmnet can find what it holds and never
// deletes what it did not make.
//
// An owner is the whole tag: AdHoc ("vmnet:adhoc") for devices made by
// `vmnet tap create` and `vmnet bridge create`, Lab(name)
// ("vmnet:lab:NAME") for a lab's devices. Lab names cannot contain ':'
// (package names), so no lab tag ever equals the ad-hoc tag or another
// lab's. Aliases of an older vmnet ("vmnet:NAME") and anything else are
// foreign: vmnet lists and deletes them only when told to (--force).
package owner

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vmnet/vmnet/internal/nlretry"
	"github.com/vmnet/vmnet/names"
)

const (
	// AdHoc owns the interfaces vmnet creates outside any lab.
	AdHoc     = "vmnet:adhoc"
	labPrefix = "vmnet:lab:"
)

// ErrNotOwned is returned when an interface is not tagged with the owner
// that wants to delete it.
var ErrNotOwned = errors.New("not created by vmnet for this owner")

// ErrBadOwner is returned for an owner that is neither AdHoc nor the tag
// of a validly named lab; nothing matches it.
var ErrBadOwner = errors.New("not a vmnet owner tag")

// Lab is the owner of the interfaces of the lab name. The name must pass
// names.Lab; Valid reports a tag built from one that does not.
func Lab(name string) string { return labPrefix + name }

// LabName returns the lab an owner tag belongs to.
func LabName(owner string) (string, bool) {
	name, ok := strings.CutPrefix(owner, labPrefix)
	return name, ok && names.Lab(name) == nil
}

// Valid returns nil if owner is AdHoc or Lab(name) of a valid lab name.
func Valid(owner string) error {
	if owner == AdHoc {
		return nil
	}
	name, ok := strings.CutPrefix(owner, labPrefix)
	if !ok {
		return fmt.Errorf("owner %q: %w: want %q or %q", owner, ErrBadOwner, AdHoc, labPrefix+"LAB")
	}
	if err := names.Lab(name); err != nil {
		return fmt.Errorf("owner %q: %w: %w", owner, ErrBadOwner, err)
	}
	return nil
}

// Of returns the owner recorded on link, if vmnet created it.
func Of(link netlink.Link) (string, bool) {
	a := link.Attrs().Alias
	return a, Valid(a) == nil
}

// Set tags link as owner's.
func Set(h *netlink.Handle, link netlink.Link, owner string) error {
	if err := Valid(owner); err != nil {
		return fmt.Errorf("%s: tag: %w", link.Attrs().Name, err)
	}
	if err := h.LinkSetAlias(link, owner); err != nil {
		return fmt.Errorf("%s: tag owner %q: %w", link.Attrs().Name, owner, err)
	}
	return nil
}

// Add creates link (as netlink.Handle.LinkAdd does) and tags it as
// own's, and returns the device as the kernel reports it. If tagging
// fails it deletes the device again: untagged, nothing of vmnet's would
// ever remove it. The error of the add itself is wrapped with the
// device's name only, so that callers can test for EEXIST and explain.
func Add(h *netlink.Handle, link netlink.Link, own string) (netlink.Link, error) {
	name := link.Attrs().Name
	if err := Valid(own); err != nil {
		return nil, fmt.Errorf("%s: tag: %w", name, err)
	}
	if err := h.LinkAdd(link); err != nil {
		return nil, fmt.Errorf("%s: create: %w", name, err)
	}
	made, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("%s: look up after creating it: %w", name, err)
	}
	if err := Set(h, made, own); err != nil {
		_ = h.LinkDel(made)
		return nil, err
	}
	made.Attrs().Alias = own
	return made, nil
}

// Check returns nil if link belongs to owner, or an error naming the real
// owner and how to override.
func Check(link netlink.Link, owner string) error {
	if err := Valid(owner); err != nil {
		return err
	}
	got, ok := Of(link)
	name := link.Attrs().Name
	switch {
	case !ok && strings.HasPrefix(got, "vmnet:"):
		return fmt.Errorf("%s: %w (tagged %q by an older vmnet, which vmnet now treats as foreign; use --force to delete it anyway)", name, ErrNotOwned, got)
	case !ok:
		return fmt.Errorf("%s: %w (no vmnet tag; use --force to delete it anyway)", name, ErrNotOwned)
	case got != owner:
		return fmt.Errorf("%s: %w (owned by %q, not %q; use --force to delete it anyway)", name, ErrNotOwned, got, owner)
	}
	return nil
}

// List returns the links tagged as owner's. An owner that is not valid
// (the empty string included) is an error: it never matches everything.
func List(h *netlink.Handle, owner string) ([]netlink.Link, error) {
	if err := Valid(owner); err != nil {
		return nil, err
	}
	return list(h, func(got string) bool { return got == owner })
}

// ListAll returns every link vmnet created, whoever owns it, for listings
// such as `vmnet tap list --vmnet`. Never delete from it.
func ListAll(h *netlink.Handle) ([]netlink.Link, error) {
	return list(h, func(string) bool { return true })
}

func list(h *netlink.Handle, match func(string) bool) ([]netlink.Link, error) {
	links, err := nlretry.Do(h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []netlink.Link
	for _, l := range links {
		if got, ok := Of(l); ok && match(got) {
			out = append(out, l)
		}
	}
	return out, nil
}
