package tap

import (
	"fmt"

	"github.com/vishvananda/netlink"
)

// Qdisc is the root queueing discipline a new tap gets.
type Qdisc uint8

const (
	// QdiscNoqueue gives the tap no qdisc, as libvirt does for its taps:
	// the reader's ring is the only queue. A qdisc on a tap only adds
	// buffering, and building the kernel's default (one pfifo_fast per tx
	// queue, 256 of them on a multi-queue tap) is most of what creating a
	// tap costs.
	QdiscNoqueue Qdisc = iota
	// QdiscDefault keeps what the kernel attaches when the link comes up.
	QdiscDefault
)

// Qdiscs lists the names ParseQdisc takes.
var Qdiscs = []string{"noqueue", "default"}

func (q Qdisc) String() string {
	if int(q) < len(Qdiscs) {
		return Qdiscs[q]
	}
	return fmt.Sprintf("qdisc(%d)", uint8(q))
}

// ParseQdisc reads "noqueue" or "default".
func ParseQdisc(s string) (Qdisc, error) {
	for i, n := range Qdiscs {
		if s == n {
			return Qdisc(i), nil
		}
	}
	return 0, fmt.Errorf("qdisc %q: want noqueue or default", s)
}

// setQdisc installs q as the root qdisc of a link that is still down, so
// the kernel never builds its default one.
func setQdisc(h *netlink.Handle, link netlink.Link, q Qdisc) error {
	if q != QdiscNoqueue {
		return nil
	}
	root := netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.HANDLE_ROOT}
	if err := h.QdiscReplace(&netlink.GenericQdisc{QdiscAttrs: root, QdiscType: "noqueue"}); err != nil {
		return fmt.Errorf("tap %s: set qdisc noqueue: %w", link.Attrs().Name, err)
	}
	return nil
}

// rootOf names the root qdisc among qs as tc shows it ("noqueue", "mq",
// "pfifo_fast"; "noop" while a link that never came up has none), or ""
// when the kernel reports none.
func rootOf(qs []netlink.Qdisc) string {
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_ROOT {
			return q.Type()
		}
	}
	return ""
}
