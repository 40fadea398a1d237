package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmnet/vmnet/internal/gexec"
)

func execCommand() *command {
	return &command{name: "exec", args: "[flags] PROGRAM [ARGS...]",
		summary: "run a static program in a throwaway guest (go test -exec)", run: execProgram}
}

const execSynopsis = "[flags] PROGRAM [ARGS...]\n\n" +
	"Boots the vmnet test guest, runs the statically linked PROGRAM in it as root with ARGS and exits\n" +
	"with its status. Made for go test:\n\n" +
	"  CGO_ENABLED=0 go test -exec 'vmnet exec' -run VLAN -v ./bridge/\n\n" +
	"The program starts in a directory of the same path as the current one, with ./testdata carried\n" +
	"along (at most 64 MiB); its stdout and stderr (one serial console) go to stdout without the boot\n" +
	"messages. Flags stand before PROGRAM; everything from PROGRAM on belongs to it.\n" +
	"Exit status: the program's, 124 when the guest did not come up or finish in time, 125 when\n" +
	"vmnet could not run it at all (for example a dynamically linked binary), 130 on interrupt.\n"

// exitCannotRun tells a caller (go test, git bisect run) that the program
// never ran, as opposed to failing.
const exitCannotRun = 125

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, " ") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// memFlag is a size in MiB: 512, 512M, 1G.
type memFlag int

func (m *memFlag) String() string { return strconv.Itoa(int(*m)) }
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

func execProgram(e *env, args []string) error {
	fs := e.flags("vmnet exec", execSynopsis)
	mods := fs.String("kernel-modules", strings.Join(gexec.DefaultModules, ","),
		"kernel modules to put into the image and load at boot, with their dependencies (comma-separated; \"\" for none)")
	progs := fs.String("programs", "", "host programs to carry into the guest's PATH with their libraries (comma-separated; default: those of "+
		strings.Join(gexec.DefaultPrograms, ",")+" the host has; \"none\" for none)")
	cpus := fs.Int("cpus", 1, "guest vCPUs (under TCG on a busy host one boots fastest; more for tests that need parallelism)")
	mem := memFlag(512)
	fs.Var(&mem, "memory", "guest memory in MiB (512, 512M, 1G)")
	timeout := fs.Duration("timeout", 0, "give up (exit 124) when the program has not finished after this long (default: the program's -test.timeout plus 1m, else 10m)")
	boot := fs.Duration("boot-timeout", 2*time.Minute, "give up (exit 124) when the guest is not ready after this long")
	accel := fs.String("accel", "auto", "accelerator: auto (KVM where it really works, else TCG), kvm or tcg")
	machine := fs.String("machine", "microvm", "QEMU machine: microvm, pc or q35")
	cache := fs.String("cache", "", "image cache directory (default $VMNET_CACHE, else ~/.cache/vmnet)")
	verbose := fs.Bool("verbose", false, "copy the boot console, image steps and timings to stderr")
	klog := fs.Bool("kernel-log", false, "leave kernel warnings on the console while the program runs (they then mix with its output)")
	var envs listFlag
	fs.Var(&envs, "env", "NAME=VALUE to set in the guest (repeatable); CI, GODEBUG, GOTRACEBACK, GOMAXPROCS, ... pass through by themselves")

	// Unlike other verbs, flags end at PROGRAM: its own flags (-test.v)
	// must not be taken for vmnet's.
	if err := fs.FlagSet.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(fs.help, "Usage: %s %s\n", fs.Name(), fs.synopsis)
			fs.SetOutput(fs.help)
			fs.PrintDefaults()
			return errHelp
		}
		return usagef("%s: %v (see `%s --help`)", fs.Name(), err, fs.Name())
	}
	pos := fs.Args()
	if len(pos) == 0 {
		return usagef("vmnet exec: missing PROGRAM (usage: vmnet exec [flags] PROGRAM [ARGS...])")
	}
	o := gexec.Options{
		Program: pos[0], Args: pos[1:], Env: envs,
		CPUs: *cpus, MemoryMiB: int(mem), Accel: *accel, Machine: *machine,
		BootTimeout: *boot, Timeout: *timeout, CacheDir: *cache,
		Stdout: e.stdout, KernelLog: *klog,
	}
	o.Modules = []string{}
	for _, m := range strings.Split(*mods, ",") {
		if m = strings.TrimSpace(m); m != "" {
			o.Modules = append(o.Modules, m)
		}
	}
	switch *progs {
	case "":
	case "none":
		o.Programs = []string{}
	default:
		o.Programs = strings.Split(*progs, ",")
	}
	if o.Timeout == 0 {
		o.Timeout = gexec.TimeoutFor(o.Args)
	}
	if *cpus < 1 {
		return usagef("vmnet exec: --cpus %d: want at least 1", *cpus)
	}
	if *verbose {
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
	if *verbose && res.Total > 0 {
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
