// Package owner marks the network interfaces vmnet creates with the name of
// their owner (a lab, or "vmnet" for ad-hoc devices) in IFLA_IFALIAS, so
// that vmnet can find what it holds and never deletes what it did not make.
package owner

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vmnet/vmnet/internal/nlretry"
)

const prefix = "vmnet:"

// Default is the owner of interfaces created outside any lab.
const Default = "vmnet"

// ErrNotOwned is returned when an interface is not tagged with the owner
// that wants to delete it.
var ErrNotOwned = errors.New("not created by vmnet for this owner")

// Alias is the IFLA_IFALIAS value that marks an interface as owner's.
func Alias(owner string) string { return prefix + owner }

// Of returns the owner recorded on link, if vmnet created it.
func Of(link netlink.Link) (string, bool) {
	a := link.Attrs().Alias
	if !strings.HasPrefix(a, prefix) {
		return "", false
	}
	return strings.TrimPrefix(a, prefix), true
}

// Set tags link as owner's.
func Set(h *netlink.Handle, link netlink.Link, owner string) error {
	if err := h.LinkSetAlias(link, Alias(owner)); err != nil {
		return fmt.Errorf("%s: tag owner %q: %w", link.Attrs().Name, owner, err)
	}
	return nil
}

// Check returns nil if link belongs to owner, or an error naming the real
// owner and how to override.
func Check(link netlink.Link, owner string) error {
	got, ok := Of(link)
	name := link.Attrs().Name
	switch {
	case !ok:
		return fmt.Errorf("%s: %w (no vmnet tag; use --force to delete it anyway)", name, ErrNotOwned)
	case got != owner:
		return fmt.Errorf("%s: %w (owned by %q, not %q; use --force to delete it anyway)", name, ErrNotOwned, got, owner)
	}
	return nil
}

// List returns the links tagged as owner's; an empty owner lists every
// link vmnet created.
func List(h *netlink.Handle, owner string) ([]netlink.Link, error) {
	links, err := nlretry.Do(h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []netlink.Link
	for _, l := range links {
		if got, ok := Of(l); ok && (owner == "" || got == owner) {
			out = append(out, l)
		}
	}
	return out, nil
}
