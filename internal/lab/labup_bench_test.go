package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmnet/vmnet/images"
	"github.com/vmnet/vmnet/internal/qemu"
	"github.com/vmnet/vmnet/internal/testenv"
)

// benchLabEnv lists the lab sizes BenchmarkLabUp runs, comma-separated
// (default 2,8); VMNET_BENCH_LAB=2,8,32 adds the 32-guest lab, which takes
// minutes and is not part of a plain `-bench .` run.
const benchLabEnv = "VMNET_BENCH_LAB"

func benchLabSizes(b *testing.B) []int {
	s := os.Getenv(benchLabEnv)
	if s == "" {
		return []int{2, 8}
	}
	var sizes []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 2 || n > 200 {
			b.Fatalf("%s=%q: want lab sizes from 2 to 200, comma-separated (e.g. 2,8,32)", benchLabEnv, s)
		}
		sizes = append(sizes, n)
	}
	return sizes
}

// benchVmnet builds the vmnet binary into a directory removed when b
// ends: the benchmark measures `vmnet up --detach` as a user runs it,
// supervisor included.
func benchVmnet(b *testing.B) string {
	b.Helper()
	gobin := testenv.RequireProgram(b, "go")
	bin := filepath.Join(b.TempDir(), "vmnet")
	if out, err := exec.Command(gobin, "build", "-o", bin, "../../cmd/vmnet").CombinedOutput(); err != nil {
		b.Fatalf("build vmnet: %v\n%s", err, out)
	}
	return bin
}

// benchLabFile writes a lab of n test-image guests (256M, TCG) on one
// network, guest i at 10.97.0.(10+i), and returns its path.
func benchLabFile(b *testing.B, dir, name string, n int) string {
	b.Helper()
	var s strings.Builder
	fmt.Fprintf(&s, "[lab]\nname = %q\nstate_dir = %q\n[defaults]\nmemory = \"256M\"\naccel = \"tcg\"\n", name, filepath.Join(dir, "state"))
	s.WriteString("[[network]]\nname = \"lan\"\naddresses = [\"10.97.0.1/24\"]\n")
	for i := range n {
		fmt.Fprintf(&s, "[[vm]]\nname = \"g%d\"\n  [[vm.nic]]\n  network = \"lan\"\n  address = [\"10.97.0.%d/24\"]\n", i, 10+i)
	}
	p := filepath.Join(dir, name+".toml")
	if err := os.WriteFile(p, []byte(s.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	return p
}

// guestCost is what one lab's QEMU processes cost on the host.
type guestCost struct {
	rssKiB, pssKiB int64   // summed over the guests (smaps_rollup)
	cpu            float64 // seconds of CPU, summed
	guests         int
}

// labPIDs returns the PIDs of the lab's QEMU processes (their pidfiles
// are in the VMs' run directories).
func labPIDs(b *testing.B, stateDir string) []int {
	b.Helper()
	pidfiles, _ := filepath.Glob(filepath.Join(stateDir, "vm-*", qemu.PidfileName))
	var pids []int
	for _, pf := range pidfiles {
		raw, err := os.ReadFile(pf)
		if err != nil {
			b.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.Fields(string(raw))[0])
		if err != nil {
			b.Fatalf("%s: %v", pf, err)
		}
		pids = append(pids, pid)
	}
	return pids
}

// labCPU is the CPU time the lab's QEMU processes have used, summed.
func labCPU(b *testing.B, pids []int) float64 {
	b.Helper()
	var s float64
	for _, pid := range pids {
		cpu, err := procCPU(pid)
		if err != nil {
			b.Fatal(err)
		}
		s += cpu.Seconds()
	}
	return s
}

// labCost reads the smaps_rollup and CPU times of the lab's QEMU
// processes.
func labCost(b *testing.B, stateDir string) guestCost {
	b.Helper()
	pids := labPIDs(b, stateDir)
	c := guestCost{cpu: labCPU(b, pids), guests: len(pids)}
	for _, pid := range pids {
		sm, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
		if err != nil {
			b.Fatalf("QEMU %d: %v", pid, err)
		}
		for _, l := range strings.Split(string(sm), "\n") {
			f := strings.Fields(l)
			if len(f) < 2 {
				continue
			}
			v, _ := strconv.ParseInt(f[1], 10, 64)
			switch f[0] {
			case "Rss:":
				c.rssKiB += v
			case "Pss:":
				c.pssKiB += v
			}
		}
	}
	return c
}

// benchColdToPing holds the cold runs' seconds to a ping per lab size, for
// the warm run's ratio.
var benchColdToPing = map[int]float64{}

// BenchmarkLabUp (issue 12): `vmnet up --detach` of a lab of 2 and 8
// test-image guests (32 with VMNET_BENCH_LAB=2,8,32) until every guest
// answers a ping from its neighbour (guest i pings guest i+1, the last
// pings the first, all at once with `vmnet sh`), then `vmnet down`; cold
// (--cold) and warm (restored from the snapshot of the guests' shape,
// saved by an untimed one-guest lab first) side by side. ns/op is up to
// the last ping; the metrics:
//
//	s-to-ready     `vmnet up --detach` returned (every guest ready)
//	s-to-ping      every guest has pinged its neighbour
//	s-down         `vmnet down`
//	CPU-s/guest    QEMU's CPU time per guest, start to the last ping
//	CPU-s/guest-ready  the same, start to s-to-ready
//	RSS-MiB/guest, PSS-MiB/guest  memory per guest (smaps_rollup) after the pings
//	given-MiB/guest  the memory each guest was given (256)
//	warm/cold      (warm runs) s-to-ping against the cold run before it
//
// Run it with
//
//	go test -run '^$' -bench LabUp -benchtime 3x ./internal/lab/
//
// in a private /run (TestMain) and a network namespace of its own.
func BenchmarkLabUp(b *testing.B) {
	testenv.RequirePrivateRun(b)
	testenv.RequireProgram(b, "qemu-system-x86_64")
	if _, err := images.Ensure(context.Background(), images.Options{}); err != nil {
		b.Fatal(err)
	}
	bin := benchVmnet(b)
	for _, n := range benchLabSizes(b) {
		for _, mode := range []string{"cold", "warm"} {
			b.Run(fmt.Sprintf("guests=%d/%s", n, mode), func(b *testing.B) { benchLabUp(b, bin, n, mode == "cold") })
		}
	}
}

func benchLabUp(b *testing.B, bin string, n int, cold bool) {
	ns := testenv.NetNS(b)
	nsArg := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns))
	vmnet := func(args ...string) ([]byte, error) {
		return exec.Command(bin, append([]string{"--netns", nsArg, "-q"}, args...)...).CombinedOutput()
	}
	var flags []string
	if cold {
		flags = append(flags, "--cold")
	} else {
		// The first boot of a shape saves its snapshot: not timed.
		dir := b.TempDir()
		if out, err := vmnet("up", benchLabFile(b, dir, "lw", 1), "--detach"); err != nil {
			vmnet("down", "lw")
			b.Fatalf("vmnet up (saving the snapshot): %v\n%s", err, out)
		}
		if out, err := vmnet("down", "lw"); err != nil {
			b.Fatalf("vmnet down: %v\n%s", err, out)
		}
	}
	name := fmt.Sprintf("lu%d", n)
	var ready, ping, down time.Duration
	var cost guestCost
	var readyCPU float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dir := b.TempDir()
		file := benchLabFile(b, dir, name, n)
		start := time.Now()
		if out, err := vmnet(append([]string{"up", file, "--detach"}, flags...)...); err != nil {
			b.StopTimer()
			vmnet("down", name)
			b.Fatalf("vmnet up: %v\n%s", err, out)
		}
		ready += time.Since(start)
		// What the restores (or boots) cost against what the pings
		// add: read while the clock is stopped, and left out of the
		// time to the pings.
		b.StopTimer()
		t := time.Now()
		readyCPU += labCPU(b, labPIDs(b, filepath.Join(dir, "state")))
		start = start.Add(time.Since(t))
		b.StartTimer()
		errs := make([]error, n)
		var wg sync.WaitGroup
		for g := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				peer := fmt.Sprintf("10.97.0.%d", 10+(g+1)%n)
				if out, err := vmnet("sh", name, fmt.Sprintf("g%d", g), "--", "ping -c 1 -W 10 "+peer); err != nil {
					errs[g] = fmt.Errorf("g%d ping %s: %v\n%s", g, peer, err, out)
				}
			}()
		}
		wg.Wait()
		ping += time.Since(start)
		b.StopTimer()
		c := labCost(b, filepath.Join(dir, "state"))
		cost.rssKiB += c.rssKiB
		cost.pssKiB += c.pssKiB
		cost.cpu += c.cpu
		cost.guests += c.guests
		t = time.Now()
		out, err := vmnet("down", name)
		down += time.Since(t)
		for _, e := range errs {
			if e != nil {
				b.Fatal(e)
			}
		}
		if err != nil {
			b.Fatalf("vmnet down: %v\n%s", err, out)
		}
		if c.guests != n {
			b.Fatalf("found %d QEMU processes of the lab's %d guests", c.guests, n)
		}
		b.StartTimer()
	}
	per := func(d time.Duration) float64 { return d.Seconds() / float64(b.N) }
	b.ReportMetric(per(ready), "s-to-ready")
	b.ReportMetric(per(ping), "s-to-ping")
	b.ReportMetric(per(down), "s-down")
	g := float64(cost.guests)
	b.ReportMetric(cost.cpu/g, "CPU-s/guest")
	b.ReportMetric(readyCPU/g, "CPU-s/guest-ready")
	b.ReportMetric(float64(cost.rssKiB)/1024/g, "RSS-MiB/guest")
	b.ReportMetric(float64(cost.pssKiB)/1024/g, "PSS-MiB/guest")
	b.ReportMetric(256, "given-MiB/guest")
	if cold {
		benchColdToPing[n] = per(ping)
	} else if c := benchColdToPing[n]; c > 0 {
		b.ReportMetric(per(ping)/c, "warm/cold")
	}
}
