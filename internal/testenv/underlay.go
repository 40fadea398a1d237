package testenv

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vmnet/vmnet/netns"
)

// Underlay makes n namespaces ("hosts") joined by a bridge in a further
// namespace, host i with 10.200.0.(i+1)/24 on its eth0 (and lo up): the
// simulated network between the hosts of a multi-host lab. It all goes
// when the test ends, with the namespaces.
func Underlay(t *testing.T, n int) []netns.Handle {
	t.Helper()
	sw := NetNS(t)
	hosts := make([]netns.Handle, n)
	for i := range hosts {
		hosts[i] = NetNS(t)
	}
	Do(t, sw, func() error {
		h := &netlink.Handle{}
		ul := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "ul"}}
		if err := h.LinkAdd(ul); err != nil {
			return err
		}
		if err := h.LinkSetUp(ul); err != nil {
			return err
		}
		for i, hn := range hosts {
			v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ul" + strconv.Itoa(i), MasterIndex: ul.Index},
				PeerName: "eth0", PeerNamespace: netlink.NsFd(int(hn))}
			if err := h.LinkAdd(v); err != nil {
				return fmt.Errorf("veth to host %d: %w", i, err)
			}
			if err := h.LinkSetUp(v); err != nil {
				return err
			}
		}
		return nil
	})
	for i, hn := range hosts {
		Do(t, hn, func() error {
			h := &netlink.Handle{}
			for _, name := range []string{"lo", "eth0"} {
				l, err := h.LinkByName(name)
				if err != nil {
					return err
				}
				if name == "eth0" {
					a, _ := netlink.ParseAddr(fmt.Sprintf("10.200.0.%d/24", i+1))
					if err := h.AddrAdd(l, a); err != nil {
						return err
					}
				}
				if err := h.LinkSetUp(l); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return hosts
}
