package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vmnet/vmnet/internal/qemu"
	"github.com/vmnet/vmnet/names"
	"github.com/vmnet/vmnet/owner"
)

// Down removes every trace of the lab name in the network namespace ns
// (the calling thread's), whose state directory is dir: it stops a live
// supervisor (which tears down what it holds), stops the lab's QEMU
// processes that are still running, deletes every interface tagged as the
// lab's (taps first, bridges last) and removes dir. It works from the
// state file, the interface tags, or both, so it also cleans up after a
// supervisor killed at any point. It trusts dir only when it carries the
// lab's marker for ns; interfaces without the lab's tag, such as a reused
// bridge, are never deleted (what the lab changed on one is put back), and
// processes only when both their pid and start time are the ones recorded.
func Down(ctx context.Context, name, dir string, ns NetNS, logf func(string, ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if err := names.Lab(name); err != nil {
		return err
	}
	dir = resolveEntry(dir)
	var errs []error
	var st *State
	m, err := ReadMarker(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		logf("lab %s: no vmnet state directory at %s; removing what is tagged as the lab's", name, dir)
	case err != nil:
		return err
	case m.Lab != name:
		return fmt.Errorf("%s holds lab %s, not %s", dir, m.Lab, name)
	case m.NetNS.ID != ns.ID:
		return NotHere(name, "down", []Elsewhere{{Dir: dir, Marker: m}})
	default:
		st, err = ReadState(dir)
		switch {
		case errors.Is(err, os.ErrNotExist):
			st = nil
		case err != nil:
			errs = append(errs, err)
		case st.Lab != name:
			return fmt.Errorf("%s holds lab %q, not %q", dir, st.Lab, name)
		}
	}
	if st != nil && st.SupervisorAlive() && st.Supervisor != os.Getpid() {
		logf("lab %s: stopping supervisor %d", name, st.Supervisor)
		if err := stopProcess(ctx, st.Supervisor, 60*time.Second); err != nil {
			errs = append(errs, fmt.Errorf("lab %s: supervisor %d: %w", name, st.Supervisor, err))
		}
	}
	if st != nil {
		for _, vm := range st.VMs {
			if !qemuOf(vm, dir) {
				continue
			}
			logf("lab %s: stopping leftover QEMU %d of vm %s", name, vm.PID, vm.Name)
			if err := stopProcess(ctx, vm.PID, 10*time.Second); err != nil {
				errs = append(errs, fmt.Errorf("lab %s: vm %s: QEMU %d: %w", name, vm.Name, vm.PID, err))
			}
		}
	}
	if err := deleteTagged(name, logf); err != nil {
		errs = append(errs, err)
	}
	// A reused bridge stays, with the settings it had before the lab.
	if err := restoreReused(dir, logf); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 && m != nil {
		if err := RemoveStateDir(dir, name, ns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// stopProcess sends SIGTERM, waits up to grace, then SIGKILL.
func stopProcess(ctx context.Context, pid int, grace time.Duration) error {
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return err
	}
	deadline := time.Now().Add(grace)
	for Alive(pid) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			syscall.Kill(pid, syscall.SIGKILL)
			for i := 0; i < 50 && Alive(pid); i++ {
				time.Sleep(100 * time.Millisecond)
			}
			if Alive(pid) {
				return fmt.Errorf("still running after SIGKILL")
			}
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// qemuOf reports whether the QEMU of vm, as the state in dir recorded
// it, still runs: the pid has the recorded start time (so it is the same
// process, not a reused pid) and it names the VM's run directory or the
// state directory exactly (not a substring: another program that merely
// mentions the path does not count): in its environment, where vmnet puts
// it (QEMU's command line holds no path of vmnet's, its sockets are fds),
// or, for QEMUs of older vmnet versions, as a path argument.
func qemuOf(vm VMState, dir string) bool {
	if vm.PID <= 0 || vm.PID == os.Getpid() || vm.PIDStart == 0 || !Alive(vm.PID) {
		return false
	}
	if st, err := procStart(vm.PID); err != nil || st != vm.PIDStart {
		return false
	}
	var roots []string
	for _, d := range []string{vm.RunDir, dir} {
		if abs, err := filepath.Abs(d); err == nil && d != "" {
			roots = append(roots, abs)
		}
	}
	if env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", vm.PID)); err == nil {
		for _, kv := range strings.Split(string(env), "\x00") {
			if v, ok := strings.CutPrefix(kv, qemu.RunDirEnv+"="); ok {
				for _, r := range roots {
					if v == r || filepath.Dir(v) == r {
						return true
					}
				}
			}
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", vm.PID))
	if err != nil {
		return false
	}
	for _, a := range strings.Split(string(b), "\x00") {
		// QEMU takes paths as whole arguments (-pidfile P) or as one
		// option of a list (path=P, unix:P,server=on).
		for _, part := range strings.Split(a, ",") {
			if _, v, ok := strings.Cut(part, "="); ok {
				part = v
			}
			part = strings.TrimPrefix(part, "unix:")
			if !filepath.IsAbs(part) || filepath.Clean(part) != part {
				continue
			}
			for _, r := range roots {
				if strings.HasPrefix(part, r+"/") {
					return true
				}
			}
		}
	}
	return false
}

// deleteTagged deletes the interfaces tagged as name's in this namespace:
// taps first (which takes them off any bridge), then the rest.
func deleteTagged(name string, logf func(string, ...any)) error {
	h := &netlink.Handle{}
	links, err := owner.List(h, owner.Lab(name))
	if err != nil {
		return err
	}
	var errs []error
	for pass := 0; pass < 2; pass++ {
		for _, l := range links {
			if (l.Type() == "tuntap") != (pass == 0) {
				continue
			}
			logf("lab %s: delete %s %s", name, l.Type(), l.Attrs().Name)
			if err := h.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
				errs = append(errs, fmt.Errorf("%s %s: delete: %w", l.Type(), l.Attrs().Name, err))
			}
		}
	}
	return errors.Join(errs...)
}
