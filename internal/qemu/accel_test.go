package qemu

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The probe must finish within its bounds whatever /dev/kvm does, and a
// machine without /dev/kvm must report KVM unusable. Where /dev/kvm
// emulates (this machine class), the verdict comes from the CPU time the
// probe burned, long before the old quarter-second wall budget.
func TestProbeKVMBounded(t *testing.T) {
	start := time.Now()
	p := probeKVMDevice()
	el := time.Since(start)
	t.Logf("KVM usable=%v lasting=%v elapsed=%v cpu=%v took %v: %s", p.Usable, p.Lasting, p.Elapsed, p.CPU, el, p.Reason)
	if el > probeMaxWait+2*probeBudget {
		t.Fatalf("probe took %v, at most %v allowed", el, probeMaxWait)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil && p.Usable {
		t.Fatalf("no /dev/kvm but probe says usable")
	}
	if p.Reason == "" {
		t.Fatalf("probe gave no reason")
	}
	if p.Usable && p.CPU >= probeCPU {
		t.Errorf("usable after %v of CPU (the limit is %v)", p.CPU, probeCPU)
	}
	if !p.Usable && p.CPU >= probeCPU && !p.Lasting {
		t.Errorf("an emulating /dev/kvm (%v of CPU) is not a lasting verdict", p.CPU)
	}
}

// spin keeps every CPU of the process busy until stop is closed; it
// returns once the spinners run.
func spin(stop <-chan struct{}, wg *sync.WaitGroup) {
	var running sync.WaitGroup
	for i := 0; i < 2*runtime.GOMAXPROCS(0); i++ {
		wg.Add(1)
		running.Add(1)
		go func() {
			defer wg.Done()
			running.Done()
			x := 0
			for {
				select {
				case <-stop:
					return
				default:
				}
				for j := 0; j < 1e5; j++ {
					x += j
				}
			}
		}()
	}
	running.Wait()
}

// On a loaded host an emulating /dev/kvm is still told apart by the CPU
// it burns (the old wall-time budget could not tell a busy host from an
// emulating KVM), and the verdict is a lasting one.
func TestProbeKVMEmulatesUnderLoad(t *testing.T) {
	if st, err := os.Stat("/dev/kvm"); err != nil || st.Mode()&os.ModeDevice == 0 {
		t.Skip("no /dev/kvm")
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	spin(stop, &wg)
	p := probeKVMDevice()
	close(stop)
	wg.Wait()
	t.Logf("KVM usable=%v lasting=%v elapsed=%v cpu=%v: %s", p.Usable, p.Lasting, p.Elapsed, p.CPU, p.Reason)
	if p.Usable {
		if p.CPU >= probeCPU {
			t.Errorf("usable after %v of CPU", p.CPU)
		}
		return // a real KVM: nothing more to see here
	}
	if !p.Lasting || p.CPU < probeCPU || !strings.Contains(p.Reason, "emulates") {
		t.Errorf("want the CPU-time verdict (emulation, lasting), got lasting=%v cpu=%v: %s", p.Lasting, p.CPU, p.Reason)
	}
}

// A real KVM on a busy host runs the probe in a millisecond of CPU, but
// its thread may wait for a CPU far longer than the wall budget: it must
// still be judged usable. This machine has no real KVM, so the trial is
// a stand-in: a thread that spends a few milliseconds of CPU in one
// system call (reading 16 MiB of /dev/zero), as KVM_RUN does, while it
// is kept off the CPU (SCHED_IDLE behind spinning threads) for twice the
// wall budget.
func TestProbeKVMStarvedRealKVM(t *testing.T) {
	zero, err := os.Open("/dev/zero")
	if err != nil {
		t.Fatal(err)
	}
	defer zero.Close()
	buf := make([]byte, 16<<20)
	for i := range buf {
		buf[i] = 1 // fault every page in now, not in the trial
	}
	var tid atomic.Int32
	trial := func(run *probeRun) KVMProbe {
		tid.Store(int32(unix.Gettid()))
		if err := unix.SchedSetAttr(0, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_IDLE}, 0); err != nil {
			return KVMProbe{Reason: "SCHED_IDLE: " + err.Error()}
		}
		run.started()
		start := time.Now()
		if _, err := unix.Read(int(zero.Fd()), buf); err != nil {
			return KVMProbe{Reason: err.Error()}
		}
		return KVMProbe{Usable: true, Elapsed: time.Since(start), Reason: "stand-in finished"}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	spin(stop, &wg)
	go func() {
		time.Sleep(2 * probeBudget)
		close(stop)
		wg.Wait()
		if t := tid.Load(); t != 0 {
			unix.SchedSetAttr(int(t), &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_NORMAL}, 0)
		}
	}()
	p := probeWith(trial)
	t.Logf("usable=%v lasting=%v elapsed=%v cpu=%v: %s", p.Usable, p.Lasting, p.Elapsed, p.CPU, p.Reason)
	if p.CPU >= probeCPU {
		t.Skipf("the stand-in took %v of CPU, more than a real KVM may (%v): this machine clears memory too slowly for it", p.CPU, probeCPU)
	}
	if !p.Usable || !p.Lasting {
		t.Fatalf("a starved real KVM was judged unusable: %s", p.Reason)
	}
}

func TestProbeKVMJudge(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		name string
		s    probeSample
		want probeVerdict
	}{
		{"just started", probeSample{Wall: 1 * ms, CPU: 1 * ms}, probeGoOn},
		{"emulating, idle host", probeSample{Wall: 50 * ms, CPU: 50 * ms}, probeEmulates},
		{"emulating, busy host", probeSample{Wall: 2 * time.Second, CPU: 60 * ms}, probeEmulates},
		{"real KVM waiting for a CPU", probeSample{Wall: 1 * time.Second, CPU: 0}, probeGoOn},
		{"real KVM, mostly waiting", probeSample{Wall: 2 * time.Second, CPU: 1 * ms, Asleep: 100 * ms}, probeGoOn},
		{"starved too long", probeSample{Wall: probeMaxWait, CPU: 1 * ms}, probeStarved},
		{"KVM_RUN sleeps", probeSample{Wall: probeBudget, CPU: 1 * ms, Asleep: 200 * ms}, probeSleeps},
		{"asleep but within budget", probeSample{Wall: 200 * ms, CPU: 0, Asleep: 200 * ms}, probeGoOn},
	} {
		if got := judge(c.s); got != c.want {
			t.Errorf("%s: judge(%+v) = %v, want %v", c.name, c.s, got, c.want)
		}
	}
	if !judgeFinished(2*ms) || judgeFinished(probeCPU) {
		t.Errorf("judgeFinished: 2ms must be usable, %v not", probeCPU)
	}
}

// The per-boot cache keeps lasting verdicts only, and only for this boot
// and this /dev/kvm.
func TestProbeKVMCache(t *testing.T) {
	if kvmKey() == "" {
		t.Skip("no /dev/kvm device or boot id")
	}
	dir := t.TempDir()
	calls := 0
	probe := func(p KVMProbe) func() KVMProbe {
		return func() KVMProbe { calls++; return p }
	}
	// A verdict of the moment is not kept.
	cachedProbe(dir, probe(KVMProbe{Reason: "starved"}))
	if _, err := os.Stat(filepath.Join(dir, kvmVerdictFile)); err == nil {
		t.Fatal("a verdict that is not lasting was kept")
	}
	p := cachedProbe(dir, probe(KVMProbe{Lasting: true, Reason: "emulates"}))
	if p.Usable || calls != 2 {
		t.Fatalf("first lasting probe: %+v, %d calls", p, calls)
	}
	p = cachedProbe(dir, probe(KVMProbe{Usable: true, Lasting: true, Reason: "other"}))
	if p.Usable || calls != 2 || !strings.HasPrefix(p.Reason, "emulates (probed at ") {
		t.Fatalf("second probe in the same boot: %+v, %d calls; want the kept verdict", p, calls)
	}
	// Another boot or another /dev/kvm (a changed key) probes again.
	b, err := os.ReadFile(filepath.Join(dir, kvmVerdictFile))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, kvmVerdictFile), []byte(strings.Replace(string(b), "boot ", "boot x", 1)), 0o644)
	p = cachedProbe(dir, probe(KVMProbe{Usable: true, Lasting: true, Reason: "real"}))
	if !p.Usable || calls != 3 {
		t.Fatalf("after a reboot: %+v, %d calls; want a new probe", p, calls)
	}
	// A garbled file is ignored and replaced.
	os.WriteFile(filepath.Join(dir, kvmVerdictFile), []byte("{garbled"), 0o644)
	if p = cachedProbe(dir, probe(KVMProbe{Usable: true, Lasting: true, Reason: "real"})); !p.Usable || calls != 4 {
		t.Fatalf("garbled file: %+v, %d calls", p, calls)
	}
	if p = cachedProbe(dir, probe(KVMProbe{Reason: "x"})); !p.Usable || calls != 4 {
		t.Fatalf("after replacing the garbled file: %+v, %d calls", p, calls)
	}
}
