package tap

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/nlbatch"
)

// step names one rtnetlink request that Create sends, as its error says
// what failed ("set MTU 9000"). The text is only made when a step fails:
// formatting every name up front cost more than building the requests.
type step struct {
	format string // with one %d (n), %s (s) or %q (s) verb, or none
	n      int
	s      string
}

func (s step) what() string {
	switch {
	case s.s != "":
		return fmt.Sprintf(s.format, s.s)
	case s.n != 0:
		return fmt.Sprintf(s.format, s.n)
	}
	return s.format
}

// linkSteps queues in b the requests that give a new link (by index)
// cfg's settings, one setting each so that a refusal names it, in the
// order the kernel must see them: the root qdisc first, while the link
// is still down, so that the kernel never builds its default one; up
// last, when up is true. It appends the steps' names to names.
func linkSteps(b *nlbatch.Batch, names []step, index int, cfg Config, up bool) []step {
	if cfg.Qdisc == QdiscNoqueue {
		noqueue(b, index)
		names = append(names, step{format: "set qdisc noqueue"})
	}
	if cfg.NoLinkLocal {
		// Before the MTU: a link below IPv6's minimum MTU (1280) has no
		// IPv6 state to change. A kernel without IPv6 (ipv6.disable=1)
		// refuses with EAFNOSUPPORT, and then gives no address either.
		setLink(b, index, false, unix.EAFNOSUPPORT)
		spec := b.Nest(unix.IFLA_AF_SPEC)
		inet6 := b.Nest(unix.AF_INET6)
		// Address generation mode none (`ip link set X addrgenmode
		// none`): when the link comes up the kernel gives it no
		// link-local address, so it runs no duplicate address
		// detection, joins no solicited-node group and sends no router
		// solicitation.
		b.Attr(unix.IFLA_INET6_ADDR_GEN_MODE, []byte{nl.IN6_ADDR_GEN_MODE_NONE})
		b.EndNest(inet6)
		b.EndNest(spec)
		names = append(names, step{format: "turn off the IPv6 link-local address"})
	}
	if cfg.MTU > 0 {
		setLink(b, index, false, 0)
		b.AttrU32(unix.IFLA_MTU, uint32(cfg.MTU))
		names = append(names, step{format: "set MTU %d", n: cfg.MTU})
	}
	if cfg.MAC != nil {
		setLink(b, index, false, 0)
		b.Attr(unix.IFLA_ADDRESS, cfg.MAC)
		names = append(names, step{format: "set MAC %s", s: cfg.MAC.String()})
	}
	if cfg.TxQueueLen > 0 {
		setLink(b, index, false, 0)
		b.AttrU32(unix.IFLA_TXQLEN, uint32(cfg.TxQueueLen))
		names = append(names, step{format: "set txqueuelen %d", n: cfg.TxQueueLen})
	}
	// The owner tag, as owner.Set records it (Config's check validated it).
	setLink(b, index, false, 0)
	b.AttrString(unix.IFLA_IFALIAS, cfg.Tag)
	names = append(names, step{format: "tag owner %q", s: cfg.Tag})
	if up {
		names = setUp(b, names, index)
	}
	return names
}

// setUp queues bringing the link up.
func setUp(b *nlbatch.Batch, names []step, index int) []step {
	setLink(b, index, true, 0)
	return append(names, step{format: "set up"})
}

// setLink starts an RTM_SETLINK on the link index that, when up is true,
// brings the link up; its attributes follow.
func setLink(b *nlbatch.Batch, index int, up bool, ok unix.Errno) {
	var flags uint32
	if up {
		flags = unix.IFF_UP
	}
	ifi := nlbatch.IfInfomsg(unix.AF_UNSPEC, int32(index), flags, flags)
	b.Begin(unix.RTM_SETLINK, 0, ifi[:], ok)
}

// noqueue replaces the root qdisc of the link with noqueue
// (`tc qdisc replace dev X root noqueue`).
func noqueue(b *nlbatch.Batch, index int) {
	msg := nl.TcMsg{Family: nl.FAMILY_ALL, Ifindex: int32(index), Parent: netlink.HANDLE_ROOT}
	b.Begin(unix.RTM_NEWQDISC, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, msg.Serialize(), 0)
	b.AttrString(nl.TCA_KIND, "noqueue")
}
