package qemu

import "testing"

func TestHostTSC(t *testing.T) {
	khz := hostTSCkHz()
	t.Logf("host TSC: %d kHz", khz)
	if khz != 0 && (khz < 100_000 || khz > 10_000_000) {
		t.Fatalf("implausible TSC rate %d kHz", khz)
	}
}
