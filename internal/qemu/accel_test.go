package qemu

import (
	"os"
	"testing"
	"time"
)

// The probe must finish within its budget whatever /dev/kvm does, and a
// machine without /dev/kvm must report KVM unusable.
func TestProbeKVMBounded(t *testing.T) {
	start := time.Now()
	p := probeKVM(probeBudget)
	el := time.Since(start)
	t.Logf("KVM usable=%v elapsed=%v: %s", p.Usable, p.Elapsed, p.Reason)
	if el > 3*probeBudget {
		t.Fatalf("probe took %v, budget %v", el, probeBudget)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil && p.Usable {
		t.Fatalf("no /dev/kvm but probe says usable")
	}
	if p.Reason == "" {
		t.Fatalf("probe gave no reason")
	}
}
