package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/vmconfig"
)

// ErrTimeout marks a guest that was not ready, or whose command had not
// finished, in the time Run allowed (`vmnet run` exits 124, as timeout(1)).
var ErrTimeout = errors.New("timed out")

// ErrInterrupted marks a Run whose context ended (Ctrl-C: exit 130).
var ErrInterrupted = errors.New("interrupted")

// RunOptions tune Run.
type RunOptions struct {
	Options
	// BootTimeout bounds the time until the guest is ready.
	BootTimeout time.Duration
	// Timeout bounds the time the command may run once the guest is ready.
	Timeout time.Duration
	// Stdout and Stderr receive the output of a command run through the
	// guest agent (images such as debian-12); nil: Console.
	Stdout, Stderr io.Writer
	// Notef receives notices for the user (a guest left running without
	// a command). Nil discards.
	Notef func(format string, args ...any)
}

// Run boots one VM of cfg in a fresh network namespace of its own, runs
// cmd in it (the VM's own command when cmd is empty) and returns the
// command's exit status. Everything it creates goes away again, whatever
// happens. A timeout wraps ErrTimeout, the end of ctx ErrInterrupted.
//
// Every run works in its own namespace so that runs of one lab side by
// side neither share nor fight over bridges, taps and addresses; its
// interfaces go away with it, and QEMU reaches the taps through their
// fds. The caller's namespace is where the image is fetched.
func Run(ctx context.Context, cfg *vmconfig.Lab, vmName, cmd string, opts RunOptions) (status int, err error) {
	// A private run directory: CI jobs may run the same lab side by side.
	runDir, err := os.MkdirTemp("", "vmnet-run-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(runDir)
	opts.RunDir = runDir
	private, err := netns.New()
	if err != nil {
		return 0, fmt.Errorf("vmnet run: private network namespace: %w", err)
	}
	defer private.Close()
	err = netns.Do(private, func() error {
		status, err = runIn(ctx, cfg, vmName, cmd, opts)
		return err
	})
	return status, err
}

// runIn is Run inside the run's private network namespace.
func runIn(ctx context.Context, cfg *vmconfig.Lab, vmName, cmd string, opts RunOptions) (status int, err error) {
	notef := opts.Notef
	if notef == nil {
		notef = func(string, ...any) {}
	}
	l, err := New(cfg, opts.Options)
	if err != nil {
		return 0, err
	}
	defer l.Close()
	vm, err := l.VM(vmName)
	if err != nil {
		return 0, err
	}
	// The console streams to the caller; a log the lab file did not ask
	// for goes away with the run instead of into the lab's state directory.
	if vm.Console == filepath.Join(cfg.StateDir, vm.Name+".console") {
		vm.Console = filepath.Join(opts.RunDir, vm.Name+".console")
	}
	// Whatever happens from here on, everything created goes away again.
	defer func() {
		tctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
		defer cancel()
		if terr := l.Teardown(tctx); terr != nil {
			err = errors.Join(err, fmt.Errorf("teardown: %w", terr))
		}
	}()
	if err := l.CreateTaps(vm); err != nil {
		return 0, err
	}
	v, err := l.Boot(ctx, vm, cmd)
	if err != nil {
		return 0, err
	}
	bctx, cancel := context.WithTimeout(ctx, opts.BootTimeout)
	defer cancel()
	ready := v.WaitReady // the test image's marker, as for a command in the guest's /init
	if m := readiness(vm); m == vmconfig.ReadyAgent || m == vmconfig.ReadySSH {
		ready = func(ctx context.Context) error { return l.waitReady(ctx, vm, v) }
	}
	done := l.step("vm " + vm.Name + ": ready (" + readiness(vm) + ")")
	err = ready(bctx)
	done(err)
	if err != nil {
		return 0, timedOut(ctx, bctx, err)
	}
	if vm.Image != "" {
		// A named image runs the command through its guest agent.
		return l.runAgent(ctx, vm, cmd, opts)
	}
	if cmd == "" && vm.Command == "" {
		notef("vm %s is up; no command given, so it runs until it powers off or Ctrl-C", vm.Name)
		select {
		case <-v.Exited():
			return 0, nil
		case <-ctx.Done():
			return 0, ErrInterrupted
		}
	}
	wctx, cancel2 := context.WithTimeout(ctx, opts.Timeout)
	defer cancel2()
	st, err := v.Wait(wctx)
	if err != nil {
		return 0, timedOut(ctx, wctx, err)
	}
	return st, nil
}

// timedOut tells a wait that ran out of time (ErrTimeout) from an
// interrupt (ErrInterrupted).
func timedOut(parent, ctx context.Context, err error) error {
	switch {
	case parent.Err() != nil:
		return fmt.Errorf("%w: %w", ErrInterrupted, err)
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	return err
}
