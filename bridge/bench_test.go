package bridge_test

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vmnet/vmnet/bridge"
	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/tap"
)

// BenchmarkProvision100Taps creates 100 taps with 4 queues and a 12-byte
// vnet header each (what a 4-vCPU guest gets) and attaches them to a
// 9000-byte bridge. One op is all 100; ms/tap is the figure to compare.
//
// A multi-queue tap has 256 tx queues whatever Queues says, and bringing
// it up with the kernel's default qdisc builds 256 pfifo_fast with three
// 1000-slot rings, about 6 MB of slab and 2-3 ms per tap: the tap package
// installs noqueue instead unless asked not to. The iproute2 case is the
// reference, a shell loop of `ip tuntap add ... multi_queue vnet_hdr` and
// `ip link set ... master br0 up` as lab scripts do it; the target is
// vmnet at most 1/10 of its time, measured in the same run.
func BenchmarkProvision100Taps(b *testing.B) {
	b.Run("vmnet", func(b *testing.B) { provision(b, tap.QdiscNoqueue) })
	b.Run("vmnet-default-qdisc", func(b *testing.B) { provision(b, tap.QdiscDefault) })
	b.Run("iproute2", provisionIPRoute2)
}

func provisionIPRoute2(b *testing.B) {
	const n = 100
	e := newEnv(b)
	if _, err := e.m.Ensure(bridge.Config{Name: "br0", MTU: 9000}); err != nil {
		b.Fatal(err)
	}
	var up, down strings.Builder
	for i := range n {
		fmt.Fprintf(&up, "ip tuntap add vt%d mode tap multi_queue vnet_hdr && ip link set vt%d mtu 9000 master br0 up && ", i, i)
		fmt.Fprintf(&down, "ip link del vt%d && ", i)
	}
	up.WriteString("true")
	down.WriteString("true")
	for range b.N {
		err := netns.Do(e.ns, func() error {
			if out, err := exec.Command("sh", "-c", up.String()).CombinedOutput(); err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			b.StopTimer()
			defer b.StartTimer()
			if out, err := exec.Command("sh", "-c", down.String()).CombinedOutput(); err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed())/float64(time.Millisecond)/float64(b.N*n), "ms/tap")
}

func provision(b *testing.B, qdisc tap.Qdisc) {
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
				cfg.VnetHdrSize, cfg.Qdisc = 12, qdisc
				t, err := tap.Create(cfg)
				if err != nil {
					return err
				}
				taps = append(taps, t)
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
