// Package bridge creates, configures, describes and deletes Linux bridges
// and their ports in one network namespace, tagging what it creates with
// its owner so that vmnet never deletes a bridge it did not make.
package bridge

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	vns "github.com/vishvananda/netns"
	"github.com/vmnet/vmnet/internal/nlbatch"
	"github.com/vmnet/vmnet/internal/nlretry"
	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/owner"
	"golang.org/x/sys/unix"
)

// Group forwarding masks. Bit n of a mask forwards frames sent to the
// link-local group address 01:80:C2:00:00:0n, which a bridge otherwise
// consumes (IEEE 802.1D reserved addresses).
const (
	// TransparentMask is the widest bridge-wide group_fwd_mask the kernel
	// accepts: it forwards 802.1X PAE (03), LLDP (0E) and the rest of
	// 03-0F. The kernel refuses bits 0-2 (BR_GROUPFWD_RESTRICTED: STP,
	// MAC PAUSE, LACP) on the bridge with EINVAL. STP BPDUs (00) cross
	// anyway while STP is off; LACP (02) needs PortTransparentMask on the
	// ingress port; PAUSE (01) is always dropped.
	TransparentMask uint16 = 0xFFF8
	// PortTransparentMask is the widest per-port group_fwd_mask the kernel
	// accepts: it refuses only bit 1 (MAC PAUSE, never forwarded). Set on
	// the ingress port, it forwards LACP (02) and STP BPDUs (00) even when
	// the bridge runs STP, which the bridge-wide mask cannot express.
	PortTransparentMask uint16 = 0xFFFD

	restrictedMask     uint16 = 0x0007
	portRestrictedMask uint16 = 0x0002
)

// MTU limits of a Linux bridge (ETH_MIN_MTU, ETH_MAX_MTU), and the
// smallest MTU on which the kernel keeps IPv6 (IPV6_MIN_MTU).
const (
	MinMTU     = 68
	MaxMTU     = 65535
	MinIPv6MTU = 1280
)

// ErrNotFound is wrapped by errors about a bridge or port that does not
// exist.
var ErrNotFound = errors.New("no such interface")

// FeatureError reports a bridge feature that the running kernel was built
// without. It matches unix.EOPNOTSUPP with errors.Is, which is what the
// kernel answers.
type FeatureError struct {
	Feature string // what vmnet wanted, e.g. "VLAN"
	Config  string // the kernel option, e.g. "CONFIG_BRIDGE_VLAN_FILTERING"
}

func (e *FeatureError) Error() string {
	return "this kernel lacks " + e.Config + " (EOPNOTSUPP); boot a kernel built with it " +
		"(Debian's linux-image-amd64 has it) or drop the " + e.Feature + " settings"
}

// Is makes errors.Is(err, unix.EOPNOTSUPP) true.
func (e *FeatureError) Is(target error) bool { return target == unix.EOPNOTSUPP }

// The kernel features vmnet detects.
var (
	ErrNoVLANFiltering     = &FeatureError{Feature: "VLAN", Config: "CONFIG_BRIDGE_VLAN_FILTERING"}
	ErrNoMulticastSnooping = &FeatureError{Feature: "multicast snooping", Config: "CONFIG_BRIDGE_IGMP_SNOOPING"}
)

// Config is the desired state of a bridge.
//
// On a bridge this owner holds (created by Ensure, or tagged with Owner)
// every field is applied, so a zero field restores the kernel default. On
// a bridge reused on purpose (Reuse: not tagged, or tagged by another
// owner) only non-zero fields are applied, what they change is recorded
// for Restore, and the bridge is never tagged.
type Config struct {
	Name      string
	MTU       int            // 0 leaves the MTU alone (1500 on a new bridge)
	Addresses []netip.Prefix // added if missing; other addresses are left alone
	// VLANFiltering turns on 802.1Q filtering; DefaultPVID (1-4094, 0 for
	// the kernel's default of 1) is the VLAN untagged frames of ports
	// without their own PVID belong to.
	VLANFiltering bool
	DefaultPVID   uint16
	STP           bool
	// GroupFwdMask forwards link-local group frames; see TransparentMask.
	GroupFwdMask      uint16
	MulticastSnooping *bool  // nil leaves the kernel default (on)
	Owner             string // owner.AdHoc or owner.Lab(name); "" means owner.AdHoc
	// Reuse lets Ensure configure a bridge of that name that exists and
	// is not Owner's (vmnet did not make it, or made it for another
	// owner): the caller named it on purpose. Without Reuse, Ensure
	// refuses such a bridge with an *InUseError, so that two owners never
	// share a segment because their names happened to match.
	Reuse bool
	// BeforeChange, if set, receives the record of what Ensure is about
	// to change on a reused bridge, before the first change; an error
	// stops Ensure. Callers keep the record where a later process finds
	// it (a state file) and give it to Restore. Not called when nothing
	// changes or on the owner's own bridge.
	BeforeChange func(Undo) error
}

// Manager works on the bridges of one network namespace. It is safe for
// use by one goroutine at a time from any thread.
type Manager struct {
	h     *netlink.Handle
	socks map[int]*nl.SocketHandle
	batch nlbatch.Batch // AddPort's requests
}

// New returns a Manager for the network namespace ns. A closed handle
// (vishvananda/netns.None()) means
// the namespace of the calling thread. The namespace is taken explicitly
// because the kernel binds netlink sockets to the namespace they are
// opened in, while Go moves goroutines between threads.
func New(ns netns.Handle) (*Manager, error) {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("bridge: netlink handle in namespace %v: %w", ns, err)
	}
	s, err := nl.GetNetlinkSocketAt(ns, vns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("bridge: netlink socket in namespace %v: %w", ns, err)
	}
	_ = s.SetExtAck(true) // only adds the kernel's own words to errors
	return &Manager{h: h, socks: map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: s}}}, nil
}

// NewCurrent returns a Manager for the calling thread's namespace (the
// one netns.Do or `vmnet --netns` entered).
func NewCurrent() (*Manager, error) {
	cur, err := netns.Current()
	if err != nil {
		return nil, fmt.Errorf("bridge: current network namespace: %w", err)
	}
	defer cur.Close()
	return New(cur)
}

// Handle is the netlink handle the Manager uses, bound to its namespace.
func (m *Manager) Handle() *netlink.Handle { return m.h }

// Close releases the Manager's netlink sockets.
func (m *Manager) Close() {
	m.h.Close()
	for _, s := range m.socks {
		s.Close()
	}
}

// Ensure makes the bridge cfg.Name exist and match cfg, creating and
// tagging it if there is no interface of that name. It reports whether it
// created the bridge. A bridge that exists and is not cfg.Owner's is
// refused unless cfg.Reuse. If it created the bridge and then fails, it
// deletes it again; if it reused one, it puts back what it changed.
func (m *Manager) Ensure(cfg Config) (created bool, err error) {
	if err := cfg.validate(); err != nil {
		return false, err
	}
	own := ownerOr(cfg.Owner)
	link, err := m.h.LinkByName(cfg.Name)
	switch {
	case err == nil:
		if !isBridge(link) {
			whose := ""
			if _, ok := owner.Of(link); ok {
				whose = fmt.Sprintf(" (owner tag %q)", link.Attrs().Alias)
			}
			return false, fmt.Errorf("bridge %s: an interface of that name exists and is %s%s, not a bridge; "+
				"choose another bridge name or remove that interface", cfg.Name, kindOf(link.Type()), whose)
		}
	case isNotFound(err):
		link, err = m.create(cfg.Name, own)
		if err != nil {
			return false, err
		}
		created = true
		defer func() {
			if err != nil {
				_ = m.h.LinkDel(link)
			}
		}()
	default:
		return false, fmt.Errorf("bridge %s: look up: %w", cfg.Name, err)
	}
	tag, tagged := owner.Of(link)
	full := created || (tagged && tag == own)
	if !full && !cfg.Reuse {
		return false, &InUseError{Name: cfg.Name, Alias: link.Attrs().Alias, Tagged: tagged}
	}
	u, err := m.plan(link, cfg, full)
	if err != nil {
		return created, err
	}
	if !full && !u.Empty() && cfg.BeforeChange != nil {
		if err := cfg.BeforeChange(u); err != nil {
			return false, fmt.Errorf("bridge %s: record its settings before changing them: %w", cfg.Name, err)
		}
	}
	if err := m.change(link, u); err != nil {
		if !full {
			// Bad input changes nothing: put back what was changed.
			if rerr := m.Restore(u); rerr != nil {
				err = fmt.Errorf("%w; restoring its earlier settings also failed: %v", err, rerr)
			}
		}
		return created, err
	}
	return created, nil
}

func (m *Manager) create(name, own string) (netlink.Link, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	link, err := owner.Add(m.h, &netlink.Bridge{LinkAttrs: attrs}, own)
	if errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("bridge %s: create: someone else created an interface of that name meanwhile; retry", name)
	}
	if err != nil {
		return nil, fmt.Errorf("bridge %w", err)
	}
	return link, nil
}

// plan works out what moving link to cfg changes, as a record that
// holds both the old and the new value of every setting that differs.
// With full false only the non-zero fields of cfg count.
func (m *Manager) plan(link netlink.Link, cfg Config, full bool) (Undo, error) {
	a := link.Attrs()
	u := Undo{Bridge: a.Name, Index: a.Index}
	o, err := m.linkOpts(a.Index)
	if err != nil {
		return u, fmt.Errorf("bridge %s: read options: %w", a.Name, err)
	}
	if cfg.VLANFiltering || cfg.DefaultPVID != 0 {
		// The kernel reports the default PVID only when built with VLAN
		// filtering, and silently ignores it otherwise.
		if o.defaultPVID == nil || o.vlanFiltering == nil {
			return u, fmt.Errorf("bridge %s: VLAN filtering: %w", a.Name, ErrNoVLANFiltering)
		}
	}
	if (full || cfg.VLANFiltering) && o.vlanFiltering != nil && *o.vlanFiltering != cfg.VLANFiltering {
		u.VLANFiltering = &Change{From: b2i(*o.vlanFiltering), To: b2i(cfg.VLANFiltering)}
	}
	if cfg.DefaultPVID != 0 && *o.defaultPVID != cfg.DefaultPVID {
		u.DefaultPVID = &Change{From: int(*o.defaultPVID), To: int(cfg.DefaultPVID)}
	}
	if (full || cfg.STP) && (o.stp != 0) != cfg.STP {
		u.STP = &Change{From: int(o.stp), To: b2i(cfg.STP)}
	}
	if (full || cfg.GroupFwdMask != 0) && o.groupFwdMask != cfg.GroupFwdMask {
		u.GroupFwdMask = &Change{From: int(o.groupFwdMask), To: int(cfg.GroupFwdMask)}
	}
	if want := cfg.MulticastSnooping; want != nil {
		if o.mcastSnooping == nil {
			return u, fmt.Errorf("bridge %s: multicast snooping: %w", a.Name, ErrNoMulticastSnooping)
		}
		if *o.mcastSnooping != *want {
			u.MulticastSnooping = &Change{From: b2i(*o.mcastSnooping), To: b2i(*want)}
		}
	}
	if cfg.MTU != 0 && a.MTU != cfg.MTU {
		u.MTU = &Change{From: a.MTU, To: cfg.MTU}
	}
	u.BroughtUp = a.Flags&net.FlagUp == 0
	if len(cfg.Addresses) > 0 {
		have, err := m.addresses(link)
		if err != nil {
			return u, err
		}
		for _, p := range cfg.Addresses {
			if !slices.Contains(have, p) {
				u.Addresses = append(u.Addresses, p)
			}
		}
	}
	return u, nil
}

// change makes the changes u records, in an order the kernel accepts.
func (m *Manager) change(link netlink.Link, u Undo) error {
	a := link.Attrs()
	// The kernel takes a new default_pvid only while VLAN filtering is
	// off (br_vlan_set_default_pvid: EPERM), so filtering is off while it
	// changes, and then set to what it should be.
	if c := u.DefaultPVID; c != nil {
		o, err := m.linkOpts(a.Index)
		if err != nil {
			return fmt.Errorf("bridge %s: read options: %w", a.Name, err)
		}
		filtering := o.vlanFiltering != nil && *o.vlanFiltering
		if filtering {
			if err := m.setBridgeOpt(a.Index, nl.IFLA_BR_VLAN_FILTERING, boolAttr(false)); err != nil {
				return vlanErr(a.Name, "set vlan_filtering 0 to change default_pvid", err)
			}
		}
		if u.VLANFiltering != nil {
			filtering = u.VLANFiltering.To != 0
		}
		if err := m.setBridgeOpt(a.Index, nl.IFLA_BR_VLAN_DEFAULT_PVID, nl.Uint16Attr(uint16(c.To))); err != nil {
			err = vlanErr(a.Name, fmt.Sprintf("set default_pvid %d", c.To), err)
			if filtering {
				_ = m.setBridgeOpt(a.Index, nl.IFLA_BR_VLAN_FILTERING, boolAttr(true))
			}
			return err
		}
		if filtering {
			if err := m.setBridgeOpt(a.Index, nl.IFLA_BR_VLAN_FILTERING, boolAttr(true)); err != nil {
				return vlanErr(a.Name, "set vlan_filtering 1", err)
			}
		}
	} else if c := u.VLANFiltering; c != nil {
		if err := m.setBridgeOpt(a.Index, nl.IFLA_BR_VLAN_FILTERING, boolAttr(c.To != 0)); err != nil {
			return vlanErr(a.Name, fmt.Sprintf("set vlan_filtering %d", c.To), err)
		}
	}
	if c := u.STP; c != nil {
		if err := m.setBridgeOpt(a.Index, nl.IFLA_BR_STP_STATE, nl.Uint32Attr(uint32(c.To))); err != nil {
			return fmt.Errorf("bridge %s: set stp_state %d: %w", a.Name, c.To, err)
		}
	}
	if c := u.GroupFwdMask; c != nil {
		if err := m.setBridgeOpt(a.Index, nl.IFLA_BR_GROUP_FWD_MASK, nl.Uint16Attr(uint16(c.To))); err != nil {
			return fmt.Errorf("bridge %s: set group_fwd_mask %#04x: %w", a.Name, c.To, err)
		}
	}
	if c := u.MulticastSnooping; c != nil {
		if err := m.setBridgeOpt(a.Index, nl.IFLA_BR_MCAST_SNOOPING, boolAttr(c.To != 0)); err != nil {
			return fmt.Errorf("bridge %s: set mcast_snooping %d: %w", a.Name, c.To, err)
		}
	}
	// Through ndo_change_mtu, so that the kernel marks the MTU as chosen
	// by the user and stops lowering it to the smallest port's.
	if c := u.MTU; c != nil {
		if err := m.h.LinkSetMTU(link, c.To); err != nil {
			return fmt.Errorf("bridge %s: set MTU %d: %w", a.Name, c.To, err)
		}
	}
	if u.BroughtUp {
		if err := m.h.LinkSetUp(link); err != nil {
			return fmt.Errorf("bridge %s: bring up: %w", a.Name, err)
		}
	}
	for _, p := range u.Addresses {
		if err := m.addAddress(link, p); err != nil {
			return err
		}
	}
	return nil
}

// addresses lists the addresses on link.
func (m *Manager) addresses(link netlink.Link) ([]netip.Prefix, error) {
	addrs, err := nlretry.Do(func() ([]netlink.Addr, error) { return m.h.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("bridge %s: list addresses: %w", link.Attrs().Name, err)
	}
	out := make([]netip.Prefix, 0, len(addrs))
	for _, ad := range addrs {
		ip, ok := netip.AddrFromSlice(ad.IP)
		if !ok {
			continue
		}
		ones, _ := ad.Mask.Size()
		out = append(out, netip.PrefixFrom(ip.Unmap(), ones))
	}
	return out, nil
}

// Delete deletes the bridge name if it is tagged as own's (owner.AdHoc
// if own is empty), or regardless of its tag if force is set. It never
// deletes an interface that is not a bridge.
func (m *Manager) Delete(name, own string, force bool) error {
	if err := checkName("bridge", name); err != nil {
		return err
	}
	link, err := m.bridge(name)
	if err != nil {
		return err
	}
	if !force {
		if err := owner.Check(link, ownerOr(own)); err != nil {
			return fmt.Errorf("bridge %w", err)
		}
	}
	if err := m.h.LinkDel(link); err != nil {
		return fmt.Errorf("bridge %s: delete: %w", name, err)
	}
	return nil
}

// AddAddress adds p (a host address with its prefix length, such as
// 10.0.0.1/24) to the bridge name. Adding an address that is there is not
// an error.
func (m *Manager) AddAddress(name string, p netip.Prefix) error {
	if err := checkAddress(name, p); err != nil {
		return err
	}
	link, err := m.bridge(name)
	if err != nil {
		return err
	}
	return m.addAddress(link, p)
}

// RemoveAddress removes p from the bridge name. Removing an address that
// is not there is not an error.
func (m *Manager) RemoveAddress(name string, p netip.Prefix) error {
	if err := checkAddress(name, p); err != nil {
		return err
	}
	link, err := m.bridge(name)
	if err != nil {
		return err
	}
	if err := m.h.AddrDel(link, toAddr(p)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("bridge %s: remove address %s: %w", name, p, err)
	}
	return nil
}

func (m *Manager) addAddress(link netlink.Link, p netip.Prefix) error {
	name := link.Attrs().Name
	if err := m.h.AddrAdd(link, toAddr(p)); err != nil && !errors.Is(err, unix.EEXIST) {
		if p.Addr().Is6() && errors.Is(err, unix.EACCES) {
			return fmt.Errorf("bridge %s: add address %s: IPv6 is disabled on %s (MTU below %d or disable_ipv6 set): %w",
				name, p, name, MinIPv6MTU, err)
		}
		return fmt.Errorf("bridge %s: add address %s: %w", name, p, err)
	}
	return nil
}

// bridge looks up name and insists that it is a bridge.
func (m *Manager) bridge(name string) (netlink.Link, error) {
	link, err := m.h.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("bridge %s: %w", name, ErrNotFound)
		}
		return nil, fmt.Errorf("bridge %s: look up: %w", name, err)
	}
	if !isBridge(link) {
		return nil, fmt.Errorf("bridge %s: %s", name, notABridge(link.Type()))
	}
	return link, nil
}

func toAddr(p netip.Prefix) *netlink.Addr {
	a := p.Addr()
	return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(p.Bits(), a.BitLen())}}
}

func vlanErr(bridge, what string, err error) error {
	if errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("bridge %s: VLAN filtering: %s: %w", bridge, what, ErrNoVLANFiltering)
	}
	return fmt.Errorf("bridge %s: %s: %w", bridge, what, err)
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

func ownerOr(own string) string {
	if own == "" {
		return owner.AdHoc
	}
	return own
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// kindOf names an interface kind for a message: "a veth interface".
// netlink calls kinds it does not model "device", which says nothing.
func kindOf(kind string) string {
	if kind == "" || kind == "device" {
		return "an interface of another kind"
	}
	return "a " + kind + " interface"
}

// notABridge says what an interface that should have been a bridge is.
func notABridge(kind string) string {
	return "is " + kindOf(kind) + ", not a bridge"
}
