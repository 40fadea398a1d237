// Package gexec runs one statically linked program inside a throwaway
// vmnet test guest and returns its exit status: the engine of `vmnet exec`
// and thereby of `go test -exec` for tests that need a kernel feature the
// host lacks (bridge VLAN filtering, 802.1Q, vhost-net, netem).
package gexec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/vmnet/vmnet/images"
	"github.com/vmnet/vmnet/images/guest"
	"github.com/vmnet/vmnet/internal/qemu"
	"github.com/vmnet/vmnet/internal/snapshot"
)

// DefaultModules are put into the image and loaded at boot (busybox
// modprobe resolves their dependencies from the kernel's modules.dep):
// what vmnet's kernel-dependent tests need.
var DefaultModules = []string{
	"bridge", "stp", "llc", "8021q", "garp", "mrp", "tun", "tap", "veth",
	"vhost", "vhost_iotlb", "vhost_net", "sch_netem", "sch_tbf", "vxlan",
}

// DefaultPrograms are host programs carried into the guest (with their
// shared libraries) when the host has them: the observers tests use.
// Busybox has ip too, but without -j, and no bridge or tc.
var DefaultPrograms = []string{"ip", "bridge", "tc", "unshare"}

// DefaultEnv are the host environment variables passed into the guest
// when set.
var DefaultEnv = []string{"CI", "GITHUB_ACTIONS", "GODEBUG", "GOTRACEBACK", "GOMAXPROCS", "GOGC", "GOMEMLIMIT", "TERM"}

// ErrTimeout marks a guest that did not come up or finish in time.
var ErrTimeout = errors.New("timeout")

// Options describe one run.
type Options struct {
	Program string   // host path of the program
	Args    []string // its arguments (without argv[0])
	// Dir is the host directory the program starts in (default: the
	// current directory). The program starts at the same path in the
	// guest, and Dir/testdata, if present, is carried along.
	Dir string
	// Env are NAME=VALUE pairs set in the guest, after the passed-through
	// DefaultEnv.
	Env []string
	// Modules are put into the image and loaded at boot; nil means
	// DefaultModules.
	Modules []string
	// Programs are host programs (names on PATH or paths) carried into
	// /vmnet/bin, first in the guest's PATH, with their libraries. Nil
	// means those of DefaultPrograms the host has.
	Programs []string

	CPUs      int    // default 1
	MemoryMiB int    // default 512
	Accel     string // qemu.AccelAuto (default), kvm, tcg
	// Machine is QEMU's machine type: by default q35 for a warm boot
	// and microvm for a cold one (it boots fastest, but has one serial
	// port and no VM generation id device, which warm boots need).
	Machine string
	// Cold turns warm boots (snapshots, see package snapshot) off.
	Cold bool
	// SnapshotDir is the snapshot cache; default snapshot.DefaultDir().
	SnapshotDir string
	// Warn receives what the user should know even without --verbose
	// (a warm boot that failed and fell back to a cold one); nil discards.
	Warn        io.Writer
	BootTimeout time.Duration // until VMNET-READY; default 2 minutes
	Timeout     time.Duration // for the program; default 10 minutes

	CacheDir string    // image cache (images.DefaultCacheDir)
	Progress io.Writer // image build steps; nil discards
	Stdout   io.Writer // the program's stdout and stderr (one console)
	Console  io.Writer // the boot console up to the program's start; nil discards
	// KernelLog leaves kernel messages on the console while the program
	// runs (by default only emergencies get through, so output stays clean).
	KernelLog bool
	Logf      func(format string, args ...any)
}

// Result is what a finished run measured.
type Result struct {
	Status int
	Image  time.Duration // image lookup (or build) and archive
	Boot   time.Duration // QEMU start to program start (kernel, /init, modules)
	Run    time.Duration // program start to QEMU exit
	Total  time.Duration // QEMU start to QEMU exit
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Run boots a guest, runs the program in it and returns its exit status.
// An error means the program's status is unknown: it names the cause (a
// dynamic binary, a guest that never got ready, a timeout) with the last
// console lines.
func Run(ctx context.Context, o Options) (Result, error) {
	var res Result
	if err := o.defaults(); err != nil {
		return res, err
	}
	if err := CheckStatic(o.Program); err != nil {
		return res, err
	}
	if o.Accel == "" || o.Accel == qemu.AccelAuto {
		// Choosing the accelerator runs the KVM probe, which takes its
		// whole budget (a quarter second) where /dev/kvm emulates: let
		// it run while the image and the program's archive are prepared
		// (the result is cached for the process; later callers wait).
		go qemu.ProbeKVM()
	}
	if o.coldReason() == "" {
		snapshot.Prefetch(qemu.Spec{})
	}
	t0 := time.Now()
	img, err := images.Ensure(ctx, images.Options{CacheDir: o.CacheDir, Progress: o.Progress, Modules: o.Modules})
	if err != nil {
		return res, err
	}
	run, err := os.MkdirTemp("", "vmnet-exec-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(run)
	// QEMU runs as vmnet's unprivileged user; it reads the initrd through
	// an fd, so the file must be readable by the user's group (the
	// directory stays root's alone).
	user, err := qemu.ResolveUser("")
	if err != nil {
		return res, err
	}
	nonce := guest.NewNonce()
	out := newOutputFilter(o.Stdout, o.Console, nonce)
	var vm *qemu.VM
	var start time.Time
	if why := o.coldReason(); why == "" {
		vm, start, err = o.bootWarm(ctx, img, run, user, nonce, out, t0, &res)
		if err != nil {
			if ctx.Err() != nil {
				return res, err
			}
			fmt.Fprintf(o.Warn, "vmnet exec: warm boot failed, booting cold: %v\n", err)
			vm = nil
		}
	} else if o.Logf != nil {
		o.Logf("booting cold: %s", why)
	}
	if vm == nil {
		if vm, start, err = o.bootCold(ctx, img, run, user, nonce, out, t0, &res); err != nil {
			return res, err
		}
	}
	stopped := false
	defer func() {
		if !stopped {
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			vm.Stop(sctx)
			cancel()
			out.flush() // what the program wrote before it was cut off
		}
	}()
	bctx, cancel := context.WithTimeout(ctx, o.BootTimeout)
	err = vm.WaitReady(bctx)
	// Read before cancel, which sets Err on every context.
	timedOut := errors.Is(bctx.Err(), context.DeadlineExceeded)
	cancel()
	if err != nil {
		if timedOut && ctx.Err() == nil {
			err = fmt.Errorf("%w: %w", ErrTimeout, err)
		}
		return res, fmt.Errorf("guest for %s did not come up: %w", filepath.Base(o.Program), err)
	}
	res.Boot = time.Since(start)
	wctx, cancel := context.WithTimeout(ctx, o.Timeout)
	st, err := vm.Wait(wctx)
	timedOut = errors.Is(wctx.Err(), context.DeadlineExceeded)
	cancel()
	if err != nil {
		if timedOut && ctx.Err() == nil {
			err = fmt.Errorf("%w: %s did not finish within %v: %w", ErrTimeout, filepath.Base(o.Program), o.Timeout, err)
		}
		return res, err
	}
	stopped = true
	out.flush()
	res.Total = time.Since(start)
	if e := out.startError(); e != "" {
		return res, fmt.Errorf("guest for %s: %s", filepath.Base(o.Program), e)
	}
	if t := out.startTime(); !t.IsZero() {
		res.Boot = t.Sub(start)
	}
	res.Run = res.Total - res.Boot
	res.Status = st
	return res, nil
}

// guestCmdline is the kernel command line of every exec guest, warm or
// cold: the test image's, with timers from the tick (TimerCmdline).
const guestCmdline = guest.DefaultCmdline + " " + TimerCmdline

// TimerCmdline is on the kernel command line of every exec guest: the
// kernel's timers run from its periodic tick (250 Hz, a 4 ms resolution)
// instead of one-shot high-resolution timer interrupts. Under TCG every
// timer interrupt and every reprogramming of the LAPIC timer is emulated
// and wakes QEMU's threads, and a test binary arms timers all the time
// (the Go runtime, sleeps, socket deadlines): `go test ./tap/` in a warm
// q35 guest with high-resolution timers took as long as in a cold microvm
// guest on a quiet host (about 8 s) but 1.3 to 2 times as long whenever
// other programs loaded the host, with about 40% more QEMU CPU time.
// microvm guests run without high-resolution timers anyway (the kernel
// reports .hres_active 0 there), so warm (q35) and cold (microvm) guests
// now see the same timer resolution.
const TimerCmdline = "highres=off"

// bootCold starts a guest of the test image whose initramfs carries the
// program (the way without snapshots).
func (o *Options) bootCold(ctx context.Context, img images.Image, run string, user *qemu.User, nonce string, out *outputFilter, t0 time.Time, res *Result) (*qemu.VM, time.Time, error) {
	initrd := filepath.Join(run, "initrd")
	if err := o.writeInitrd(ctx, img, initrd); err != nil {
		return nil, time.Time{}, err
	}
	if user != nil {
		if err := os.Chown(initrd, -1, int(user.GID)); err != nil {
			return nil, time.Time{}, err
		}
		if err := os.Chmod(initrd, 0o640); err != nil {
			return nil, time.Time{}, err
		}
	}
	res.Image = time.Since(t0)

	// The wrapper loads the modules, in one modprobe (see wrapperScript).
	app, err := guest.Args{Nonce: nonce}.Append(guestCmdline)
	if err != nil {
		return nil, time.Time{}, err
	}
	machine := o.Machine
	if machine == "" {
		machine = qemu.MachineMicroVM
	}
	spec := qemu.Spec{
		Name: "exec", Machine: machine, Accel: o.Accel, CPUs: o.CPUs, MemoryMiB: o.MemoryMiB,
		Kernel: img.Kernel, Initrd: initrd, Append: app,
		RunDir: run, ConsoleTee: out, Logf: o.Logf, User: user,
	}
	start := time.Now()
	vm, err := qemu.Start(ctx, spec)
	return vm, start, err
}

func (o *Options) defaults() error {
	if o.Program == "" {
		return errors.New("no program to run")
	}
	if o.Stdout == nil {
		o.Stdout = io.Discard
	}
	if o.Dir == "" {
		d, err := os.Getwd()
		if err != nil {
			return err
		}
		o.Dir = d
	}
	d, err := filepath.Abs(o.Dir)
	if err != nil {
		return err
	}
	o.Dir = d
	if o.Modules == nil {
		o.Modules = DefaultModules
	}
	if o.Programs == nil {
		for _, p := range DefaultPrograms {
			if _, err := exec.LookPath(p); err == nil {
				o.Programs = append(o.Programs, p)
			}
		}
	}
	if o.CPUs == 0 {
		// Under TCG a second vCPU is a second busy host thread: on a shared
		// 2-core machine one vCPU boots in ~5 s, two in ~8-10 s.
		o.CPUs = 1
	}
	if o.MemoryMiB == 0 {
		o.MemoryMiB = 512
	}
	if o.Warn == nil {
		o.Warn = io.Discard
	}
	if o.BootTimeout == 0 {
		o.BootTimeout = 2 * time.Minute
	}
	if o.Timeout == 0 {
		o.Timeout = TimeoutFor(o.Args)
	}
	for _, kv := range o.Env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || !envName.MatchString(k) {
			return fmt.Errorf("environment %q: want NAME=VALUE with NAME of letters, digits and '_'", kv)
		}
	}
	return nil
}

// GuestEnv is set to 1 in the guest, so that tests can tell where they run.
const GuestEnv = "VMNET_EXEC_GUEST"

// env is what the guest gets: DefaultEnv from the host, GuestEnv, then o.Env.
func (o *Options) env() []string {
	env := []string{GuestEnv + "=1"}
	for _, k := range DefaultEnv {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return append(env, o.Env...)
}

// writeInitrd writes base followed by the overlay with the program, its
// wrapper, the host programs and testdata/.
func (o *Options) writeInitrd(ctx context.Context, img images.Image, dst string) error {
	b, err := os.ReadFile(img.Initrd)
	if err != nil {
		return fmt.Errorf("guest image: %w", err)
	}
	var buf bytes.Buffer
	buf.Grow(len(b) + 8<<20)
	buf.Write(b)
	// The kernel looks for a following cpio header only at 4-byte aligned
	// offsets and skips zero bytes in between.
	for buf.Len()%4 != 0 {
		buf.WriteByte(0)
	}
	if err := o.writeOverlay(ctx, &buf, img, o.Modules); err != nil {
		return err
	}
	return os.WriteFile(dst, buf.Bytes(), 0o600)
}

// writeOverlay writes the newc archive with the program, its wrapper, the
// host programs img lacks and testdata/ to buf; the wrapper loads modules.
func (o *Options) writeOverlay(ctx context.Context, buf *bytes.Buffer, img images.Image, modules []string) error {
	prog, err := os.ReadFile(o.Program)
	if err != nil {
		return fmt.Errorf("program: %w", err)
	}
	var progs []string
	for _, p := range o.Programs {
		lp, err := exec.LookPath(p)
		if err != nil {
			return fmt.Errorf("host program %s to carry into the guest: %w", p, err)
		}
		progs = append(progs, lp)
	}

	buf.Grow(len(prog))
	ov := newOverlay(buf)
	guestProg := path.Join("/", guestProgDir, filepath.Base(o.Program))
	ov.file(guestProg, 0o755, prog)
	cache := o.CacheDir
	if cache == "" {
		cache, _ = images.DefaultCacheDir() // "" keeps nothing
	}
	if err := ov.addPrograms(ctx, cache, progs, img.HostFiles); err != nil {
		return err
	}
	dir := filepath.ToSlash(o.Dir)
	if guestReserved(dir) {
		return fmt.Errorf("directory %s: the guest cannot start a program there (it mounts /proc, /sys, /dev over it); run from another directory", o.Dir)
	}
	ov.mkdir(dir)
	td := filepath.Join(o.Dir, "testdata")
	if st, err := os.Stat(td); err == nil && st.IsDir() {
		if err := ov.addTestdata(td, path.Join(dir, "testdata"), MaxTestdata); err != nil {
			return err
		}
	}
	ov.file(guestRun, 0o755, wrapperScript(guestProg, dir, o.Args, o.env(), o.outputDirs(), modules, o.KernelLog))
	return ov.close()
}

func guestReserved(dir string) bool {
	for _, r := range []string{"/proc", "/sys", "/dev", "/vmnet"} {
		if dir == r || strings.HasPrefix(dir, r+"/") {
			return true
		}
	}
	return false
}

// outputDirs are directories named by go test flags that the test binary
// writes into (coverage, profiles): they must exist in the guest, though
// what is written there stays in the guest.
func (o *Options) outputDirs() []string {
	var dirs []string
	for _, a := range o.Args {
		for _, f := range []string{"-test.gocoverdir=", "-test.outputdir="} {
			if d, ok := strings.CutPrefix(a, f); ok && d != "" {
				dirs = append(dirs, d)
			}
		}
	}
	return dirs
}

// TimeoutFor is the time to allow a go test binary with these arguments:
// its own -test.timeout plus a minute for booting and reporting, so that
// the test's panic with its goroutine dump comes first; 10 minutes for
// other programs.
func TimeoutFor(args []string) time.Duration {
	for i, a := range args {
		s := strings.TrimLeft(a, "-")
		v, ok := strings.CutPrefix(s, "test.timeout=")
		if !ok && s == "test.timeout" && a != s && i+1 < len(args) {
			v, ok = args[i+1], true
		}
		if ok && a != s {
			if d, err := time.ParseDuration(v); err == nil && d > 0 {
				return d + time.Minute
			}
		}
	}
	return 10 * time.Minute
}
