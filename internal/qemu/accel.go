package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/images"
	"github.com/vmnet/vmnet/internal/cachefile"
)

// KVMProbe is the result of ProbeKVM.
type KVMProbe struct {
	Usable  bool
	Reason  string        // why KVM is not usable, or what was measured
	Elapsed time.Duration // wall time KVM_RUN took for the probe loop (or until stopped)
	CPU     time.Duration // CPU time the probe's thread spent in KVM_RUN
	// Lasting is set on a verdict that holds for as long as the kernel
	// and its /dev/kvm stay the same (it does not depend on the host's
	// load): only such verdicts are kept in the per-boot cache.
	Lasting bool
}

// The probe runs probeLoops iterations of a two-instruction real-mode loop
// (about a million instructions). Hardware virtualization runs it in about
// a millisecond. A /dev/kvm that emulates instead is slower than TCG and
// is treated as unusable.
//
// Found on the development machine (Linux 6.18 guest of a paravirtual
// hypervisor, "PVM"): /dev/kvm opens, KVM_CREATE_VM, KVM_CREATE_VCPU and a
// real-mode KVM_RUN all work and even give the right I/O and HLT exits,
// so a functional probe would pass; but every instruction costs about a
// microsecond of host kernel time (2^20 loop iterations: 2.3 s). QEMU with
// -accel kvm and the Debian kernel stalls after "Probing EDD" (bzImage) or
// reaches 2.8 s of guest time in 40 s of wall time, all of it system time
// (vmlinux through PVH). Hence a timed probe, not a functional one.
//
// The probe is judged on the CPU time its thread spends in KVM_RUN, not on
// wall time: a KVM that emulates burns CPU for every instruction, and
// after probeCPU of it (25 to 50 times what hardware virtualization
// needs for the whole loop) it is rejected, whatever the host's load
// (on an idle host after about probeCPU of wall time, where a wall-time
// budget had to wait out its whole 250 ms). A real KVM on a loaded host
// is not misjudged for waiting its turn: while its thread is runnable
// but kept off the CPU by other load, the probe waits, up to
// probeMaxWait. A KVM_RUN that sleeps in the kernel instead of running
// (the thread is neither running nor runnable for most of probeBudget)
// is rejected after probeBudget, as before. The probe is stopped by
// interrupting KVM_RUN with a signal (which took about 2 ms).
const (
	probeLoops   = 1 << 19
	probeCPU     = 50 * time.Millisecond
	probeBudget  = 250 * time.Millisecond
	probeMaxWait = 3 * time.Second
	probeTick    = 2 * time.Millisecond
	// probeSetup bounds creating the probe's VM (ioctls that should take
	// microseconds) before its KVM_RUN starts.
	probeSetup = 2 * time.Second
)

var (
	kvmOnce   sync.Once
	kvmResult KVMProbe
)

// ProbeKVM tells whether /dev/kvm can run guests at hardware speed. It runs
// a few real-mode instructions in a throwaway VM through the KVM ioctls and
// is bounded by a timeout, so it never hangs. The result is cached for the
// process, and a lasting verdict for the boot of the host (see
// kvmVerdictFile).
func ProbeKVM() KVMProbe {
	kvmOnce.Do(func() {
		dir, err := images.DefaultCacheDir()
		if err != nil {
			dir = ""
		}
		kvmResult = cachedProbe(dir, probeKVMDevice)
	})
	return kvmResult
}

// probeSample is what the probe's watchdog has seen of its KVM_RUN so far.
type probeSample struct {
	Wall   time.Duration // since KVM_RUN started
	CPU    time.Duration // the probe thread's CPU time since then
	Asleep time.Duration // of Wall, the time the thread was seen sleeping (neither running nor runnable)
}

// probeVerdict is the watchdog's judgement of a probe still in KVM_RUN.
type probeVerdict int

const (
	probeGoOn     probeVerdict = iota // not decided: wait
	probeEmulates                     // used probeCPU of CPU without finishing: emulation
	probeSleeps                       // KVM_RUN sleeps instead of running the guest
	probeStarved                      // kept off the CPU for probeMaxWait: cannot tell
)

// judge decides on a probe that has not finished yet.
func judge(s probeSample) probeVerdict {
	switch {
	case s.CPU >= probeCPU:
		return probeEmulates
	case s.Wall < probeBudget:
		return probeGoOn
	case s.Asleep*2 >= s.Wall:
		return probeSleeps
	case s.Wall >= probeMaxWait:
		return probeStarved
	}
	return probeGoOn
}

// judgeFinished decides on a probe whose loop ran to its end in cpu.
func judgeFinished(cpu time.Duration) bool { return cpu < probeCPU }

// probeRun is shared between a probe trial (which runs KVM_RUN on its
// own locked thread) and the watchdog that judges it.
type probeRun struct {
	tid     atomic.Int32
	stop    atomic.Bool
	runArea atomic.Pointer[[]byte]
	// cpu0 is the thread's CPU time (ns) when KVM_RUN started, +1 so
	// that 0 means "not started yet".
	cpu0 atomic.Int64
	t0   atomic.Int64 // when KVM_RUN started (Unix ns)
}

// started marks the start of KVM_RUN; call it on the probe's thread.
func (r *probeRun) started() {
	r.t0.Store(time.Now().UnixNano())
	r.cpu0.Store(int64(threadCPU(int(r.tid.Load()))) + 1)
}

// threadCPU is the CPU time thread tid of this process has used (its
// CLOCK_THREAD_CPUTIME_ID, readable from another thread), or -1.
func threadCPU(tid int) time.Duration {
	var ts unix.Timespec
	// MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED): include/linux/posix-timers.h.
	clock := int32(^tid<<3 | 6)
	if err := unix.ClockGettime(clock, &ts); err != nil {
		return -1
	}
	return time.Duration(ts.Nano())
}

// threadAsleep reports whether thread tid of this process sleeps in
// KVM_RUN (state S or D in /proc, in an ioctl KVM_RUN): neither running
// the guest nor waiting for a CPU. A thread that waits for the Go
// scheduler (a futex) or for a CPU does not count.
func threadAsleep(tid int) bool {
	dir := fmt.Sprintf("/proc/self/task/%d/", tid)
	b, err := os.ReadFile(dir + "stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) || (b[i+2] != 'S' && b[i+2] != 'D') {
		return false
	}
	// "NR ARG1 ARG2 ...": the system call the thread is blocked in.
	sc, err := os.ReadFile(dir + "syscall")
	if err != nil {
		return false
	}
	f := strings.Fields(string(sc))
	return len(f) >= 3 && f[0] == strconv.Itoa(unix.SYS_IOCTL) && f[2] == fmt.Sprintf("%#x", kvmRun)
}

// probeKVMDevice probes /dev/kvm.
func probeKVMDevice() KVMProbe {
	st, err := os.Stat("/dev/kvm")
	if err != nil {
		return KVMProbe{Reason: "no /dev/kvm"}
	}
	if st.Mode()&os.ModeDevice == 0 {
		return KVMProbe{Reason: "/dev/kvm is not a device"}
	}
	return probeWith(kvmTrial)
}

// probeWith runs trial on a locked thread of its own and judges it (see
// judge) until it finishes or is stopped. trial calls run.started()
// right before its first KVM_RUN and returns its result.
func probeWith(trial func(run *probeRun) KVMProbe) KVMProbe {
	run := &probeRun{}
	res := make(chan KVMProbe, 1)
	go func() {
		// The thread stays locked: if KVM_RUN had to be interrupted by a
		// signal, the runtime discards the thread when this goroutine ends.
		runtime.LockOSThread()
		run.tid.Store(int32(unix.Gettid()))
		res <- trial(run)
	}()
	tick := time.NewTicker(probeTick)
	defer tick.Stop()
	begin := time.Now()
	var last time.Time
	var s probeSample
	verdict := probeGoOn
	for verdict == probeGoOn {
		select {
		case r := <-res:
			return finished(r, run)
		case <-tick.C:
		}
		now := time.Now()
		c0 := run.cpu0.Load()
		if c0 == 0 {
			if now.Sub(begin) > probeSetup {
				stopTrial(run, res)
				return KVMProbe{Reason: fmt.Sprintf("/dev/kvm: creating a VM with one vCPU took more than %v", probeSetup)}
			}
			continue
		}
		tid := int(run.tid.Load())
		if last.IsZero() {
			last = time.Unix(0, run.t0.Load())
		}
		if threadAsleep(tid) {
			s.Asleep += now.Sub(last)
		}
		last = now
		s.Wall = now.Sub(time.Unix(0, run.t0.Load()))
		if c := threadCPU(tid); c >= 0 {
			s.CPU = c - time.Duration(c0-1)
		}
		verdict = judge(s)
	}
	// The result may have arrived meanwhile: it wins over the verdict.
	select {
	case r := <-res:
		return finished(r, run)
	default:
	}
	stopTrial(run, res)
	p := KVMProbe{Elapsed: s.Wall, CPU: s.CPU}
	switch verdict {
	case probeEmulates:
		p.Lasting = true
		p.Reason = fmt.Sprintf("/dev/kvm used %v of CPU without finishing %d real-mode instructions (hardware virtualization needs about 1ms): "+
			"it emulates instead of virtualizing (e.g. a paravirtual hypervisor), which is slower than TCG", s.CPU.Round(time.Millisecond), 2*probeLoops)
	case probeSleeps:
		p.Reason = fmt.Sprintf("/dev/kvm did not run %d real-mode instructions within %v (hardware virtualization needs about 1ms): "+
			"its KVM_RUN sleeps instead of running the guest", 2*probeLoops, s.Wall.Round(time.Millisecond))
	default:
		p.Reason = fmt.Sprintf("the KVM probe got only %v of CPU in %v (the host is too busy to tell whether /dev/kvm works); "+
			"choose the accelerator yourself (accel kvm) if it does", s.CPU.Round(time.Millisecond), s.Wall.Round(time.Millisecond))
	}
	return p
}

// finished completes the result of a trial that returned by itself: a
// loop that ran to its end is judged on the CPU it took.
func finished(r KVMProbe, run *probeRun) KVMProbe {
	if c0 := run.cpu0.Load(); c0 != 0 {
		if c := threadCPU(int(run.tid.Load())); c >= 0 {
			r.CPU = c - time.Duration(c0-1)
		}
	}
	if r.Usable {
		if !judgeFinished(r.CPU) {
			r.Usable = false
			r.Reason = fmt.Sprintf("/dev/kvm took %v of CPU for %d real-mode instructions (hardware virtualization needs about 1ms): "+
				"it emulates instead of virtualizing, which is slower than TCG", r.CPU.Round(time.Millisecond), 2*probeLoops)
		}
		r.Lasting = true
	}
	return r
}

// stopTrial asks the vCPU to leave KVM_RUN and waits a little for the
// trial to end. immediate_exit makes a re-entry return at once; the
// signal (SIGURG, which the Go runtime tolerates) kicks the thread out
// of a KVM_RUN in progress.
func stopTrial(run *probeRun, res <-chan KVMProbe) {
	run.stop.Store(true)
	if p := run.runArea.Load(); p != nil {
		(*p)[kvmRunImmediateExOff] = 1
	}
	if t := run.tid.Load(); t != 0 {
		unix.Tgkill(unix.Getpid(), int(t), unix.SIGURG)
	}
	select {
	case <-res:
	case <-time.After(probeBudget):
		// Still stuck in the kernel; leave the thread behind rather than hang.
	}
}

// KVM ioctls (include/uapi/linux/kvm.h); x/sys/unix does not define them.
const (
	kvmGetAPIVersion     = 0xAE00
	kvmCreateVM          = 0xAE01
	kvmGetVCPUMmapSize   = 0xAE04
	kvmCreateVCPU        = 0xAE41
	kvmSetUserMemRegion  = 0x4020AE46
	kvmSetTSSAddr        = 0xAE47
	kvmRun               = 0xAE80
	kvmSetRegs           = 0x4090AE82
	kvmGetSregs          = 0x8138AE83
	kvmSetSregs          = 0x4138AE84
	kvmExitIO            = 2
	kvmExitHLT           = 5
	kvmRunExitReasonOff  = 8
	kvmRunImmediateExOff = 1
	kvmRunIOOff          = 32
)

type kvmSegment struct {
	Base                                              uint64
	Limit                                             uint32
	Selector                                          uint16
	Type, Present, DPL, DB, S, L, G, AVL, Unusable, _ uint8
}

type kvmDtable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

type kvmSregs struct {
	CS, DS, ES, FS, GS, SS, TR, LDT kvmSegment
	GDT, IDT                        kvmDtable
	CR0, CR2, CR3, CR4, CR8, EFER   uint64
	APICBase                        uint64
	InterruptBitmap                 [4]uint64
}

type kvmRegs struct {
	GP          [16]uint64
	RIP, RFLAGS uint64
}

type kvmMemRegion struct {
	Slot, Flags                    uint32
	GuestPhys, Size, UserspaceAddr uint64
}

func kvmIoctl(fd int, req uintptr, arg unsafe.Pointer) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if e != 0 {
		return int(r), e
	}
	return int(r), nil
}

// probeCode: mov ecx, probeLoops; 1: dec ecx; jnz 1b; mov dx, 0x3f8;
// mov al, 'K'; out dx, al; hlt.
var probeCode = []byte{
	0x66, 0xB9, probeLoops & 0xff, probeLoops >> 8 & 0xff, probeLoops >> 16 & 0xff, probeLoops >> 24 & 0xff,
	0x66, 0x49, 0x75, 0xFC,
	0xBA, 0xF8, 0x03, 0xB0, 'K', 0xEE, 0xF4,
}

func kvmTrial(pr *probeRun) KVMProbe {
	fail := func(what string, err error) KVMProbe {
		return KVMProbe{Reason: fmt.Sprintf("/dev/kvm: %s: %v", what, err)}
	}
	kvm, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fail("open", err)
	}
	defer unix.Close(kvm)
	if v, err := kvmIoctl(kvm, kvmGetAPIVersion, nil); err != nil || v != 12 {
		return fail("KVM_GET_API_VERSION", fmt.Errorf("version %d, err %v (want 12)", v, err))
	}
	vm, err := kvmIoctl(kvm, kvmCreateVM, nil)
	if err != nil {
		return fail("KVM_CREATE_VM", err)
	}
	defer unix.Close(vm)
	mem, err := unix.Mmap(-1, 0, 0x10000, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		return fail("mmap guest memory", err)
	}
	defer unix.Munmap(mem)
	copy(mem[0x1000:], probeCode)
	region := kvmMemRegion{Size: uint64(len(mem)), UserspaceAddr: uint64(uintptr(unsafe.Pointer(&mem[0])))}
	if _, err := kvmIoctl(vm, kvmSetUserMemRegion, unsafe.Pointer(&region)); err != nil {
		return fail("KVM_SET_USER_MEMORY_REGION", err)
	}
	unix.Syscall(unix.SYS_IOCTL, uintptr(vm), kvmSetTSSAddr, 0xfffbd000) // as QEMU does; needed without unrestricted guest
	vcpu, err := kvmIoctl(vm, kvmCreateVCPU, nil)
	if err != nil {
		return fail("KVM_CREATE_VCPU", err)
	}
	defer unix.Close(vcpu)
	size, err := kvmIoctl(kvm, kvmGetVCPUMmapSize, nil)
	if err != nil {
		return fail("KVM_GET_VCPU_MMAP_SIZE", err)
	}
	run, err := unix.Mmap(vcpu, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail("mmap kvm_run", err)
	}
	defer unix.Munmap(run)
	pr.runArea.Store(&run)
	defer pr.runArea.Store(nil)

	var sregs kvmSregs
	if _, err := kvmIoctl(vcpu, kvmGetSregs, unsafe.Pointer(&sregs)); err != nil {
		return fail("KVM_GET_SREGS", err)
	}
	sregs.CS.Base, sregs.CS.Selector = 0, 0
	if _, err := kvmIoctl(vcpu, kvmSetSregs, unsafe.Pointer(&sregs)); err != nil {
		return fail("KVM_SET_SREGS", err)
	}
	regs := kvmRegs{RIP: 0x1000, RFLAGS: 2}
	if _, err := kvmIoctl(vcpu, kvmSetRegs, unsafe.Pointer(&regs)); err != nil {
		return fail("KVM_SET_REGS", err)
	}

	pr.started()
	start := time.Now()
	sawOut := false
	for i := 0; i < 100; i++ {
		if pr.stop.Load() {
			return KVMProbe{Reason: "stopped"}
		}
		_, err := kvmIoctl(vcpu, kvmRun, nil)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return fail("KVM_RUN", err)
		}
		switch reason := *(*uint32)(unsafe.Pointer(&run[kvmRunExitReasonOff])); reason {
		case kvmExitIO:
			port := *(*uint16)(unsafe.Pointer(&run[kvmRunIOOff+2]))
			off := *(*uint64)(unsafe.Pointer(&run[kvmRunIOOff+8]))
			if port != 0x3f8 || off >= uint64(len(run)) || run[off] != 'K' {
				return KVMProbe{Reason: fmt.Sprintf("/dev/kvm: KVM_RUN gave an unexpected I/O exit (port %#x)", port)}
			}
			sawOut = true
		case kvmExitHLT:
			el := time.Since(start)
			if !sawOut {
				return KVMProbe{Elapsed: el, Reason: "/dev/kvm: guest halted without its port write"}
			}
			return KVMProbe{Usable: true, Elapsed: el, Reason: fmt.Sprintf("ran %d real-mode instructions in %v", 2*probeLoops, el.Round(time.Microsecond))}
		default:
			return KVMProbe{Elapsed: time.Since(start), Reason: fmt.Sprintf("/dev/kvm: KVM_RUN exit reason %d instead of I/O then HLT", reason)}
		}
	}
	return KVMProbe{Reason: "/dev/kvm: KVM_RUN kept returning without reaching HLT"}
}

// The KVM verdict is kept per boot of the host in kvmVerdictFile of
// vmnet's cache directory, keyed by the kernel's boot id and the identity
// of /dev/kvm (device number, inode, change time: reloading the kvm
// modules makes a new device node): the probe costs every vmnet process
// probeCPU of CPU (a quarter of a second of wall time before) where
// /dev/kvm emulates, which is a good part of a warm `vmnet exec`. Only
// a lasting verdict is kept: the loop ran to its end (usable) or used
// probeCPU of CPU without finishing (emulation), both measured in CPU
// time, which the host's load does not change. A verdict that depends
// on the moment (KVM_RUN slept, the probe was starved of CPU, an open or
// ioctl failed) is probed again by the next process.
const kvmVerdictFile = "kvm-verdict.json"

// kvmRecipe names the probe and its thresholds: a changed probe does not
// trust an older one's verdict.
var kvmRecipe = fmt.Sprintf("loops=%d cpu=%v", probeLoops, probeCPU)

type kvmVerdict struct {
	Key    string    `json:"key"`
	Usable bool      `json:"usable"`
	Reason string    `json:"reason"`
	Probed time.Time `json:"probed"`
}

// kvmKey is the key of the verdict for this boot and /dev/kvm, or "".
func kvmKey() string {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	var st unix.Stat_t
	if err := unix.Stat("/dev/kvm", &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return ""
	}
	return fmt.Sprintf("boot %s dev %d:%d inode %d ctime %d.%09d probe %s", bytes.TrimSpace(boot),
		unix.Major(st.Rdev), unix.Minor(st.Rdev), st.Ino, st.Ctim.Sec, st.Ctim.Nsec, kvmRecipe)
}

// cachedProbe returns the verdict kept in dir for this boot and /dev/kvm,
// or runs probe and keeps its verdict if it is a lasting one. dir ""
// keeps nothing.
func cachedProbe(dir string, probe func() KVMProbe) KVMProbe {
	key := kvmKey()
	if dir == "" || key == "" {
		return probe()
	}
	path := filepath.Join(dir, kvmVerdictFile)
	var v kvmVerdict
	if cachefile.Read(path, &v) && v.Key == key && v.Reason != "" {
		return KVMProbe{Usable: v.Usable, Lasting: true,
			Reason: fmt.Sprintf("%s (probed at %s in this boot of the host; kept in %s)", v.Reason, v.Probed.Format(time.TimeOnly), path)}
	}
	p := probe()
	if !p.Lasting || key != kvmKey() {
		return p
	}
	cachefile.Write(path, kvmVerdict{Key: key, Usable: p.Usable, Reason: p.Reason, Probed: time.Now()})
	return p
}
