package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vmnet/vmnet/images"
	"github.com/vmnet/vmnet/internal/lab"
	"github.com/vmnet/vmnet/names"
	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/vmconfig"
)

// exitTimeout is what `timeout(1)` returns, so CI scripts read it alike.
const exitTimeout = 124

func validateCommand() *command {
	return &command{name: "validate", args: "LAB.toml [-o text|json]", summary: "check a lab file and print every problem", run: validate}
}

func validate(e *env, args []string) error {
	fs := e.flags("vmnet validate", "LAB.toml [-o text|json]")
	var o output
	o.register(fs, "text", "json")
	pos, err := fs.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if o.format == "json" {
		// Every error and warning as {file, line, column, severity,
		// message}, [] for a clean file; exit 1 when there are errors.
		ns, err := lab.CurrentNetNS()
		if err != nil {
			return err
		}
		ps, err := vmconfig.ProblemsOf(vmconfig.LoadWith(pos[0], vmconfig.Options{StateRoot: lab.StateRoot(ns)}))
		if err != nil {
			return err
		}
		if err := writeJSON(e.stdout, ps); err != nil || !ps.HasErrors() {
			return err
		}
		return exitStatus(exitError)
	}
	cfg, err := loadLab(e, pos[0])
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, cfg.Summary())
	return nil
}

// loadLab loads and validates a lab file, printing warnings. Problems
// come back one per line, each with file:line:col.
//
// A lab without state_dir keeps its state under the state root of the
// calling thread's network namespace (see lab.StateRoot).
func loadLab(e *env, path string) (*vmconfig.Lab, error) {
	ns, err := lab.CurrentNetNS()
	if err != nil {
		return nil, err
	}
	cfg, err := vmconfig.LoadWith(path, vmconfig.Options{StateRoot: lab.StateRoot(ns)})
	var ps vmconfig.Problems
	if errors.As(err, &ps) {
		for _, p := range ps {
			fmt.Fprintln(e.stderr, p)
		}
		n := 0
		for _, p := range ps {
			if p.Severity == vmconfig.Error {
				n++
			}
		}
		return nil, fmt.Errorf("%s: %d problem(s); nothing was changed", path, n)
	}
	if err != nil {
		return nil, err
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintln(e.stderr, w)
	}
	return cfg, nil
}

func runCommand() *command {
	return &command{name: "run", args: "LAB.toml VM [--timeout D] [-- COMMAND...]",
		summary: "boot one VM of a lab, run a command in it, exit with its status", run: runVM}
}

func runVM(e *env, args []string) (err error) {
	fs := e.flags("vmnet run", "LAB.toml VM [--timeout D] [--quiet] [-- COMMAND...]\n\n"+
		"COMMAND runs in the guest with sh -c: one word is taken as a shell command line ('ping -c1 h && x'),\n"+
		"several words are quoted and run as they are. vmnet exits with the command's status, 124 on timeout.\n")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up (exit 124) when the guest has not finished after this long")
	boot := fs.Duration("boot-timeout", 3*time.Minute, "give up when the guest is not ready after this long")
	quiet := fs.Bool("quiet", false, "do not stream the guest console and the steps to the terminal")
	pos, err := fs.parse(args, 2, -1)
	if err != nil {
		return err
	}
	if err := checkArg(names.VM, pos[1]); err != nil {
		return err
	}
	cfg, err := loadLab(e, pos[0])
	if err != nil {
		return err
	}
	cmd := shellJoin(pos[2:])

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A private run directory: CI jobs may run the same lab side by side.
	runDir, err := os.MkdirTemp("", "vmnet-run-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(runDir)
	opts := lab.Options{Logf: func(f string, a ...any) { fmt.Fprintf(e.stderr, "vmnet: "+f+"\n", a...) },
		Console: e.stdout, ImageProgress: e.stderr, RunDir: runDir}
	if *quiet {
		opts.Logf, opts.Console, opts.ImageProgress = nil, nil, nil
	}
	// Every run works in a fresh network namespace of its own, so that
	// runs of one lab side by side neither share nor fight over bridges,
	// taps and addresses. Its interfaces go away with it; QEMU reaches
	// the taps through their fds.
	private, err := netns.New()
	if err != nil {
		return fmt.Errorf("vmnet run: private network namespace: %w", err)
	}
	defer private.Close()
	return netns.Do(private, func() error { return e.runIn(ctx, cfg, opts, pos[1], cmd, runDir, *boot, *timeout) })
}

// runIn is `vmnet run` inside the run's private network namespace.
func (e *env) runIn(ctx context.Context, cfg *vmconfig.Lab, opts lab.Options, vmName, cmd, runDir string,
	boot, timeout time.Duration) (err error) {
	l, err := lab.New(cfg, opts)
	if err != nil {
		return err
	}
	defer l.Close()
	vm, err := l.VM(vmName)
	if err != nil {
		return err
	}
	// The console streams to stdout; a log the lab file did not ask for
	// goes away with the run instead of into the lab's state directory.
	if vm.Console == filepath.Join(cfg.StateDir, vm.Name+".console") {
		vm.Console = filepath.Join(runDir, vm.Name+".console")
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
		return err
	}
	v, err := l.Boot(ctx, vm, cmd)
	if err != nil {
		return err
	}
	bctx, cancel := context.WithTimeout(ctx, boot)
	defer cancel()
	if err := v.WaitReady(bctx); err != nil {
		return e.timedOut(ctx, bctx, err)
	}
	if cmd == "" && vm.Command == "" {
		fmt.Fprintf(e.stderr, "vmnet: vm %s is up; no command given, so it runs until it powers off or Ctrl-C\n", vm.Name)
		select {
		case <-v.Exited():
			return nil
		case <-ctx.Done():
			return exitStatus(130)
		}
	}
	wctx, cancel2 := context.WithTimeout(ctx, timeout)
	defer cancel2()
	st, err := v.Wait(wctx)
	if err != nil {
		return e.timedOut(ctx, wctx, err)
	}
	if st != 0 {
		return exitStatus(st)
	}
	return nil
}

// timedOut turns a wait that ran out of time into exit status 124 (after
// printing why), and an interrupt into 130.
func (e *env) timedOut(parent, ctx context.Context, err error) error {
	switch {
	case parent.Err() != nil:
		fmt.Fprintf(e.stderr, "vmnet: interrupted: %v\n", err)
		return exitStatus(130)
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		fmt.Fprintf(e.stderr, "vmnet: timeout: %v\n", err)
		return exitStatus(exitTimeout)
	}
	return err
}

// shellJoin turns the words after "--" into the guest's sh -c command. A
// single word is a shell command line, as with ssh (`-- 'a | b'`); several
// words are quoted so the guest sees them unchanged, as with exec.
func shellJoin(words []string) string {
	if len(words) == 1 {
		return words[0]
	}
	q := make([]string, len(words))
	for i, w := range words {
		if w != "" && strings.Trim(w, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == "" {
			q[i] = w
			continue
		}
		q[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

func imageCommand() *command {
	return &command{name: "image", summary: "build the small test guest image", subs: []*command{
		{name: "build", args: "[--cache DIR] [--modules a,b]", summary: "build (or reuse) the test guest image", run: imageBuild},
	}}
}

func imageBuild(e *env, args []string) error {
	fs := e.flags("vmnet image build", "[--cache DIR] [--modules a,b]")
	cache := fs.String("cache", "", "cache directory (default $VMNET_CACHE, else ~/.cache/vmnet)")
	mods := fs.String("modules", "", "extra kernel modules to put into the image, e.g. bridge,8021q")
	if _, err := fs.parse(args, 0, 0); err != nil {
		return err
	}
	opts := images.Options{CacheDir: *cache, Progress: e.stderr}
	if *mods != "" {
		opts.Modules = strings.Split(*mods, ",")
	}
	img, err := images.Ensure(context.Background(), opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "kernel  %s\ninitrd  %s\nversion %s\n", img.Kernel, img.Initrd, img.KernelVersion)
	return nil
}

func lsCommand() *command {
	return &command{name: "ls", args: "[-o table|json]", summary: "list the labs of every network namespace: name, namespace, state, VMs", run: ls}
}

func ls(e *env, args []string) error {
	fs := e.flags("vmnet ls", "[-o table|json]")
	var o output
	o.register(fs, lab.ListFormats...)
	if _, err := fs.parse(args, 0, 0); err != nil {
		return err
	}
	labs, err := lab.List()
	if err != nil {
		return err
	}
	return lab.WriteList(e.stdout, o.format, labs)
}
