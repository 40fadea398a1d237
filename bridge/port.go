package bridge

import (
	"fmt"
	"net"
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
// large frames on that port. If it attached the port and then fails, it
// detaches it again.
func (m *Manager) AddPort(bridge string, p PortConfig) (err error) {
	if err := checkName("bridge", bridge); err != nil {
		return err
	}
	if err := p.validate(bridge); err != nil {
		return err
	}
	if done, err := m.addFreshPort(bridge, p); done {
		return err
	}
	br, err := m.bridge(bridge)
	if err != nil {
		return err
	}
	port, err := m.h.LinkByName(p.Name)
	if err != nil {
		if isNotFound(err) {
			return fmt.Errorf("bridge %s: port %s: %w; create it first (a tap or veth) in the bridge's namespace", bridge, p.Name, ErrNotFound)
		}
		return fmt.Errorf("bridge %s: port %s: look up: %w", bridge, p.Name, err)
	}
	pa, ba := port.Attrs(), br.Attrs()
	switch {
	case isBridge(port):
		return fmt.Errorf("bridge %s: port %s is itself a bridge; a bridge cannot be a port of another bridge (connect them with a veth pair)", bridge, p.Name)
	case pa.EncapType != "" && pa.EncapType != "ether":
		return fmt.Errorf("bridge %s: port %s is a %s device, not Ethernet; only Ethernet devices (tap, veth, NICs) can be bridge ports", bridge, p.Name, pa.EncapType)
	case pa.MasterIndex != 0 && pa.MasterIndex != ba.Index:
		master := fmt.Sprintf("ifindex %d", pa.MasterIndex)
		if ml, err := m.h.LinkByIndex(pa.MasterIndex); err == nil {
			master = ml.Attrs().Name + " (" + ml.Type() + ")"
		}
		return fmt.Errorf("bridge %s: port %s is already attached to %s; detach it from there first", bridge, p.Name, master)
	}

	var brOpt brOpts
	var cur []VLAN
	if p.hasVLANs() {
		if brOpt, err = m.linkOpts(ba.Index); err != nil {
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

	if pa.MTU != ba.MTU {
		if err := m.h.LinkSetMTU(port, ba.MTU); err != nil {
			return fmt.Errorf("bridge %s: port %s: set MTU %d to match the bridge: %w",
				bridge, p.Name, ba.MTU, err)
		}
		defer func() {
			if err != nil {
				_ = m.h.LinkSetMTU(port, pa.MTU)
			}
		}()
	}
	if pa.MasterIndex == 0 {
		if err := m.h.LinkSetMasterByIndex(port, ba.Index); err != nil {
			return fmt.Errorf("bridge %s: attach port %s: %w", bridge, p.Name, err)
		}
		defer func() {
			if err != nil {
				_ = m.h.LinkSetNoMaster(port)
			}
		}()
	}
	if err := m.setPortOpts(pa.Index, p.opts()); err != nil {
		return fmt.Errorf("bridge %s: port %s: set hairpin/isolated/learning/flood/group_fwd_mask: %w", bridge, p.Name, err)
	}
	if p.hasVLANs() {
		ports, err := m.ports()
		if err != nil {
			return fmt.Errorf("bridge %s: port %s: list VLANs: %w", bridge, p.Name, err)
		}
		for _, ps := range ports {
			if ps.index == pa.Index {
				cur = ps.vlans
			}
		}
		pvid := p.PVID
		if pvid == 0 {
			pvid = *brOpt.defaultPVID
		}
		if err := m.setVLANs(port, cur, pvid, p.Tagged); err != nil {
			return vlanErr(bridge, "port "+p.Name+" VLANs", err)
		}
	}
	if pa.Flags&net.FlagUp == 0 {
		if err := m.h.LinkSetUp(port); err != nil {
			return fmt.Errorf("bridge %s: port %s: bring up: %w", bridge, p.Name, err)
		}
	}
	return nil
}

// addFreshPort is AddPort for the common case, a port that is on no
// bridge yet and gets no VLANs: MTU and master in one request, the port
// flags (only where they differ from what the kernel gives a new port)
// and up, sent together in one system call. It returns done=false, having
// changed nothing, for every other case and for any lookup that does not
// find exactly that; AddPort's step-by-step path then decides and words
// the error. If the kernel refuses a request, addFreshPort puts back what
// the batch changed and also returns done=false, so that the step-by-step
// path runs again and names the step that fails.
func (m *Manager) addFreshPort(bridge string, p PortConfig) (done bool, err error) {
	if p.hasVLANs() {
		return false, nil
	}
	// Both lookups in one system call.
	fd := m.socks[unix.NETLINK_ROUTE].Socket.GetFd()
	b := &m.batch
	getLink(b, bridge)
	getLink(b, p.Name)
	var heads [2]linkHead
	var found [2]bool
	if _, err := b.Exec(fd, func(i int, typ uint16, body []byte) {
		if typ == unix.RTM_NEWLINK {
			heads[i], found[i] = parseHead(body)
		}
	}); err != nil || !found[0] || !found[1] {
		return false, nil
	}
	br, port := heads[0], heads[1]
	if br.kind != "bridge" || port.kind == "bridge" || port.arpType != unix.ARPHRD_ETHER || port.master != 0 {
		return false, nil
	}
	ifi := nlbatch.IfInfomsg(unix.AF_UNSPEC, int32(port.index), 0, 0)
	b.Begin(unix.RTM_SETLINK, 0, ifi[:], 0)
	if port.mtu != br.mtu {
		b.AttrU32(unix.IFLA_MTU, uint32(br.mtu))
	}
	b.AttrU32(unix.IFLA_MASTER, uint32(br.index))
	// A new port learns and floods, is neither isolated nor hairpin and
	// forwards no link-local groups: only other settings need a request.
	if p.Hairpin || p.Isolated || (p.Learning != nil && !*p.Learning) || (p.Flood != nil && !*p.Flood) || p.GroupFwdMask != 0 {
		b.Add(m.portOptsReq(port.index, p.opts()))
	}
	if !port.up {
		up := nlbatch.IfInfomsg(unix.AF_UNSPEC, int32(port.index), unix.IFF_UP, unix.IFF_UP)
		b.Begin(unix.RTM_SETLINK, 0, up[:], 0)
	}
	if _, err := b.Exec(fd, nil); err == nil {
		return true, nil
	}
	// Undo in reverse order; each is harmless where the batch did not
	// get that far.
	link := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: port.index, Name: p.Name}}
	if !port.up {
		_ = m.h.LinkSetDown(link)
	}
	_ = m.h.LinkSetNoMaster(link)
	if port.mtu != br.mtu {
		_ = m.h.LinkSetMTU(link, port.mtu)
	}
	return false, nil
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
