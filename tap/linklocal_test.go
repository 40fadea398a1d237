package tap

import (
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/vmnet/vmnet/internal/testenv"
)

// TestNoLinkLocal: a tap created with NoLinkLocal comes up without an
// IPv6 link-local address, also when its MTU is below IPv6's minimum;
// one created without it gets the kernel's fe80:: address, so the check
// can tell the two apart. The kernel judges through an address dump.
func TestNoLinkLocal(t *testing.T) {
	t.Parallel()
	ns := testenv.NetNS(t) // IPv6 on, unlike newNS
	testenv.Do(t, ns, func() error {
		for _, c := range []struct {
			name    string
			noLL    bool
			mtu     int
			queues  int
			wantLLs int
		}{
			{"ll0", false, 0, 1, 1},
			{"noll0", true, 0, 1, 0},
			{"noll4", true, 9000, 4, 0},
			{"noll576", true, 576, 1, 0},
		} {
			cfg := NewConfig(c.name, c.queues)
			cfg.NoLinkLocal, cfg.MTU, cfg.Up = c.noLL, c.mtu, true
			mustCreate(t, cfg)
			link, err := netlink.LinkByName(c.name)
			if err != nil {
				return err
			}
			addrs, err := netlink.AddrList(link, netlink.FAMILY_V6)
			if err != nil {
				return err
			}
			lls := 0
			for _, a := range addrs {
				if a.IP.IsLinkLocalUnicast() {
					lls++
				}
			}
			if lls != c.wantLLs || len(addrs) != c.wantLLs {
				t.Errorf("tap %s (NoLinkLocal %v, MTU %d): IPv6 addresses %v, want %d link-local and nothing else", c.name, c.noLL, c.mtu, addrs, c.wantLLs)
			}
		}
		return nil
	})
}
