package bridge_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vmnet/vmnet/bridge"
	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/tap"
)

// BenchmarkProvision100Taps creates 100 taps with 4 queues and a 12-byte
// vnet header each (what a 4-vCPU guest gets) and attaches them to a
// 9000-byte bridge. One op is all 100; ms/tap is the figure to keep under
// 10 (1 s per 100 taps).
//
// A multi-queue tap has 256 tx queues whatever Queues says, and bringing
// it up builds the default qdisc on each: 256 pfifo_fast with three
// 1000-slot rings, about 6 MB of slab and 2-3 ms per tap. The noqueue case
// gives the tap a noqueue root qdisc before AddPort brings it up, to show
// what that costs the tap package to avoid.
func BenchmarkProvision100Taps(b *testing.B) {
	b.Run("default-qdisc", func(b *testing.B) { provision(b, false) })
	b.Run("noqueue", func(b *testing.B) { provision(b, true) })
}

func provision(b *testing.B, noqueue bool) {
	const n = 100
	e := newEnv(b)
	if _, err := e.m.Ensure(bridge.Config{Name: "br0", MTU: 9000}); err != nil {
		b.Fatal(err)
	}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("vt%d", i)
	}
	var create, attach time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		taps := make([]*tap.Tap, 0, n)
		err := netns.Do(e.ns, func() error {
			for _, name := range names {
				t0 := time.Now()
				cfg := tap.NewConfig(name, 4)
				cfg.VnetHdrSize = 12
				t, err := tap.Create(cfg)
				if err != nil {
					return err
				}
				taps = append(taps, t)
				if noqueue {
					root := netlink.QdiscAttrs{LinkIndex: t.Index(), Parent: netlink.HANDLE_ROOT}
					if err := e.h.QdiscReplace(&netlink.GenericQdisc{QdiscAttrs: root, QdiscType: "noqueue"}); err != nil {
						return err
					}
				}
				t1 := time.Now()
				if err := e.m.AddPort("br0", bridge.PortConfig{Name: name}); err != nil {
					return err
				}
				create += t1.Sub(t0)
				attach += time.Since(t1)
			}
			return nil
		})
		b.StopTimer()
		for _, t := range taps {
			t.Close() // not persistent: the device goes with its last queue
		}
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	perTap := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / float64(b.N*n) }
	b.ReportMetric(perTap(b.Elapsed()), "ms/tap")
	b.ReportMetric(perTap(create), "create-ms/tap")
	b.ReportMetric(perTap(attach), "attach-ms/tap")
}
