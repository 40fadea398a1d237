package tap

import (
	"flag"
	"os"
	"testing"

	"github.com/vmnet/vmnet/internal/testenv"
)

// TestMain lets up to 8 parallel tests run at once whatever the CPU
// count: each has its own network namespace, and most of their time is
// spent waiting (netem delays, tbf's rate, reads with deadlines,
// programs such as tc and ethtool), which then overlaps with the others'
// work instead of adding up in a one-vCPU guest.
func TestMain(m *testing.M) {
	flag.Parse()
	testenv.RaiseParallel(8)
	os.Exit(m.Run())
}
