package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmnet/vmnet/internal/gexec"
)

const execLong = "Boots the vmnet test guest, runs the statically linked PROGRAM in it as root with ARGS and exits\n" +
	"with its status. Made for go test (go test -exec 'vmnet exec').\n\n" +
	"The program starts in a directory of the same path as the current one, with ./testdata carried\n" +
	"along (at most 64 MiB); its stdout and stderr (one serial console) go to stdout without the boot\n" +
	"messages. Flags stand before PROGRAM; everything from PROGRAM on belongs to it. --verbose copies\n" +
	"the boot console, image steps and timings to stderr. The guest is restored from a snapshot of a\n" +
	"booted one (the first run of a shape saves it; the program comes on a disk); --cold boots it from\n" +
	"scratch.\n" +
	"Exit status: the program's, 124 when the guest did not come up or finish in time, 125 when\n" +
	"vmnet could not run it at all (for example a dynamically linked binary), 130 on interrupt."

// exitCannotRun tells a caller (go test, git bisect run) that the program
// never ran, as opposed to failing.
const exitCannotRun = 125

// memFlag is a size in MiB: 512, 512M, 1G.
type memFlag int

func (m *memFlag) String() string { return strconv.Itoa(int(*m)) }
func (m *memFlag) Type() string   { return "MiB" }
func (m *memFlag) Set(s string) error {
	mul := 1
	t := strings.TrimSuffix(strings.ToUpper(s), "B")
	t = strings.TrimSuffix(t, "I")
	switch {
	case strings.HasSuffix(t, "G"):
		mul, t = 1024, strings.TrimSuffix(t, "G")
	case strings.HasSuffix(t, "M"):
		t = strings.TrimSuffix(t, "M")
	}
	n, err := strconv.Atoi(t)
	if err != nil || n <= 0 {
		return fmt.Errorf("memory %q: want MiB like 512, 512M or 1G", s)
	}
	*m = memFlag(n * mul)
	return nil
}

type execFlags struct {
	mods, progs, accel, machine, cache string
	cpus                               int
	mem                                memFlag
	timeout, boot                      time.Duration
	klog, cold                         bool
	envs                               []string
}

func execCommand(e *env) *cobra.Command {
	f := execFlags{mem: 512}
	c := &cobra.Command{
		Use:   "exec [flags] PROGRAM [ARGS...]",
		Short: "run a static program in a throwaway guest (go test -exec)",
		Long:  execLong,
		Example: `  CGO_ENABLED=0 go test -exec 'vmnet exec' -run VLAN -v ./bridge/
  vmnet exec --cpus 2 --memory 1G ./bridge.test -test.run VLAN
  vmnet exec --env GODEBUG=netdns=go --kernel-modules bridge,8021q ./prog`,
		Args: nargs(1, -1),
		RunE: func(_ *cobra.Command, args []string) error { return execProgram(e, args, &f) },
	}
	// Unlike other verbs, flags end at PROGRAM: its own flags (-test.v)
	// must not be taken for vmnet's.
	c.Flags().SetInterspersed(false)
	fs := c.Flags()
	fs.StringVar(&f.mods, "kernel-modules", strings.Join(gexec.DefaultModules, ","),
		"kernel modules to put into the image and load at boot, with their dependencies (comma-separated; \"\" for none)")
	fs.StringVar(&f.progs, "programs", "", "host programs to carry into the guest's PATH with their libraries (comma-separated; default: those of "+
		strings.Join(gexec.DefaultPrograms, ",")+" the host has; \"none\" for none)")
	fs.IntVar(&f.cpus, "cpus", 1, "guest vCPUs (under TCG on a busy host one boots fastest; more for tests that need parallelism)")
	fs.Var(&f.mem, "memory", "guest memory in MiB (512, 512M, 1G)")
	fs.DurationVar(&f.timeout, "timeout", 0, "give up (exit 124) when the program has not finished after this long (default: the program's -test.timeout plus 1m, else 10m)")
	fs.DurationVar(&f.boot, "boot-timeout", 2*time.Minute, "give up (exit 124) when the guest is not ready after this long")
	fs.StringVar(&f.accel, "accel", "auto", "accelerator: auto (KVM where it really works, else TCG), kvm or tcg")
	fs.StringVar(&f.machine, "machine", "", "QEMU machine: microvm, pc or q35 (default q35, restored from a snapshot; microvm with --cold; microvm always boots cold)")
	fs.BoolVar(&f.cold, "cold", false, "boot the guest from scratch instead of restoring a snapshot of a booted one (the first run of a shape saves it; vmnet image prune removes them)")
	fs.StringVar(&f.cache, "cache", "", "image cache `DIR`ectory (default $VMNET_CACHE, else ~/.cache/vmnet)")
	fs.BoolVar(&f.klog, "kernel-log", false, "leave kernel warnings on the console while the program runs (they then mix with its output)")
	fs.StringArrayVar(&f.envs, "env", nil, "NAME=VALUE to set in the guest (repeatable); CI, GODEBUG, GOTRACEBACK, GOMAXPROCS, ... pass through by themselves")
	c.RegisterFlagCompletionFunc("accel", cobra.FixedCompletions([]string{"auto", "kvm", "tcg"}, cobra.ShellCompDirectiveNoFileComp))
	c.RegisterFlagCompletionFunc("machine", cobra.FixedCompletions([]string{"microvm", "pc", "q35"}, cobra.ShellCompDirectiveNoFileComp))
	return c
}

func execProgram(e *env, pos []string, f *execFlags) error {
	switch {
	case f.cpus < 1:
		return usagef("vmnet exec: --cpus %d: want at least 1", f.cpus)
	case f.accel != "auto" && f.accel != "kvm" && f.accel != "tcg":
		return usagef("vmnet exec: --accel %q: want auto, kvm or tcg", f.accel)
	case f.machine != "" && f.machine != "microvm" && f.machine != "pc" && f.machine != "q35":
		return usagef("vmnet exec: --machine %q: want microvm, pc or q35", f.machine)
	case f.timeout < 0 || f.boot <= 0:
		return usagef("vmnet exec: --timeout and --boot-timeout want positive durations such as 2m")
	}
	o := gexec.Options{
		Program: pos[0], Args: pos[1:], Env: f.envs,
		CPUs: f.cpus, MemoryMiB: int(f.mem), Accel: f.accel, Machine: f.machine,
		BootTimeout: f.boot, Timeout: f.timeout, CacheDir: f.cache,
		Stdout: e.stdout, KernelLog: f.klog, Cold: f.cold, Warn: e.stderr,
	}
	o.Modules = []string{}
	for _, m := range strings.Split(f.mods, ",") {
		if m = strings.TrimSpace(m); m != "" {
			o.Modules = append(o.Modules, m)
		}
	}
	switch f.progs {
	case "":
	case "none":
		o.Programs = []string{}
	default:
		o.Programs = strings.Split(f.progs, ",")
	}
	if o.Timeout == 0 {
		o.Timeout = gexec.TimeoutFor(o.Args)
	}
	if e.verbose {
		o.Console = e.stderr
		o.Progress = e.stderr
		o.Logf = func(f string, a ...any) { fmt.Fprintf(e.stderr, "vmnet exec: "+f+"\n", a...) }
	} else {
		// Image builds take a while and say so; a cached image says nothing,
		// since go test shows stderr as test output.
		o.Progress = &quietCached{w: e.stderr}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := gexec.Run(ctx, o)
	if e.verbose && res.Total > 0 {
		fmt.Fprintf(e.stderr, "vmnet exec: image+archive %.2fs, QEMU start to program start %.2fs, program start to QEMU exit %.2fs, QEMU start to exit %.2fs; status %d\n",
			res.Image.Seconds(), res.Boot.Seconds(), res.Run.Seconds(), res.Total.Seconds(), res.Status)
	}
	switch {
	case err == nil:
		if res.Status != 0 {
			return exitStatus(res.Status)
		}
		return nil
	case ctx.Err() != nil:
		fmt.Fprintf(e.stderr, "vmnet exec: interrupted: %v\n", err)
		return exitStatus(130)
	case errors.Is(err, gexec.ErrTimeout):
		fmt.Fprintf(e.stderr, "vmnet exec: %v\n", err)
		return exitStatus(exitTimeout)
	default:
		fmt.Fprintf(e.stderr, "vmnet exec: %v\n", err)
		return exitStatus(exitCannotRun)
	}
}

// quietCached holds back the image recipe's first steps and drops them
// when the image turns out to be cached; anything else (a build) is shown.
type quietCached struct {
	w       io.Writer
	held    []byte
	partial []byte
	pass    bool
	drop    bool
}

func (q *quietCached) Write(p []byte) (int, error) {
	if q.pass {
		return q.w.Write(p)
	}
	if q.drop {
		return len(p), nil
	}
	q.partial = append(q.partial, p...)
	for {
		i := strings.IndexByte(string(q.partial), '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(q.partial[:i+1])
		q.partial = q.partial[i+1:]
		switch {
		case strings.Contains(line, "using cached image"):
			q.drop, q.held = true, nil
			return len(p), nil
		case strings.Contains(line, "read host programs"), strings.Contains(line, "resolve "):
			q.held = append(q.held, line...)
		default:
			q.pass = true
			q.w.Write(q.held)
			q.w.Write([]byte(line))
			q.w.Write(q.partial)
			q.held, q.partial = nil, nil
			return len(p), nil
		}
	}
}
