package qemu

import (
	"os"
	"strings"
	"time"
)

func rdtsc() uint64

// hostTSCkHz measures the host's TSC rate against the monotonic clock.
// Under TCG the guest's TSC is the host's, so this is what a microvm guest
// (no HPET, no ACPI PM timer) must be told with tsc_early_khz: its PIT
// calibration fails on a busy host and the kernel then hangs without a
// clock. 0 means unknown (no invariant TSC).
func hostTSCkHz() int {
	if b, err := os.ReadFile("/proc/cpuinfo"); err != nil || !strings.Contains(string(b), " constant_tsc") {
		return 0
	}
	best := 0
	for i := 0; i < 3; i++ {
		t0, c0 := time.Now(), rdtsc()
		time.Sleep(20 * time.Millisecond)
		t1, c1 := time.Now(), rdtsc()
		d := t1.Sub(t0)
		if d <= 0 || d > 40*time.Millisecond { // preempted: try again
			continue
		}
		khz := int(float64(c1-c0) / float64(d.Nanoseconds()) * 1e6)
		if best == 0 || khz < best {
			best = khz
		}
	}
	return best
}
