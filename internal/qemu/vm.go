package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/images/guest"
	"github.com/vmnet/vmnet/internal/logcap"
)

// Default bounds for waits whose context carries no deadline.
const (
	DefaultStartTimeout = 30 * time.Second
	DefaultReadyTimeout = 2 * time.Minute
	DefaultWaitTimeout  = 10 * time.Minute
)

// tailLines is how many console lines go into error messages.
const tailLines = 15

// VM is a running QEMU process.
type VM struct {
	spec    Spec
	cmdline *Cmdline
	cmd     *exec.Cmd
	con     *console
	stderr  *ringBuffer
	mon     *monitor
	logFile *logcap.File
	conIn   *os.File // our end of the console socketpair: what is written goes to the guest's ttyS0

	exited  chan struct{} // closed when QEMU has exited
	waitErr error         // QEMU's exit status, valid after exited

	mu        sync.Mutex
	usedPorts map[string]string // hot-plug root port -> NIC id
	nics      map[string]bool   // ids of plugged NICs
	stopped   bool
}

var (
	notesMu   sync.Mutex
	notesSeen = map[string]bool{}
)

// noteOnce logs each distinct note once per process.
func noteOnce(logf func(string, ...any), note string) {
	if logf == nil {
		return
	}
	notesMu.Lock()
	seen := notesSeen[note]
	notesSeen[note] = true
	notesMu.Unlock()
	if !seen {
		logf("qemu: %s", note)
	}
}

var (
	tscOnce sync.Once
	tscKHz  int
)

// HostCaps inspects this machine: /dev/vhost-net, and on request a KVM
// probe and the TSC rate (both cached for the process).
func HostCaps(probeKVM, measureTSC bool) Host {
	h := Host{KVMReason: "KVM not probed"}
	if probeKVM {
		p := ProbeKVM()
		h.KVM, h.KVMReason = p.Usable, p.Reason
	}
	if measureTSC {
		tscOnce.Do(func() { tscKHz = hostTSCkHz() })
		h.TSCkHz = tscKHz
	}
	if st, err := os.Stat("/dev/vhost-net"); err == nil && st.Mode()&os.ModeDevice != 0 {
		h.VhostNet = true
		h.OpenVhost = func() (*os.File, error) { return os.OpenFile("/dev/vhost-net", os.O_RDWR, 0) }
	}
	return h
}

// Start launches QEMU for s and returns once QEMU is up: its console is
// connected and QMP answers query-status. ctx bounds the start-up only.
// QEMU gets dups of the tap queue fds (the caller keeps and closes its
// own), runs in its own process group, and is killed if vmnet dies.
func Start(ctx context.Context, s Spec) (_ *VM, err error) {
	s, err = s.withDefaults()
	if err != nil {
		return nil, err
	}
	name := s.name()
	if _, err := exec.LookPath(s.Binary); err != nil {
		return nil, fmt.Errorf("%s: QEMU binary %s not found: %w (install qemu-system-x86)", name, s.Binary, err)
	}
	for _, p := range []struct{ what, path string }{{"kernel", s.Kernel}, {"initrd", s.Initrd}} {
		if p.path == "" {
			continue
		}
		if _, err := os.Stat(p.path); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", name, p.what, err)
		}
	}
	if err := checkUserAccess(s); err != nil {
		return nil, err
	}
	if s.Accel == AccelKVM {
		if _, err := os.Stat("/dev/kvm"); err != nil {
			return nil, fmt.Errorf("%s: accel kvm: %w (use accel auto or tcg)", name, err)
		}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultStartTimeout)
		defer cancel()
	}

	var cleanup []func()
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				cleanup[i]()
			}
		}
	}()

	// Everything vmnet opens for QEMU; closed once QEMU holds its copies.
	var handed []*os.File
	defer func() {
		for _, f := range handed {
			f.Close()
		}
	}()
	if err := RootDir(s.RunDir, 0o700); err != nil {
		return nil, fmt.Errorf("%s: run dir: %w", name, err)
	}
	qmpPath := filepath.Join(s.RunDir, QMPSocketName)
	pidPath := filepath.Join(s.RunDir, PidfileName)
	if pid := runningPid(pidPath); pid != 0 {
		return nil, fmt.Errorf("%s: already running as QEMU pid %d (pidfile %s); stop it first", name, pid, pidPath)
	}
	owned := []string{qmpPath, pidPath}
	if s.ControlSocket != "" {
		owned = append(owned, s.ControlSocket)
	}
	if s.AgentSocket != "" {
		owned = append(owned, s.AgentSocket)
	}
	cleanup = append(cleanup, func() {
		for _, p := range owned {
			os.Remove(p)
		}
	})
	var hd Handles
	f, err := ListenUnix(qmpPath, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%s: QMP socket: %w", name, err)
	}
	handed, hd.QMP = append(handed, f), f
	if s.ControlSocket != "" {
		f, err := ListenUnix(s.ControlSocket, 0o600)
		if err != nil {
			return nil, fmt.Errorf("%s: control socket: %w", name, err)
		}
		handed, hd.Control = append(handed, f), f
	}
	if s.AgentSocket != "" {
		f, err := ListenUnix(s.AgentSocket, 0o600)
		if err != nil {
			return nil, fmt.Errorf("%s: guest agent socket: %w", name, err)
		}
		handed, hd.Agent = append(handed, f), f
	}
	conPair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: console socket: %w", name, err)
	}
	conOurs := os.NewFile(uintptr(conPair[0]), "console")
	hd.Console = os.NewFile(uintptr(conPair[1]), "qemu-console")
	handed = append(handed, hd.Console)
	cleanup = append(cleanup, func() { conOurs.Close() })
	if s.User != nil && s.User.UID != 0 {
		// An unprivileged QEMU reads kernel and initrd through fds: the
		// test image lives in root's home, which it cannot traverse.
		for _, b := range []struct {
			path string
			f    **os.File
		}{{s.Kernel, &hd.Kernel}, {s.Initrd, &hd.Initrd}} {
			if b.path == "" {
				continue
			}
			f, err := openBootFile(b.path)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			handed, *b.f = append(handed, f), f
		}
	}

	disks, overlays, err := prepareDisks(ctx, s)
	if err != nil {
		return nil, err
	}
	owned = append(owned, overlays...) // a failed start removes the overlays it made
	for _, df := range disks {
		for _, f := range []*os.File{df.TopRO, df.TopRW, df.Base} {
			if f != nil {
				handed = append(handed, f)
			}
		}
	}

	h := HostCaps(s.Accel == AccelAuto, s.Machine == MachineMicroVM && s.Accel != AccelKVM)
	h.Handles = hd
	h.Disks = disks
	if s.User != nil && s.User.UID != 0 && (s.Accel == AccelKVM || h.KVM) {
		if err := userCan(s.User, "/dev/kvm", 6, false); err != nil {
			if s.Accel == AccelKVM {
				return nil, fmt.Errorf("%s: accel kvm: QEMU runs as %s, which cannot open /dev/kvm: %w (add the user to the device's group, e.g. usermod -aG kvm USER, or use accel auto or tcg)", name, s.User, err)
			}
			h.KVMUserReason = fmt.Sprintf("QEMU's user %s cannot open /dev/kvm (%v); add it to the device's group to use KVM", s.User, err)
		}
	}
	cl, err := BuildCmdline(s, h)
	if err != nil {
		return nil, err
	}
	defer cl.Close() // QEMU holds its own copies after exec
	for _, n := range cl.Notes {
		noteOnce(s.Logf, n)
	}

	vm := &VM{spec: s, cmdline: cl, stderr: &ringBuffer{max: 16 << 10}, exited: make(chan struct{}), usedPorts: map[string]string{}, nics: map[string]bool{}}
	for _, nic := range s.NICs {
		vm.nics[nic.ID] = true
	}
	var outs []io.Writer
	if s.ConsoleLog != "" {
		f, err := logcap.Create(s.ConsoleLog, s.ConsoleMax, 0o640)
		if err != nil {
			return nil, fmt.Errorf("%s: console %w", name, err)
		}
		vm.logFile = f
		cleanup = append(cleanup, func() { f.Close() })
		outs = append(outs, f)
	}
	outs = append(outs, s.ConsoleTee)
	vm.con = newConsole(s.ConsoleLines, outs...)
	vm.con.nonce = guest.NonceOf(s.Append)
	if s.Nonce != "" {
		vm.con.nonce = s.Nonce
	}

	for _, nic := range s.NICs {
		reattachQueues(nic.Queues)
	}
	cmd := exec.Command(cl.Binary, cl.Args...)
	cmd.ExtraFiles = cl.Files
	cmd.Stdin = nil
	// QEMU makes the overlays of snapshot=on disks in $TMPDIR; root's may
	// be private (pam_tmpdir, a test's), so QEMU's user gets /var/tmp.
	cmd.Env = append(os.Environ(), "TMPDIR=/var/tmp")
	if abs, err := filepath.Abs(s.RunDir); err == nil {
		cmd.Env = append(cmd.Env, RunDirEnv+"="+abs)
	}
	cmd.Stdout = vm.stderr
	cmd.Stderr = vm.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,            // a terminal's ^C goes to vmnet, which stops QEMU in order
		Pdeathsig: syscall.SIGKILL, // no orphaned guests if vmnet dies
	}
	if s.User != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: s.User.UID, Gid: s.User.GID, Groups: append([]uint32{}, s.User.Groups...)}
	}
	if err := startFromLauncher(cmd); err != nil {
		return nil, fmt.Errorf("%s: start %s: %w", name, cl.Binary, err)
	}
	vm.cmd = cmd
	go func() {
		vm.waitErr = cmd.Wait()
		close(vm.exited)
	}()
	cleanup = append(cleanup, func() {
		vm.kill()
		select {
		case <-vm.exited:
		case <-time.After(5 * time.Second):
		}
	})
	for _, f := range handed {
		f.Close() // QEMU has them now; the console's other end is ours
	}
	handed = nil
	if err := writePidfile(pidPath, cmd.Process.Pid); err != nil {
		return nil, fmt.Errorf("%s: pidfile: %w", name, err)
	}

	vm.conIn = conOurs
	go func() {
		io.Copy(vm.con, conOurs)
		vm.con.flush()
		conOurs.Close()
		close(vm.con.done)
	}()
	go vm.answerExits()

	vm.mon = newMonitor(qmpPath, vm.exited)
	cleanup = append(cleanup, vm.mon.close)
	if _, err := vm.Status(ctx); err != nil {
		return nil, vm.startErr(err)
	}
	return vm, nil
}

// runningPid returns the pid in a QEMU pidfile if that process is alive,
// is QEMU and started when the pidfile says (a pid the kernel has since
// given to another process does not count), else 0.
func runningPid(pidfile string) int {
	// vmnet writes the pidfile in a root-only directory; still, read a
	// few bytes of a regular file, not whatever a link points to.
	pf, err := os.OpenFile(pidfile, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return 0
	}
	b, err := io.ReadAll(io.LimitReader(pf, 64))
	pf.Close()
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 0 || procStart(pid) != f[1] {
		return 0
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || !strings.HasPrefix(string(comm), "qemu") {
		return 0
	}
	return pid
}

// procStart is a process's start time in clock ticks since boot (field
// 22 of /proc/PID/stat), "" if it is gone.
func procStart(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

// RunDirEnv is set in QEMU's environment to its run directory: QEMU's
// command line names no path of vmnet's (every socket is an fd), so this
// is how `vmnet down` finds a QEMU whose supervisor is gone, by exact
// directory rather than by a substring of the command line.
const RunDirEnv = "VMNET_RUN_DIR"

// startErr explains a start-up failure, with QEMU's stderr if it died.
func (vm *VM) startErr(err error) error {
	select {
	case <-vm.exited:
	case <-time.After(100 * time.Millisecond):
	}
	// QEMU refuses an image another QEMU holds before it serves QMP.
	if lerr := lockError(vm.spec, vm.stderr.String()); lerr != nil {
		return lerr
	}
	select {
	case <-vm.exited:
		return fmt.Errorf("%s: QEMU exited during start-up (%v): %s", vm.spec.name(), vm.waitErr, orNone(vm.stderr.String()))
	default:
	}
	if errors.Is(err, errQEMUExited) {
		return fmt.Errorf("%s: QEMU exited during start-up: %s", vm.spec.name(), orNone(vm.stderr.String()))
	}
	return fmt.Errorf("%s: %w; QEMU stderr: %s", vm.spec.name(), err, orNone(vm.stderr.String()))
}

func orNone(s string) string {
	if s == "" {
		return "(empty)"
	}
	return s
}

// Name is the VM's name.
func (vm *VM) Name() string { return vm.spec.Name }

// PID is QEMU's process id.
func (vm *VM) PID() int { return vm.cmd.Process.Pid }

// Cmdline is the command QEMU was started with.
func (vm *VM) Cmdline() []string { return append([]string{vm.cmdline.Binary}, vm.cmdline.Args...) }

// Accel is the accelerator QEMU runs with (kvm or tcg).
func (vm *VM) Accel() string { return vm.cmdline.Accel }

// ConsoleTail returns up to n of the last console lines, oldest first.
func (vm *VM) ConsoleTail(n int) []string { return vm.con.tail(n) }

// Exited is closed when QEMU has exited.
func (vm *VM) Exited() <-chan struct{} { return vm.exited }

// Stderr returns the last part of QEMU's stderr and stdout.
func (vm *VM) Stderr() string { return vm.stderr.String() }

// withDefault gives ctx a deadline if it has none.
func withDefault(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc, time.Duration) {
	if dl, ok := ctx.Deadline(); ok {
		return ctx, func() {}, time.Until(dl).Round(time.Second)
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	return ctx, cancel, d
}

// WaitReady waits until the guest prints VMNET-READY.
func (vm *VM) WaitReady(ctx context.Context) error {
	ctx, cancel, limit := withDefault(ctx, DefaultReadyTimeout)
	defer cancel()
	start := time.Now()
	select {
	case <-vm.con.ready:
		return nil
	case <-vm.con.failed:
		time.Sleep(100 * time.Millisecond) // collect the other error lines
		return fmt.Errorf("%s: guest set-up failed: %s; last console lines: %s",
			vm.spec.name(), strings.Join(vm.con.guestErrors(), "; "), vm.con.tailText(tailLines))
	case <-vm.exited:
		// The console may still hold the marker, written just before exit.
		select {
		case <-vm.con.ready:
			return nil
		case <-time.After(200 * time.Millisecond):
		}
		return fmt.Errorf("%s: QEMU exited (%v) before %s; QEMU stderr: %s; last console lines: %s",
			vm.spec.name(), vm.waitErr, guest.ReadyMarker, orNone(vm.stderr.String()), vm.con.tailText(tailLines))
	case <-ctx.Done():
		return fmt.Errorf("%s: no %s within %v (%v); last console lines: %s",
			vm.spec.name(), guest.ReadyMarker, limitOr(limit, start), ctx.Err(), vm.con.tailText(tailLines))
	}
}

// exitPoweroff is how long a guest that printed its exit status may take
// to power off. A test-image guest takes well under a second; 15 s leaves
// room for a starved TCG guest on a loaded host.
const exitPoweroff = 15 * time.Second

func limitOr(limit time.Duration, start time.Time) time.Duration {
	if limit > 0 {
		return limit
	}
	return time.Since(start).Round(time.Millisecond)
}

// Wait waits for the guest's VMNET-EXIT=<n> line and QEMU's exit, and
// returns n. A guest that prints the line but does not power off within
// exitPoweroff is stopped. On timeout the VM keeps running; call Stop.
func (vm *VM) Wait(ctx context.Context) (int, error) {
	ctx, cancel, limit := withDefault(ctx, DefaultWaitTimeout)
	defer cancel()
	start := time.Now()
	select {
	case <-vm.con.exited:
	case <-vm.exited:
		select {
		case <-vm.con.exited:
		case <-vm.con.done:
			select {
			case <-vm.con.exited:
			default:
				return 0, fmt.Errorf("%s: QEMU exited (%v) without %s<status>; QEMU stderr: %s; last console lines: %s",
					vm.spec.name(), vm.waitErr, guest.ExitMarker, orNone(vm.stderr.String()), vm.con.tailText(tailLines))
			}
		case <-time.After(2 * time.Second):
			return 0, fmt.Errorf("%s: QEMU exited (%v) without %s<status>; last console lines: %s",
				vm.spec.name(), vm.waitErr, guest.ExitMarker, vm.con.tailText(tailLines))
		}
	case <-ctx.Done():
		return 0, fmt.Errorf("%s: guest command did not finish (no %s) within %v; last console lines: %s",
			vm.spec.name(), guest.ExitMarker, limitOr(limit, start), vm.con.tailText(tailLines))
	}
	select {
	case <-vm.exited:
	case <-time.After(exitPoweroff):
		// The program is done and its status known. A guest whose
		// power-off hangs (a kernel worker stuck in shutdown, seen on a
		// loaded host) must not hold the caller until the program's
		// timeout: Stop quits QEMU. The console is read to its end
		// below, so a later marker still counts. A program that prints
		// a marker with the nonce itself and runs on for longer is cut
		// off with that status; it could report any status anyway.
		if vm.spec.Logf != nil {
			vm.spec.Logf("%s: the guest printed its exit status but did not power off within %v; stopping QEMU", vm.spec.name(), exitPoweroff)
		}
		vm.Stop(ctx)
	case <-ctx.Done():
		status := vm.con.exitStatus()
		return status, fmt.Errorf("%s: guest printed %s%d but QEMU did not exit within %v; last console lines: %s",
			vm.spec.name(), guest.ExitMarker, status, limitOr(limit, start), vm.con.tailText(tailLines))
	}
	// The last marker counts: read the console to its end first.
	select {
	case <-vm.con.done:
	case <-time.After(2 * time.Second):
	}
	vm.release()
	return vm.con.exitStatus(), nil
}

// answerExits tells the guest that its exit marker arrived: /init powers
// off only then (or after printing it three times unanswered), so that
// power-off cannot drop the marker from the serial port's buffers. A
// failed write (QEMU gone) changes nothing: the console is read to its
// end regardless.
func (vm *VM) answerExits() {
	ack := []byte("\n" + guest.AckLine(vm.con.nonce) + "\n")
	for {
		select {
		case <-vm.con.acks:
			vm.conIn.Write(ack)
		case <-vm.con.done:
			return
		}
	}
}

// Status is QMP query-status.
type Status struct {
	Status  string `json:"status"` // running, paused, shutdown, ...
	Running bool   `json:"running"`
}

// Status asks QEMU for the run state.
func (vm *VM) Status(ctx context.Context) (Status, error) {
	ctx, cancel, _ := withDefault(ctx, 10*time.Second)
	defer cancel()
	var st Status
	raw, err := vm.mon.run(ctx, "query-status", nil, nil)
	if err != nil {
		return st, vm.qmpErr(err)
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, fmt.Errorf("%s: query-status: %w", vm.spec.name(), err)
	}
	return st, nil
}

// Events delivers the QMP events with the given names (all if none) until
// cancel is called. Events arriving while the channel is full are dropped.
func (vm *VM) Events(names ...string) (<-chan Event, func()) {
	return vm.mon.subscribe(func(ev Event) bool {
		return len(names) == 0 || slices.Contains(names, ev.Event)
	})
}

// QMP runs any QMP command with JSON-encodable arguments and returns its
// "return" value.
func (vm *VM) QMP(ctx context.Context, execute string, args any) (json.RawMessage, error) {
	ctx, cancel, _ := withDefault(ctx, 10*time.Second)
	defer cancel()
	raw, err := vm.mon.run(ctx, execute, args, nil)
	if err != nil {
		return nil, vm.qmpErr(err)
	}
	return raw, nil
}

// qmpErr names the VM and, if QEMU is gone, says so with its stderr.
func (vm *VM) qmpErr(err error) error {
	select {
	case <-vm.exited:
		return fmt.Errorf("%s: %w (QEMU exited: %v; stderr: %s)", vm.spec.name(), err, vm.waitErr, orNone(vm.stderr.String()))
	default:
		return fmt.Errorf("%s: %w", vm.spec.name(), err)
	}
}

// Stop shuts the guest down: ACPI power button (skipped once the guest has
// reported its exit status), then QMP quit, then SIGKILL, each bounded.
// It always releases the VM's resources.
func (vm *VM) Stop(ctx context.Context) error {
	ctx, cancel, _ := withDefault(ctx, vm.spec.PowerdownGrace+15*time.Second)
	defer cancel()
	defer vm.release()
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-vm.exited:
			return true
		case <-t.C:
		case <-ctx.Done():
		}
		return false
	}
	select {
	case <-vm.exited:
		return nil
	default:
	}
	select {
	case <-vm.con.exited:
		if wait(vm.spec.PowerdownGrace) { // the guest is powering off by itself
			return nil
		}
	default:
		pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := vm.mon.run(pctx, "system_powerdown", nil, nil)
		pcancel()
		if err == nil && wait(vm.spec.PowerdownGrace) {
			return nil
		}
	}
	qctx, qcancel := context.WithTimeout(ctx, 3*time.Second)
	vm.mon.run(qctx, "quit", nil, nil)
	qcancel()
	if wait(3 * time.Second) {
		return nil
	}
	vm.kill()
	if wait(5 * time.Second) {
		return nil
	}
	return fmt.Errorf("%s: QEMU (pid %d) did not exit even after SIGKILL", vm.spec.name(), vm.PID())
}

func (vm *VM) kill() {
	select {
	case <-vm.exited:
		return
	default:
	}
	if vm.cmd != nil && vm.cmd.Process != nil {
		vm.cmd.Process.Signal(syscall.SIGKILL)
	}
}

// release closes what vmnet holds for the VM once QEMU is gone (or being
// killed) and removes the run files.
func (vm *VM) release() {
	vm.mu.Lock()
	if vm.stopped {
		vm.mu.Unlock()
		return
	}
	vm.stopped = true
	vm.mu.Unlock()
	if vm.mon != nil {
		vm.mon.close()
	}
	select {
	case <-vm.con.done:
	case <-time.After(2 * time.Second):
	}
	if vm.logFile != nil {
		vm.logFile.Close()
	}
	for _, p := range []string{filepath.Join(vm.spec.RunDir, QMPSocketName), filepath.Join(vm.spec.RunDir, PidfileName), vm.spec.ControlSocket, vm.spec.AgentSocket} {
		if p != "" {
			os.Remove(p)
		}
	}
}
