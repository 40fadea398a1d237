package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vmnet/vmnet/owner"
)

// Down removes every trace of the lab name whose state is in dir: it
// stops a live supervisor (which tears down what it holds), kills QEMU
// processes still running from dir, deletes every interface tagged as the
// lab's (taps first, bridges last) and removes dir. It works from the
// state file, the interface tags, or both, so it also cleans up after a
// supervisor killed at any point. Interfaces without the lab's tag, such
// as a reused bridge, are never deleted; what the lab changed on one is
// put back.
func Down(ctx context.Context, name, dir string, logf func(string, ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	var errs []error
	st, err := ReadState(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		logf("lab %s: no state in %s; removing what is tagged as the lab's", name, dir)
	case err != nil:
		errs = append(errs, err)
	case st.Lab != name:
		return fmt.Errorf("%s holds lab %q, not %q", dir, st.Lab, name)
	}
	if st != nil && st.SupervisorAlive() && st.Supervisor != os.Getpid() {
		logf("lab %s: stopping supervisor %d", name, st.Supervisor)
		if err := stopProcess(ctx, st.Supervisor, 60*time.Second); err != nil {
			errs = append(errs, fmt.Errorf("lab %s: supervisor %d: %w", name, st.Supervisor, err))
		}
	}
	for _, pid := range qemuOf(dir) {
		logf("lab %s: stopping leftover QEMU %d", name, pid)
		if err := stopProcess(ctx, pid, 10*time.Second); err != nil {
			errs = append(errs, fmt.Errorf("lab %s: QEMU %d: %w", name, pid, err))
		}
	}
	if err := deleteTagged(name, logf); err != nil {
		errs = append(errs, err)
	}
	// A reused bridge stays, with the settings it had before the lab.
	if err := restoreReused(dir, logf); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(dir); err != nil {
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

// qemuOf finds QEMU processes whose command line points into dir (their
// QMP and console sockets live there), whatever the state file says.
func qemuOf(dir string) []int {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil
	}
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if !strings.Contains(filepath.Base(args[0]), "qemu") {
			continue
		}
		for _, a := range args {
			if strings.Contains(a, abs+"/") {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// deleteTagged deletes the interfaces tagged as name's in this namespace:
// taps first (which takes them off any bridge), then the rest.
func deleteTagged(name string, logf func(string, ...any)) error {
	h := &netlink.Handle{}
	links, err := owner.List(h, name)
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
