package bridge

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vmnet/vmnet/owner"
	"golang.org/x/sys/unix"
)

// InUseError is Ensure's refusal of a bridge that exists and is not the
// owner's, when the caller did not ask to reuse it (Config.Reuse). It
// names the bridge and its tag; callers add what the user should do.
type InUseError struct {
	Name   string
	Alias  string // the interface alias as found ("" if none)
	Tagged bool   // the alias is a vmnet owner tag (another owner's)
}

func (e *InUseError) Error() string {
	if e.Tagged {
		return fmt.Sprintf("bridge %s exists and belongs to another owner (owner tag %q)", e.Name, e.Alias)
	}
	return fmt.Sprintf("bridge %s exists and is not vmnet's (it has no vmnet owner tag)", e.Name)
}

// Unwrap makes errors.Is(err, owner.ErrNotOwned) true.
func (e *InUseError) Unwrap() error { return owner.ErrNotOwned }

// Change is one setting Ensure changed: its value before and after.
// Booleans are 0 and 1.
type Change struct {
	From int `json:"from"`
	To   int `json:"to"`
}

// Undo records what Ensure changed on a bridge it reused, so that Restore
// can put it back, from this process or from another one after a crash.
// It is plain data, meant for the caller's state file.
type Undo struct {
	Bridge string `json:"bridge"`
	// Index tells the bridge Ensure changed from one made later under the
	// same name, which Restore leaves alone.
	Index             int            `json:"ifindex"`
	BroughtUp         bool           `json:"brought_up,omitempty"`
	MTU               *Change        `json:"mtu,omitempty"`
	VLANFiltering     *Change        `json:"vlan_filtering,omitempty"`
	DefaultPVID       *Change        `json:"default_pvid,omitempty"`
	STP               *Change        `json:"stp_state,omitempty"`
	GroupFwdMask      *Change        `json:"group_fwd_mask,omitempty"`
	MulticastSnooping *Change        `json:"mcast_snooping,omitempty"`
	Addresses         []netip.Prefix `json:"addresses_added,omitempty"`
}

// Empty reports whether u records no change at all.
func (u Undo) Empty() bool {
	return !u.BroughtUp && u.MTU == nil && u.VLANFiltering == nil && u.DefaultPVID == nil && u.STP == nil &&
		u.GroupFwdMask == nil && u.MulticastSnooping == nil && len(u.Addresses) == 0
}

// Restore puts back what u records: it removes the addresses Ensure added,
// sets every changed option back to its earlier value and takes the bridge
// down again if Ensure brought it up. A setting that no longer has the
// value Ensure gave it was changed by someone else since, and stays. A
// bridge that is gone, or was deleted and made again, is left alone.
// Restore goes on after errors and returns them all; running it twice is
// harmless.
func (m *Manager) Restore(u Undo) error {
	if err := checkName("bridge", u.Bridge); err != nil {
		return err
	}
	link, err := m.h.LinkByName(u.Bridge)
	switch {
	case isNotFound(err):
		return nil
	case err != nil:
		return fmt.Errorf("bridge %s: look up to restore its settings: %w", u.Bridge, err)
	case !isBridge(link) || link.Attrs().Index != u.Index:
		return nil
	}
	a := link.Attrs()
	var errs []error
	for _, p := range u.Addresses {
		if err := m.h.AddrDel(link, toAddr(p)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			errs = append(errs, fmt.Errorf("bridge %s: remove address %s: %w", a.Name, p, err))
		}
	}
	o, err := m.linkOpts(a.Index)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("bridge %s: read options: %w", a.Name, err))...)
	}
	var back Undo
	revert := func(c *Change, now *int) *Change {
		if c == nil || now == nil || *now != c.To {
			return nil
		}
		return &Change{From: c.To, To: c.From}
	}
	intp := func(v int) *int { return &v }
	var vf, pvid, snoop *int
	if o.vlanFiltering != nil {
		vf = intp(b2i(*o.vlanFiltering))
	}
	if o.defaultPVID != nil {
		pvid = intp(int(*o.defaultPVID))
	}
	if o.mcastSnooping != nil {
		snoop = intp(b2i(*o.mcastSnooping))
	}
	back.VLANFiltering = revert(u.VLANFiltering, vf)
	back.DefaultPVID = revert(u.DefaultPVID, pvid)
	back.STP = revert(u.STP, intp(b2i(o.stp != 0)))
	back.GroupFwdMask = revert(u.GroupFwdMask, intp(int(o.groupFwdMask)))
	back.MulticastSnooping = revert(u.MulticastSnooping, snoop)
	back.MTU = revert(u.MTU, intp(a.MTU))
	if err := m.change(link, back); err != nil {
		errs = append(errs, fmt.Errorf("restore: %w", err))
	}
	if u.BroughtUp && a.Flags&net.FlagUp != 0 {
		if err := m.h.LinkSetDown(link); err != nil {
			errs = append(errs, fmt.Errorf("bridge %s: take down again: %w", a.Name, err))
		}
	}
	return errors.Join(errs...)
}
