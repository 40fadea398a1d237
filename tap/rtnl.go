package tap

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// step is one rtnetlink request that Create sends, named as its error
// says what failed ("set MTU 9000").
type step struct {
	what string
	req  *nl.NetlinkRequest
	ok   unix.Errno // a refusal that still meets the step's goal, or 0
}

// linkSteps are the requests that give a new link (by index) cfg's
// settings, one setting each so that a refusal names it, in the order
// the kernel must see them: the root qdisc first, while the link is still
// down, so that the kernel never builds its default one; up last, when
// up is true.
func linkSteps(index int, cfg Config, up bool) []step {
	var steps []step
	if cfg.Qdisc == QdiscNoqueue {
		steps = append(steps, step{what: "set qdisc noqueue", req: noqueueReq(index)})
	}
	if cfg.NoLinkLocal {
		// Before the MTU: a link below IPv6's minimum MTU (1280) has no
		// IPv6 state to change. A kernel without IPv6 (ipv6.disable=1)
		// refuses with EAFNOSUPPORT, and then gives no address either.
		steps = append(steps, step{"turn off the IPv6 link-local address", addrGenNoneReq(index), unix.EAFNOSUPPORT})
	}
	if cfg.MTU > 0 {
		steps = append(steps, step{what: fmt.Sprintf("set MTU %d", cfg.MTU), req: linkReq(index, false, nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(cfg.MTU))))})
	}
	if cfg.MAC != nil {
		steps = append(steps, step{what: fmt.Sprintf("set MAC %s", cfg.MAC), req: linkReq(index, false, nl.NewRtAttr(unix.IFLA_ADDRESS, cfg.MAC))})
	}
	if cfg.TxQueueLen > 0 {
		steps = append(steps, step{what: fmt.Sprintf("set txqueuelen %d", cfg.TxQueueLen), req: linkReq(index, false, nl.NewRtAttr(unix.IFLA_TXQLEN, nl.Uint32Attr(uint32(cfg.TxQueueLen))))})
	}
	// The owner tag, as owner.Set records it (Config's check validated it).
	steps = append(steps, step{what: fmt.Sprintf("tag owner %q", cfg.Tag), req: linkReq(index, false, nl.NewRtAttr(unix.IFLA_IFALIAS, []byte(cfg.Tag)))})
	if up {
		steps = append(steps, step{what: "set up", req: linkReq(index, true)})
	}
	return steps
}

// linkReq is one RTM_SETLINK on the link index that sets attrs and, when
// up is true, brings the link up.
func linkReq(index int, up bool, attrs ...*nl.RtAttr) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	if up {
		msg.Flags, msg.Change = unix.IFF_UP, unix.IFF_UP
	}
	req.AddData(msg)
	for _, a := range attrs {
		req.AddData(a)
	}
	return req
}

// noqueueReq replaces the root qdisc of the link with noqueue
// (`tc qdisc replace dev X root noqueue`).
func noqueueReq(index int) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.RTM_NEWQDISC, unix.NLM_F_CREATE|unix.NLM_F_REPLACE|unix.NLM_F_ACK)
	msg := &nl.TcMsg{Family: nl.FAMILY_ALL, Ifindex: int32(index), Parent: netlink.HANDLE_ROOT}
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("noqueue")))
	return req
}

// addrGenNoneReq sets the link's IPv6 address generation mode to none
// (`ip link set X addrgenmode none`): when it comes up, the kernel gives
// it no link-local address, so it runs no duplicate address detection,
// joins no solicited-node group and sends no router solicitation.
func addrGenNoneReq(index int) *nl.NetlinkRequest {
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	spec.AddRtAttr(unix.AF_INET6, nil).AddRtAttr(unix.IFLA_INET6_ADDR_GEN_MODE, []byte{nl.IN6_ADDR_GEN_MODE_NONE})
	return linkReq(index, false, spec)
}
