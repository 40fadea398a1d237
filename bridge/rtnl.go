package bridge

import (
	"encoding/binary"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vmnet/vmnet/internal/nlbatch"
	"github.com/vmnet/vmnet/internal/nlretry"
	"golang.org/x/sys/unix"
)

// vishvananda/netlink neither sets nor reports IFLA_BR_STP_STATE and does
// not parse the per-port group_fwd_mask, so the Manager keeps one raw
// rtnetlink socket of its own in the same namespace for those messages.

// brOpts are the bridge-wide options as the kernel reports them in
// IFLA_LINKINFO/IFLA_INFO_DATA. Fields whose attribute was absent are nil:
// the kernel only reports an option when it was built with the feature.
type brOpts struct {
	stp           uint32
	vlanFiltering *bool
	defaultPVID   *uint16 // absent without CONFIG_BRIDGE_VLAN_FILTERING
	vlanProtocol  *uint16
	groupFwdMask  uint16
	mcastSnooping *bool // absent without CONFIG_BRIDGE_IGMP_SNOOPING
}

// portState is one bridge port as reported by an AF_BRIDGE dump.
type portState struct {
	index, master int
	name          string
	mtu           int
	operState     uint8
	protinfo      map[uint16][]byte
	vlans         []VLAN
}

func (m *Manager) request(proto, flags int) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(proto, flags)
	req.Sockets = m.socks
	return req
}

// linkOpts fetches the bridge options of the link with the given index.
func (m *Manager) linkOpts(index int) (brOpts, error) {
	var o brOpts
	req := m.request(unix.RTM_GETLINK, 0)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	req.AddData(msg)
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return o, err
	}
	if len(msgs) != 1 {
		return o, fmt.Errorf("RTM_GETLINK returned %d messages", len(msgs))
	}
	attrs, err := nl.ParseRouteAttr(msgs[0][unix.SizeofIfInfomsg:])
	if err != nil {
		return o, err
	}
	data, ok := nested(attrs, unix.IFLA_LINKINFO, nl.IFLA_INFO_DATA)
	if !ok {
		return o, fmt.Errorf("no IFLA_INFO_DATA in the kernel's answer")
	}
	for _, a := range data {
		v := a.Value
		switch a.Attr.Type {
		case nl.IFLA_BR_STP_STATE:
			if len(v) >= 4 {
				o.stp = native.Uint32(v)
			}
		case nl.IFLA_BR_VLAN_FILTERING:
			if len(v) >= 1 {
				b := v[0] != 0
				o.vlanFiltering = &b
			}
		case nl.IFLA_BR_VLAN_DEFAULT_PVID:
			if len(v) >= 2 {
				p := native.Uint16(v)
				o.defaultPVID = &p
			}
		case nl.IFLA_BR_VLAN_PROTOCOL:
			if len(v) >= 2 {
				p := binary.BigEndian.Uint16(v)
				o.vlanProtocol = &p
			}
		case nl.IFLA_BR_GROUP_FWD_MASK:
			if len(v) >= 2 {
				o.groupFwdMask = native.Uint16(v)
			}
		case nl.IFLA_BR_MCAST_SNOOPING:
			if len(v) >= 1 {
				b := v[0] != 0
				o.mcastSnooping = &b
			}
		}
	}
	return o, nil
}

// setBridgeOpt changes one bridge option, as `ip link set BR type bridge
// OPT VAL` does. One option per message, so that an error names it.
func (m *Manager) setBridgeOpt(index int, attr int, val []byte) error {
	req := m.request(unix.RTM_NEWLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	req.AddData(msg)
	li := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	li.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("bridge"))
	data := li.AddRtAttr(nl.IFLA_INFO_DATA, nil)
	data.AddRtAttr(attr, val)
	req.AddData(li)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// portOptsReq sets bridge-port flags in one AF_BRIDGE RTM_SETLINK, as
// `bridge link set dev PORT ...` does.
func (m *Manager) portOptsReq(index int, opts map[int][]byte) *nl.NetlinkRequest {
	req := m.request(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_BRIDGE)
	msg.Index = int32(index)
	req.AddData(msg)
	pi := nl.NewRtAttr(unix.IFLA_PROTINFO|unix.NLA_F_NESTED, nil)
	for attr, val := range opts {
		pi.AddRtAttr(attr, val)
	}
	req.AddData(pi)
	return req
}

// ports dumps every bridge port in the namespace with its flags and VLANs
// (`bridge -d link show` plus `bridge vlan show` in one dump).
func (m *Manager) ports() ([]portState, error) {
	return nlretry.Do(func() ([]portState, error) {
		req := m.request(unix.RTM_GETLINK, unix.NLM_F_DUMP)
		req.AddData(nl.NewIfInfomsg(unix.AF_BRIDGE))
		req.AddData(nl.NewRtAttr(unix.IFLA_EXT_MASK, nl.Uint32Attr(nl.RTEXT_FILTER_BRVLAN)))
		msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
		if err != nil && len(msgs) == 0 {
			return nil, err
		}
		var out []portState
		for _, raw := range msgs {
			ifi := nl.DeserializeIfInfomsg(raw)
			attrs, perr := nl.ParseRouteAttr(raw[ifi.Len():])
			if perr != nil {
				return nil, perr
			}
			p := portState{index: int(ifi.Index)}
			isPort := false
			for _, a := range attrs {
				switch a.Attr.Type &^ unix.NLA_F_NESTED {
				case unix.IFLA_IFNAME:
					p.name = nl.BytesToString(a.Value)
				case unix.IFLA_MASTER:
					p.master = int(native.Uint32(a.Value))
				case unix.IFLA_MTU:
					p.mtu = int(native.Uint32(a.Value))
				case unix.IFLA_OPERSTATE:
					p.operState = a.Value[0]
				case unix.IFLA_PROTINFO:
					isPort = true
					p.protinfo = map[uint16][]byte{}
					inner, perr := nl.ParseRouteAttr(a.Value)
					if perr != nil {
						return nil, perr
					}
					for _, ia := range inner {
						p.protinfo[ia.Attr.Type&^unix.NLA_F_NESTED] = ia.Value
					}
				case unix.IFLA_AF_SPEC:
					inner, perr := nl.ParseRouteAttr(a.Value)
					if perr != nil {
						return nil, perr
					}
					p.vlans = parseVLANs(inner)
				}
			}
			if isPort && p.master != p.index {
				out = append(out, p)
			}
		}
		return out, err
	})
}

// parseVLANs turns IFLA_BRIDGE_VLAN_INFO entries, which may come as
// RANGE_BEGIN/RANGE_END pairs, into one VLAN per id.
func parseVLANs(attrs []syscall.NetlinkRouteAttr) []VLAN {
	var out []VLAN
	var begin *nl.BridgeVlanInfo
	for _, a := range attrs {
		if a.Attr.Type != nl.IFLA_BRIDGE_VLAN_INFO || len(a.Value) < nl.SizeofBridgeVlanInfo {
			continue
		}
		vi := *nl.DeserializeBridgeVlanInfo(a.Value)
		switch {
		case vi.Flags&nl.BRIDGE_VLAN_INFO_RANGE_BEGIN != 0:
			begin = &vi
		case vi.Flags&nl.BRIDGE_VLAN_INFO_RANGE_END != 0 && begin != nil:
			for id := begin.Vid; id <= vi.Vid && id != 0; id++ {
				out = append(out, vlanOf(id, vi.Flags))
			}
			begin = nil
		default:
			out = append(out, vlanOf(vi.Vid, vi.Flags))
		}
	}
	return out
}

func vlanOf(id, flags uint16) VLAN {
	return VLAN{
		ID:       id,
		PVID:     flags&nl.BRIDGE_VLAN_INFO_PVID != 0,
		Untagged: flags&nl.BRIDGE_VLAN_INFO_UNTAGGED != 0,
	}
}

// nested walks a path of nested attributes.
func nested(attrs []syscall.NetlinkRouteAttr, path ...uint16) ([]syscall.NetlinkRouteAttr, bool) {
	for _, typ := range path {
		found := false
		for _, a := range attrs {
			if a.Attr.Type&^unix.NLA_F_NESTED == typ {
				inner, err := nl.ParseRouteAttr(a.Value)
				if err != nil {
					return nil, false
				}
				attrs, found = inner, true
				break
			}
		}
		if !found {
			return nil, false
		}
	}
	return attrs, true
}

var native = nl.NativeEndian()

func boolAttr(b bool) []byte {
	if b {
		return []byte{1}
	}
	return []byte{0}
}

// isBridge reports whether link is a Linux bridge.
func isBridge(link netlink.Link) bool { return link.Type() == "bridge" }

// linkHead is the part of a link AddPort needs to decide what to change,
// read from one RTM_GETLINK without stats and parsed by hand: turning the
// kernel's whole description into a netlink.Link took longer than the
// kernel took to write it.
type linkHead struct {
	index, mtu, master int
	arpType            uint16
	up                 bool
	kind               string // IFLA_INFO_KIND: "bridge", "tun", "veth", ...
}

// getLink queues in b a request for the link called name, without its
// counters.
func getLink(b *nlbatch.Batch, name string) {
	ifi := nlbatch.IfInfomsg(unix.AF_UNSPEC, 0, 0, 0)
	b.Begin(unix.RTM_GETLINK, 0, ifi[:], 0)
	b.AttrU32(unix.IFLA_EXT_MASK, rtextFilterSkipStats)
	b.AttrString(unix.IFLA_IFNAME, name)
}

// parseHead reads a linkHead from an RTM_NEWLINK body.
func parseHead(body []byte) (linkHead, bool) {
	var h linkHead
	if len(body) < unix.SizeofIfInfomsg {
		return h, false
	}
	ifi := nl.DeserializeIfInfomsg(body)
	h.index, h.arpType, h.up = int(ifi.Index), ifi.Type, ifi.Flags&unix.IFF_UP != 0
	nlbatch.Attrs(body[unix.SizeofIfInfomsg:], func(typ uint16, v []byte) {
		switch {
		case typ == unix.IFLA_MTU && len(v) >= 4:
			h.mtu = int(native.Uint32(v))
		case typ == unix.IFLA_MASTER && len(v) >= 4:
			h.master = int(native.Uint32(v))
		case typ == unix.IFLA_LINKINFO:
			nlbatch.Attrs(v, func(typ uint16, v []byte) {
				if typ == nl.IFLA_INFO_KIND {
					h.kind = nl.BytesToString(v)
				}
			})
		}
	})
	return h, true
}

// rtextFilterSkipStats (RTEXT_FILTER_SKIP_STATS) leaves the counters out
// of an RTM_GETLINK answer.
const rtextFilterSkipStats = 1 << 3
