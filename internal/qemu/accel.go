package qemu

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// KVMProbe is the result of ProbeKVM.
type KVMProbe struct {
	Usable  bool
	Reason  string        // why KVM is not usable, or what was measured
	Elapsed time.Duration // time KVM_RUN took for the probe loop
}

// The probe runs probeLoops iterations of a two-instruction real-mode loop
// (about a million instructions). Hardware virtualization runs it in well
// under a millisecond. A /dev/kvm that emulates instead is slower than TCG
// and is treated as unusable.
//
// Found on the development machine (Linux 6.18 guest of a paravirtual
// hypervisor, "PVM"): /dev/kvm opens, KVM_CREATE_VM, KVM_CREATE_VCPU and a
// real-mode KVM_RUN all work and even give the right I/O and HLT exits,
// so a functional probe would pass; but every instruction costs about a
// microsecond of host kernel time (2^20 loop iterations: 2.3 s). QEMU with
// -accel kvm and the Debian kernel stalls after "Probing EDD" (bzImage) or
// reaches 2.8 s of guest time in 40 s of wall time, all of it system time
// (vmlinux through PVH). Hence a timed probe, not a functional one: it
// rejects this KVM after probeBudget, interrupting KVM_RUN with a signal
// (which took about 2 ms).
const (
	probeLoops  = 1 << 19
	probeBudget = 250 * time.Millisecond
)

var (
	kvmOnce   sync.Once
	kvmResult KVMProbe
)

// ProbeKVM tells whether /dev/kvm can run guests at hardware speed. It runs
// a few real-mode instructions in a throwaway VM through the KVM ioctls and
// is bounded by a timeout, so it never hangs. The result is cached for the
// process.
func ProbeKVM() KVMProbe {
	kvmOnce.Do(func() { kvmResult = probeKVM(probeBudget) })
	return kvmResult
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

func probeKVM(budget time.Duration) KVMProbe {
	st, err := os.Stat("/dev/kvm")
	if err != nil {
		return KVMProbe{Reason: "no /dev/kvm"}
	}
	if st.Mode()&os.ModeDevice == 0 {
		return KVMProbe{Reason: "/dev/kvm is not a device"}
	}
	res := make(chan KVMProbe, 1)
	var tid atomic.Int32
	var stop atomic.Bool
	var runArea atomic.Pointer[[]byte]
	go func() {
		// The thread stays locked: if KVM_RUN had to be interrupted by a
		// signal, the runtime discards the thread when this goroutine ends.
		runtime.LockOSThread()
		tid.Store(int32(unix.Gettid()))
		res <- kvmTrial(&stop, &runArea)
	}()
	timer := time.NewTimer(budget)
	defer timer.Stop()
	select {
	case r := <-res:
		return r
	case <-timer.C:
	}
	// Too slow: ask the vCPU to leave KVM_RUN. immediate_exit makes a
	// re-entry return at once; the signal (SIGURG, which the Go runtime
	// tolerates) kicks the thread out of a KVM_RUN in progress.
	stop.Store(true)
	if p := runArea.Load(); p != nil {
		(*p)[kvmRunImmediateExOff] = 1
	}
	if t := tid.Load(); t != 0 {
		unix.Tgkill(unix.Getpid(), int(t), unix.SIGURG)
	}
	select {
	case <-res:
	case <-time.After(budget):
		// Still stuck in the kernel; leave the thread behind rather than hang.
	}
	return KVMProbe{Elapsed: budget, Reason: fmt.Sprintf(
		"/dev/kvm did not run %d real-mode instructions within %v (hardware virtualization needs about 1ms): "+
			"it emulates instead of virtualizing (e.g. a paravirtual hypervisor), which is slower than TCG", 2*probeLoops, budget)}
}

func kvmTrial(stop *atomic.Bool, runArea *atomic.Pointer[[]byte]) KVMProbe {
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
	runArea.Store(&run)
	defer runArea.Store(nil)

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

	start := time.Now()
	sawOut := false
	for i := 0; i < 100; i++ {
		if stop.Load() {
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
