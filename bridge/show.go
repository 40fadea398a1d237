package bridge

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vmnet/vmnet/internal/nlretry"
	"github.com/vmnet/vmnet/owner"
)

// Info describes a bridge as the kernel reports it (`vmnet bridge show`).
type Info struct {
	Name      string         `json:"name"`
	Index     int            `json:"index"`
	MTU       int            `json:"mtu"`
	MAC       string         `json:"mac"`
	Up        bool           `json:"up"`         // administratively up
	OperState string         `json:"oper_state"` // "up" once a port has carrier
	Addresses []netip.Prefix `json:"addresses"`
	// VLANFilteringSupported is false on kernels without
	// CONFIG_BRIDGE_VLAN_FILTERING; DefaultPVID is then unknown (nil).
	VLANFilteringSupported bool    `json:"vlan_filtering_supported"`
	VLANFiltering          bool    `json:"vlan_filtering"`
	DefaultPVID            *uint16 `json:"default_pvid"`
	STP                    bool    `json:"stp"`
	GroupFwdMask           uint16  `json:"group_fwd_mask"`
	// MulticastSnooping is nil on kernels without CONFIG_BRIDGE_IGMP_SNOOPING.
	MulticastSnooping *bool      `json:"multicast_snooping"`
	Owner             string     `json:"owner,omitempty"` // "" if vmnet did not create it
	Ports             []PortInfo `json:"ports"`
}

// PortInfo describes one bridge port.
type PortInfo struct {
	Name         string `json:"name"`
	Index        int    `json:"index"`
	Type         string `json:"type"`
	MTU          int    `json:"mtu"`
	MAC          string `json:"mac"`
	OperState    string `json:"oper_state"`
	STPState     string `json:"stp_state"` // forwarding, blocking, ... (disabled while down)
	Hairpin      bool   `json:"hairpin"`
	Isolated     bool   `json:"isolated"`
	Learning     bool   `json:"learning"`
	Flood        bool   `json:"flood"`
	GroupFwdMask uint16 `json:"group_fwd_mask"`
	PVID         uint16 `json:"pvid,omitempty"`
	VLANs        []VLAN `json:"vlans,omitempty"`
	Owner        string `json:"owner,omitempty"`
}

// VLAN is a port's membership in one VLAN.
type VLAN struct {
	ID       uint16 `json:"id"`
	PVID     bool   `json:"pvid"`
	Untagged bool   `json:"untagged"`
}

// Show describes the bridge name.
func (m *Manager) Show(name string) (Info, error) {
	if err := checkName("bridge", name); err != nil {
		return Info{}, err
	}
	br, err := m.bridge(name)
	if err != nil {
		return Info{}, err
	}
	links, ports, err := m.snapshot()
	if err != nil {
		return Info{}, fmt.Errorf("bridge %s: %w", name, err)
	}
	return m.describe(br, links, ports)
}

// List describes the bridges tagged as own's (owner.AdHoc or
// owner.Lab(name)), in name order.
func (m *Manager) List(own string) ([]Info, error) {
	tagged, err := owner.List(m.h, own)
	if err != nil {
		return nil, fmt.Errorf("bridges of %q: %w", own, err)
	}
	return m.describeAll(tagged, own)
}

// ListAll describes every bridge vmnet created, whoever owns it.
func (m *Manager) ListAll() ([]Info, error) {
	tagged, err := owner.ListAll(m.h)
	if err != nil {
		return nil, fmt.Errorf("bridges: %w", err)
	}
	return m.describeAll(tagged, "vmnet")
}

func (m *Manager) describeAll(tagged []netlink.Link, own string) ([]Info, error) {
	var bridges []netlink.Link
	for _, l := range tagged {
		if isBridge(l) {
			bridges = append(bridges, l)
		}
	}
	if len(bridges) == 0 {
		return []Info{}, nil
	}
	links, ports, err := m.snapshot()
	if err != nil {
		return nil, fmt.Errorf("bridges of %q: %w", own, err)
	}
	out := make([]Info, 0, len(bridges))
	for _, br := range bridges {
		info, err := m.describe(br, links, ports)
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b Info) int { return a.Index - b.Index })
	return out, nil
}

func (m *Manager) snapshot() (map[int]netlink.Link, []portState, error) {
	all, err := nlretry.Do(m.h.LinkList)
	if err != nil {
		return nil, nil, fmt.Errorf("list links: %w", err)
	}
	links := make(map[int]netlink.Link, len(all))
	for _, l := range all {
		links[l.Attrs().Index] = l
	}
	ports, err := m.ports()
	if err != nil {
		return nil, nil, fmt.Errorf("list bridge ports: %w", err)
	}
	return links, ports, nil
}

func (m *Manager) describe(br netlink.Link, links map[int]netlink.Link, ports []portState) (Info, error) {
	a := br.Attrs()
	o, err := m.linkOpts(a.Index)
	if err != nil {
		return Info{}, fmt.Errorf("bridge %s: read options: %w", a.Name, err)
	}
	addrs, err := m.addresses(br)
	if err != nil {
		return Info{}, err
	}
	info := Info{
		Name:                   a.Name,
		Index:                  a.Index,
		MTU:                    a.MTU,
		MAC:                    a.HardwareAddr.String(),
		Up:                     a.Flags&net.FlagUp != 0,
		OperState:              a.OperState.String(),
		Addresses:              addrs,
		VLANFilteringSupported: o.vlanFiltering != nil && o.defaultPVID != nil,
		VLANFiltering:          o.vlanFiltering != nil && *o.vlanFiltering,
		DefaultPVID:            o.defaultPVID,
		STP:                    o.stp != 0,
		GroupFwdMask:           o.groupFwdMask,
		MulticastSnooping:      o.mcastSnooping,
		Ports:                  []PortInfo{},
	}
	info.Owner, _ = owner.Of(br)
	for _, ps := range ports {
		if ps.master != a.Index {
			continue
		}
		pi := PortInfo{
			Name:         ps.name,
			Index:        ps.index,
			MTU:          ps.mtu,
			OperState:    netlink.LinkOperState(ps.operState).String(),
			STPState:     stpState(ps.protinfo[nl.IFLA_BRPORT_STATE]),
			Hairpin:      flag(ps.protinfo[nl.IFLA_BRPORT_MODE]),
			Isolated:     flag(ps.protinfo[nl.IFLA_BRPORT_ISOLATED]),
			Learning:     flag(ps.protinfo[nl.IFLA_BRPORT_LEARNING]),
			Flood:        flag(ps.protinfo[nl.IFLA_BRPORT_UNICAST_FLOOD]),
			GroupFwdMask: u16(ps.protinfo[nl.IFLA_BRPORT_GROUP_FWD_MASK]),
			VLANs:        ps.vlans,
		}
		for _, v := range ps.vlans {
			if v.PVID {
				pi.PVID = v.ID
			}
		}
		if l, ok := links[ps.index]; ok {
			pi.Type = l.Type()
			pi.MAC = l.Attrs().HardwareAddr.String()
			pi.Owner, _ = owner.Of(l)
		}
		info.Ports = append(info.Ports, pi)
	}
	slices.SortFunc(info.Ports, func(x, y PortInfo) int { return x.Index - y.Index })
	return info, nil
}

func flag(v []byte) bool { return len(v) > 0 && v[0] != 0 }

func u16(v []byte) uint16 {
	if len(v) < 2 {
		return 0
	}
	return native.Uint16(v)
}

// Port STP states, include/uapi/linux/if_bridge.h BR_STATE_*.
var stpStates = []string{"disabled", "listening", "learning", "forwarding", "blocking"}

func stpState(v []byte) string {
	if len(v) == 0 {
		return ""
	}
	if int(v[0]) < len(stpStates) {
		return stpStates[v[0]]
	}
	return fmt.Sprintf("state %d", v[0])
}
