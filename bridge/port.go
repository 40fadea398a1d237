package bridge

import (
	"errors"
	"fmt"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/nlbatch"
)

// PortConfig is the desired state of one bridge port.
type PortConfig struct {
	Name string
	// PVID is the VLAN of untagged frames, sent out untagged (an access
	// port, or a trunk's native VLAN); 0 means the bridge's default PVID.
	// Tagged lists VLANs carried tagged. Both need VLAN filtering on the
	// bridge. When either is set, the port is in exactly these VLANs.
	PVID   uint16
	Tagged []uint16
	// Isolated ports do not talk to each other, only to other ports.
	Isolated bool
	// Hairpin sends frames back out of the port they came in on
	// (reflective relay, for guests that bridge on their side).
	Hairpin bool
	// Learning (source MAC learning) and Flood (unknown unicast flooding):
	// nil means on, the kernel default.
	Learning, Flood *bool
	// GroupFwdMask forwards link-local frames arriving on this port; see
	// PortTransparentMask.
	GroupFwdMask uint16
}

func (p *PortConfig) hasVLANs() bool { return p.PVID != 0 || len(p.Tagged) > 0 }

// opts are the bridge-port attributes AddPort sets.
func (p *PortConfig) opts() map[int][]byte {
	return map[int][]byte{
		nl.IFLA_BRPORT_MODE:           boolAttr(p.Hairpin),
		nl.IFLA_BRPORT_ISOLATED:       boolAttr(p.Isolated),
		nl.IFLA_BRPORT_LEARNING:       boolAttr(p.Learning == nil || *p.Learning),
		nl.IFLA_BRPORT_UNICAST_FLOOD:  boolAttr(p.Flood == nil || *p.Flood),
		nl.IFLA_BRPORT_GROUP_FWD_MASK: nl.Uint16Attr(p.GroupFwdMask),
	}
}

// AddPort attaches the existing interface p.Name to bridge, or updates it
// if it is attached already, and brings it up. It sets the port's MTU to
// the bridge's first: the kernel lowers an automatic bridge MTU to that of
// its smallest port, and a bridge with a larger MTU than a port drops the
// large frames on that port. If the kernel refuses a step, AddPort names
// it and puts back what it changed: the MTU, the attachment to the bridge
// and the link state.
//
// It looks both links up in one system call, then sends the changes as
// one batch of requests, one per step, so that the index of a refused
// request names the step. A port with VLANs takes three: its VLANs are
// set between attaching it and bringing it up.
func (m *Manager) AddPort(bridge string, p PortConfig) (err error) {
	if err := checkName("bridge", bridge); err != nil {
		return err
	}
	if err := p.validate(bridge); err != nil {
		return err
	}
	fd := m.socks[unix.NETLINK_ROUTE].Socket.GetFd()
	b := &m.batch
	getLink(b, bridge)
	getLink(b, p.Name)
	var heads [2]linkHead
	var found [2]bool
	i, err := b.Exec(fd, func(i int, typ uint16, body []byte) {
		if typ == unix.RTM_NEWLINK {
			heads[i], found[i] = parseHead(body)
		}
	})
	switch {
	case i == 0 && errors.Is(err, unix.ENODEV):
		return fmt.Errorf("bridge %s: %w", bridge, ErrNotFound)
	case i == 0:
		return fmt.Errorf("bridge %s: look up: %w", bridge, err)
	case found[0] && heads[0].kind != "bridge":
		// Worded as everywhere else, from the link in full.
		if _, err := m.bridge(bridge); err != nil {
			return err
		}
		return fmt.Errorf("bridge %s: %s", bridge, notABridge(heads[0].kind))
	case i == 1 && errors.Is(err, unix.ENODEV):
		return fmt.Errorf("bridge %s: port %s: %w; create it first (a tap or veth) in the bridge's namespace", bridge, p.Name, ErrNotFound)
	case i == 1:
		return fmt.Errorf("bridge %s: port %s: look up: %w", bridge, p.Name, err)
	case err != nil:
		return fmt.Errorf("bridge %s: look up: %w", bridge, err)
	case !found[0] || !found[1]:
		return fmt.Errorf("bridge %s: look up port %s: the kernel answered without the link", bridge, p.Name)
	}
	br, port := heads[0], heads[1]
	if err := m.checkPort(bridge, p.Name, br, port); err != nil {
		return err
	}

	var brOpt brOpts
	if p.hasVLANs() {
		if brOpt, err = m.linkOpts(br.index); err != nil {
			return fmt.Errorf("bridge %s: read options: %w", bridge, err)
		}
		what := fmt.Sprintf("port %s VLANs (pvid %d, tagged %v)", p.Name, p.PVID, p.Tagged)
		switch {
		case brOpt.vlanFiltering == nil || brOpt.defaultPVID == nil:
			return fmt.Errorf("bridge %s: %s: %w", bridge, what, ErrNoVLANFiltering)
		case !*brOpt.vlanFiltering:
			return fmt.Errorf("bridge %s: %s: the bridge has VLAN filtering off, so VLANs would not be enforced; "+
				"turn VLAN filtering on for the bridge first (vlan_filtering = true in the lab file, --vlan-filtering on bridge create)", bridge, what)
		}
	}

	// The steps, in the order the kernel must see them; steps[i] is
	// request i, worded only if the kernel refuses it.
	var stepsBuf [4]portStep
	steps := stepsBuf[:0]
	if port.mtu != br.mtu {
		setLink(b, port.index, 0)
		b.AttrU32(unix.IFLA_MTU, uint32(br.mtu))
		steps = append(steps, stepMTU)
	}
	if port.master == 0 {
		setLink(b, port.index, 0)
		b.AttrU32(unix.IFLA_MASTER, uint32(br.index))
		steps = append(steps, stepAttach)
	}
	// A new port learns and floods, is neither isolated nor hairpin and
	// forwards no link-local groups: only other settings need a request
	// there. A port attached already gets them all, as it may differ.
	if port.master != 0 || p.Hairpin || p.Isolated || (p.Learning != nil && !*p.Learning) || (p.Flood != nil && !*p.Flood) || p.GroupFwdMask != 0 {
		b.Add(m.portOptsReq(port.index, p.opts()))
		steps = append(steps, stepFlags)
	}
	if !p.hasVLANs() && !port.up {
		setLink(b, port.index, unix.IFF_UP)
		steps = append(steps, stepUp)
	}
	defer func() {
		if err != nil {
			m.undoPort(p.Name, br, port)
		}
	}()
	if i, err := b.Exec(fd, nil); err != nil {
		if i < 0 {
			return fmt.Errorf("bridge %s: port %s: rtnetlink: %w", bridge, p.Name, err)
		}
		return steps[i].err(bridge, p.Name, br.mtu, err)
	}
	if !p.hasVLANs() {
		return nil
	}
	if err := m.portVLANs(bridge, p, port.index, *brOpt.defaultPVID); err != nil {
		return err
	}
	if !port.up {
		setLink(b, port.index, unix.IFF_UP)
		if _, err := b.Exec(fd, nil); err != nil {
			return stepUp.err(bridge, p.Name, br.mtu, err)
		}
	}
	return nil
}

// portStep is one request of AddPort's batch.
type portStep uint8

const (
	stepMTU portStep = iota
	stepAttach
	stepFlags
	stepUp
)

// err words the kernel's refusal of the step.
func (s portStep) err(bridge, port string, mtu int, err error) error {
	switch s {
	case stepMTU:
		return fmt.Errorf("bridge %s: port %s: set MTU %d to match the bridge: %w", bridge, port, mtu, err)
	case stepAttach:
		return fmt.Errorf("bridge %s: attach port %s: %w", bridge, port, err)
	case stepFlags:
		return fmt.Errorf("bridge %s: port %s: set hairpin/isolated/learning/flood/group_fwd_mask: %w", bridge, port, err)
	}
	return fmt.Errorf("bridge %s: port %s: bring up: %w", bridge, port, err)
}

// checkPort refuses a port that cannot join the bridge br: not Ethernet,
// a bridge itself, or on another master. Only its errors look the links up again
// in full, to name what they are.
func (m *Manager) checkPort(bridge, name string, br, port linkHead) error {
	switch {
	case port.kind == "bridge":
		return fmt.Errorf("bridge %s: port %s is itself a bridge; a bridge cannot be a port of another bridge (connect them with a veth pair)", bridge, name)
	case port.arpType != unix.ARPHRD_ETHER:
		encap := fmt.Sprintf("ARP type %d", port.arpType)
		if l, err := m.h.LinkByIndex(port.index); err == nil && l.Attrs().EncapType != "" {
			encap = l.Attrs().EncapType
		}
		return fmt.Errorf("bridge %s: port %s is a %s device, not Ethernet; only Ethernet devices (tap, veth, NICs) can be bridge ports", bridge, name, encap)
	case port.master != 0 && port.master != br.index:
		master := fmt.Sprintf("ifindex %d", port.master)
		if ml, err := m.h.LinkByIndex(port.master); err == nil {
			master = ml.Attrs().Name + " (" + ml.Type() + ")"
		}
		return fmt.Errorf("bridge %s: port %s is already attached to %s; detach it from there first", bridge, name, master)
	}
	return nil
}

// portVLANs makes the attached port a member of exactly p's VLANs.
func (m *Manager) portVLANs(bridge string, p PortConfig, index int, defaultPVID uint16) error {
	ports, err := m.ports()
	if err != nil {
		return fmt.Errorf("bridge %s: port %s: list VLANs: %w", bridge, p.Name, err)
	}
	var cur []VLAN
	for _, ps := range ports {
		if ps.index == index {
			cur = ps.vlans
		}
	}
	pvid := p.PVID
	if pvid == 0 {
		pvid = defaultPVID
	}
	link := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index, Name: p.Name}}
	if err := m.setVLANs(link, cur, pvid, p.Tagged); err != nil {
		return vlanErr(bridge, "port "+p.Name+" VLANs", err)
	}
	return nil
}

// undoPort puts back what AddPort changed on a port that was as before
// describes: the kernel runs every request of a batch, also those after
// a refused one, so each is undone whether or not it failed (each undo
// is harmless where nothing changed). A port that was attached already
// keeps its new flags and VLANs, as it had before this path existed.
func (m *Manager) undoPort(name string, br, before linkHead) {
	link := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: before.index, Name: name}}
	if !before.up {
		_ = m.h.LinkSetDown(link)
	}
	if before.master == 0 {
		_ = m.h.LinkSetNoMaster(link)
	}
	if before.mtu != br.mtu {
		_ = m.h.LinkSetMTU(link, before.mtu)
	}
}

// setLink starts an RTM_SETLINK on the link index in b that sets flags
// (IFF_UP or 0); attributes follow.
func setLink(b *nlbatch.Batch, index int, flags uint32) {
	ifi := nlbatch.IfInfomsg(unix.AF_UNSPEC, int32(index), flags, flags)
	b.Begin(unix.RTM_SETLINK, 0, ifi[:], 0)
}

// setVLANs makes the port a member of exactly pvid (untagged, if not 0)
// and tagged, as `bridge vlan add/del dev PORT vid N [pvid untagged]
// master` would.
func (m *Manager) setVLANs(port netlink.Link, cur []VLAN, pvid uint16, tagged []uint16) error {
	want := map[uint16]VLAN{}
	if pvid != 0 {
		want[pvid] = VLAN{ID: pvid, PVID: true, Untagged: true}
	}
	for _, v := range tagged {
		want[v] = VLAN{ID: v}
	}
	have := map[uint16]VLAN{}
	for _, v := range cur {
		have[v.ID] = v
	}
	ids := make([]uint16, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	// The PVID first, so that the port is never without one meanwhile.
	slices.SortFunc(ids, func(a, b uint16) int {
		if a == pvid || b == pvid {
			return b2i(a != pvid) - b2i(b != pvid)
		}
		return int(a) - int(b)
	})
	for _, id := range ids {
		v := want[id]
		if h, ok := have[id]; ok && h == v {
			continue
		}
		if err := m.h.BridgeVlanAdd(port, id, v.PVID, v.Untagged, false, true); err != nil {
			return fmt.Errorf("add VLAN %d: %w", id, err)
		}
	}
	for _, v := range cur {
		if _, ok := want[v.ID]; !ok {
			if err := m.h.BridgeVlanDel(port, v.ID, false, false, false, true); err != nil {
				return fmt.Errorf("remove VLAN %d: %w", v.ID, err)
			}
		}
	}
	return nil
}

// RemovePort detaches port from bridge. A port that is not attached is
// not an error; one attached to another master is.
func (m *Manager) RemovePort(bridge, port string) error {
	if err := checkName("bridge", bridge); err != nil {
		return err
	}
	if err := checkName("port", port); err != nil {
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	br, err := m.bridge(bridge)
	if err != nil {
		return err
	}
	link, err := m.h.LinkByName(port)
	if err != nil {
		if isNotFound(err) {
			return fmt.Errorf("bridge %s: port %s: %w", bridge, port, ErrNotFound)
		}
		return fmt.Errorf("bridge %s: port %s: look up: %w", bridge, port, err)
	}
	switch mi := link.Attrs().MasterIndex; mi {
	case 0:
		return nil
	case br.Attrs().Index:
	default:
		return fmt.Errorf("bridge %s: port %s is attached to ifindex %d, not to %s; leaving it alone", bridge, port, mi, bridge)
	}
	if err := m.h.LinkSetNoMaster(link); err != nil {
		return fmt.Errorf("bridge %s: detach port %s: %w", bridge, port, err)
	}
	return nil
}
