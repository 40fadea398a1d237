package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vmnet/vmnet/internal/lab"
	"github.com/vmnet/vmnet/internal/logcap"
	"github.com/vmnet/vmnet/names"
	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/vmconfig"
)

func upCommand() *command {
	return &command{name: "up", args: "LAB.toml [--detach]", summary: "bring a lab's networks and VMs up and supervise them", run: up}
}

func downCommand() *command {
	return &command{name: "down", args: "LAB.toml|LABNAME", summary: "remove every trace of a lab, even after a crash", run: down}
}

func statusCommand() *command {
	return &command{name: "status", args: "[LAB.toml|LABNAME] [-o table|json|dot|mermaid]", summary: "show labs: networks, VMs, NICs, queues, counters", run: status}
}

func nicCommand() *command {
	return &command{name: "nic", summary: "hot-plug NICs into running guests", subs: []*command{
		{name: "add", args: "LAB VM --network NET [--queues N] [--mac MAC]", summary: "add a NIC to a running guest", run: nicAdd},
		{name: "del", args: "LAB VM NIC", summary: "remove a hot-plugged NIC", run: nicDel},
	}}
}

// hotplugPorts is how many free PCIe root ports `up` reserves on q35
// guests for `vmnet nic add`.
const hotplugPorts = 4

func up(e *env, args []string) error {
	fs := e.flags("vmnet up", "LAB.toml [--detach] [--ready-timeout D]")
	detach := fs.Bool("detach", false, "return once every VM is up and leave a background supervisor")
	ready := fs.Duration("ready-timeout", 3*time.Minute, "how long each guest may take to become ready")
	supervised := fs.Bool("supervised", false, "internal: run as the background supervisor of --detach")
	pos, err := fs.parse(args, 1, 1)
	if err != nil {
		return err
	}
	cfg, err := loadLab(e, pos[0])
	if err != nil {
		return err
	}
	ns, err := lab.CurrentNetNS()
	if err != nil {
		return err
	}
	if err := lab.ClaimStateDir(cfg, ns); err != nil {
		return err
	}
	if st, err := lab.ReadState(cfg.StateDir); err == nil && !*supervised {
		if st.SupervisorAlive() {
			fmt.Fprintf(e.stdout, "lab %s is already up (supervisor pid %d); nothing changed\n", cfg.Name, st.Supervisor)
			return nil
		}
		return fmt.Errorf("lab %s: a previous run did not finish cleanly (supervisor %d is gone); run `vmnet down %s` first",
			cfg.Name, st.Supervisor, cfg.Name)
	}
	if *detach {
		return e.detach(cfg)
	}
	var readyPipe *os.File
	if *supervised {
		readyPipe = os.NewFile(3, "ready")
		if err := e.capLog(logcap.DefaultMax); err != nil {
			return fmt.Errorf("lab %s: %w", cfg.Name, err)
		}
	}
	return e.supervise(cfg, *ready, readyPipe)
}

// supervise brings the lab up and keeps it until SIGINT or SIGTERM, then
// tears it down. readyPipe, when set, learns "ok" or the error.
func (e *env) supervise(cfg *vmconfig.Lab, ready time.Duration, readyPipe *os.File) (err error) {
	lock, err := lockState(cfg)
	if err != nil {
		return err
	}
	defer lock.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	logf := func(f string, a ...any) { fmt.Fprintf(e.stderr, "vmnet: "+f+"\n", a...) }
	l, err := lab.New(cfg, lab.Options{Logf: logf, ImageProgress: e.stderr, HotplugPorts: hotplugPorts})
	if err != nil {
		return err
	}
	defer l.Close()
	if err := l.Up(ctx, ready); err != nil {
		if readyPipe != nil {
			fmt.Fprintf(readyPipe, "error: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		}
		return err
	}
	logf("lab %s is up in %.1fs (Ctrl-C or `vmnet down %s` tears it down)", cfg.Name, time.Since(start).Seconds(), cfg.Name)
	if readyPipe != nil {
		fmt.Fprintln(readyPipe, "ok")
		readyPipe.Close()
	}
	for _, vm := range cfg.VMs {
		if v := l.Running(vm.Name); v != nil {
			go func() {
				select {
				case <-v.Exited():
					logf("vm %s: QEMU exited; it is not restarted (the lab stays up until `vmnet down`)", vm.Name)
				case <-ctx.Done():
				}
			}()
		}
	}
	serr := l.Serve(ctx)
	<-ctx.Done()
	logf("lab %s: tearing down", cfg.Name)
	tctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return errors.Join(serr, l.Teardown(tctx))
}

// capLog makes a supervisor's output a capped log (see package logcap)
// when its stderr is a regular file: the supervisor.log that detach
// hands it as stdout and stderr, opened with O_APPEND so that a crash
// report the Go runtime writes straight to fd 2 still lands at the end.
func (e *env) capLog(limit int64) error {
	f, ok := e.stderr.(*os.File)
	if !ok {
		return nil
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil // a terminal or pipe: someone is watching
	}
	l, err := logcap.New(f, limit)
	if err != nil {
		return fmt.Errorf("supervisor log: %w", err)
	}
	e.stdout, e.stderr = l, l
	return nil
}

// lockState keeps a second supervisor of the same lab out for as long as
// the first one lives.
func lockState(cfg *vmconfig.Lab) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(cfg.StateDir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lab %s: lock: %w", cfg.Name, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("lab %s: another vmnet is bringing it up or supervising it (%w)", cfg.Name, err)
	}
	return f, nil
}

// detach starts a background supervisor (this binary, --supervised) in a
// session of its own and returns once it reports the lab up, or its error.
func (e *env) detach(cfg *vmconfig.Lab) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{}
	for _, a := range os.Args[1:] {
		if a == "--detach" || a == "-detach" {
			a = "--supervised"
		}
		args = append(args, a)
	}
	logPath := filepath.Join(cfg.StateDir, "supervisor.log")
	// Read-write and appending: the supervisor caps it in place (capLog).
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_RDWR|os.O_TRUNC|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("lab %s: supervisor log: %w", cfg.Name, err)
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr, cmd.ExtraFiles = logf, logf, []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// The supervisor starts where vmnet started and enters the lab's
	// namespace itself (--netns is among its arguments): started from
	// inside that namespace it could not fetch the test image.
	if err := netns.DoInitial(cmd.Start); err != nil {
		w.Close()
		r.Close()
		return fmt.Errorf("lab %s: start supervisor: %w", cfg.Name, err)
	}
	w.Close()
	defer r.Close()
	go cmd.Wait() // reaps it only if it dies while we wait
	// The supervisor's answer carries an error that may quote guest
	// console lines: read a bounded amount.
	line, rerr := bufio.NewReader(io.LimitReader(r, maxReadyLine)).ReadString('\n')
	line = strings.TrimSpace(line)
	switch {
	case line == "ok":
		fmt.Fprintf(e.stdout, "lab %s is up; supervisor pid %d, log %s\n", cfg.Name, cmd.Process.Pid, logPath)
		return nil
	case strings.HasPrefix(line, "error: "):
		return fmt.Errorf("%s (log: %s)", strings.TrimPrefix(line, "error: "), logPath)
	}
	if rerr != nil && !errors.Is(rerr, io.EOF) {
		return rerr
	}
	return fmt.Errorf("lab %s: the supervisor exited before the lab was up; its log %s ends:\n%s", cfg.Name, logPath, tail(logPath, 15))
}

// maxReadyLine bounds the supervisor's "ok" or "error: ..." line.
const maxReadyLine = 256 << 10

// tailBytes bounds how much of a log tail reads: the last lines of a
// capped log, not the whole of it.
const tailBytes = 64 << 10

func tail(path string, n int) string {
	var b []byte
	if f, err := os.Open(path); err == nil {
		if st, err := f.Stat(); err == nil {
			off := max(st.Size()-tailBytes, 0)
			b, _ = io.ReadAll(io.NewSectionReader(f, off, tailBytes))
		}
		f.Close()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// errNoLab marks a lab that does not exist in this network namespace
// (nor, with a name, in any other).
var errNoLab = errors.New("no such lab")

// findLab resolves a LAB argument (a lab file when it ends in ".toml" or
// contains '/', a lab name otherwise) to the lab's name, state directory
// and (when readable) config, in the calling thread's network namespace.
// A lab that is not here is an error: it names the namespace the lab is
// in, or lists the labs there are (wrapping errNoLab).
func (e *env) findLab(arg, verb string) (name, dir string, cfg *vmconfig.Lab, err error) {
	ns, err := lab.CurrentNetNS()
	if err != nil {
		return "", "", nil, err
	}
	if isLabFile(arg) {
		if cfg, err = loadLab(e, arg); err != nil {
			return "", "", nil, err
		}
		name, dir = cfg.Name, cfg.StateDir
	} else {
		if err := checkArg(names.Lab, arg); err != nil {
			return "", "", nil, err
		}
		name, dir = arg, filepath.Join(lab.StateRoot(ns), arg)
		if st, err := lab.ReadState(dir); err == nil && st.Config != "" {
			cfg, _ = vmconfig.LoadWith(st.Config, vmconfig.Options{StateRoot: lab.StateRoot(ns)})
		}
	}
	m, merr := lab.ReadMarker(dir)
	switch {
	case merr == nil && m.Lab == name && m.NetNS.ID == ns.ID:
		return name, dir, cfg, nil
	case merr == nil && m.Lab == name:
		es := []lab.Elsewhere{{Dir: dir, Marker: m}}
		es[0].State, _ = lab.ReadState(dir)
		return "", "", nil, lab.NotHere(name, verb, es)
	case merr == nil:
		return "", "", nil, fmt.Errorf("%s holds lab %s, not %s", dir, m.Lab, name)
	}
	if n, err := lab.Tagged(name); err != nil {
		return "", "", nil, err
	} else if n > 0 {
		return name, dir, cfg, nil // crashed before it wrote its state, or its state was lost
	}
	if es := lab.FindElsewhere(name, ns); len(es) > 0 {
		return "", "", nil, lab.NotHere(name, verb, es)
	}
	labs, err := lab.Labs(ns)
	if err != nil {
		return "", "", nil, err
	}
	have := "no labs are up in this network namespace"
	if len(labs) > 0 {
		have = "the labs in this network namespace are: " + strings.Join(labs, ", ")
	}
	return "", "", nil, fmt.Errorf("lab %s: %w (%s)", name, errNoLab, have)
}

func down(e *env, args []string) error {
	fs := e.flags("vmnet down", "LAB.toml|LABNAME [--ignore-missing]")
	ignore := fs.Bool("ignore-missing", false, "exit 0 when the lab does not exist (for cleanup scripts)")
	pos, err := fs.parse(args, 1, 1)
	if err != nil {
		return err
	}
	name, dir, _, err := e.findLab(pos[0], "down")
	if errors.Is(err, errNoLab) && *ignore {
		fmt.Fprintf(e.stdout, "%v; nothing to do\n", err)
		return nil
	}
	if err != nil {
		return err
	}
	ns, err := lab.CurrentNetNS()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := lab.Down(ctx, name, dir, ns, func(f string, a ...any) { fmt.Fprintf(e.stderr, "vmnet: "+f+"\n", a...) }); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "lab %s is down\n", name)
	return nil
}

func status(e *env, args []string) error {
	fs := e.flags("vmnet status", "[LAB.toml|LABNAME] [-o table|json|dot|mermaid]")
	var o output
	o.register(fs, lab.StatusFormats...)
	pos, err := fs.parse(args, 0, 1)
	if err != nil {
		return err
	}
	var dirs []string
	cfgs := map[string]*vmconfig.Lab{}
	if len(pos) == 1 {
		_, dir, cfg, err := e.findLab(pos[0], "status")
		if err != nil {
			return err
		}
		dirs, cfgs[dir] = []string{dir}, cfg
	} else {
		ns, err := lab.CurrentNetNS()
		if err != nil {
			return err
		}
		root := lab.StateRoot(ns)
		ents, _ := os.ReadDir(root)
		for _, ent := range ents {
			dirs = append(dirs, filepath.Join(root, ent.Name()))
		}
	}
	reports := []lab.Report{}
	for _, dir := range dirs {
		st, err := lab.ReadState(dir)
		if err != nil {
			if len(pos) == 1 {
				return fmt.Errorf("lab %s is not up (no state in %s)", pos[0], dir)
			}
			continue
		}
		cfg := cfgs[dir]
		if cfg == nil && st.Config != "" {
			cfg, _ = vmconfig.Load(st.Config)
		}
		var live *lab.Response
		if st.SupervisorAlive() {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			if resp, err := lab.Call(ctx, dir, lab.Request{Op: "vm-status"}); err == nil {
				live = &resp
			}
			cancel()
		}
		reports = append(reports, lab.Describe(st, cfg, live))
	}
	return lab.WriteStatus(e.stdout, o.format, reports)
}

func nicAdd(e *env, args []string) error {
	fs := e.flags("vmnet nic add", "LAB VM --network NET [--queues N] [--mac MAC]")
	network := fs.String("network", "", "network (from the lab file) to attach the new NIC to")
	queues := fs.Int("queues", 0, "tap queues (default: one per vCPU)")
	mac := fs.String("mac", "", "MAC address (default: derived from lab, VM and index)")
	pos, err := fs.parse(args, 2, 2)
	if err != nil {
		return err
	}
	if *network == "" {
		return usagef("vmnet nic add: --network is required")
	}
	if err := checkArg(names.VM, pos[1]); err != nil {
		return err
	}
	if err := checkArg(names.Network, *network); err != nil {
		return err
	}
	_, dir, _, err := e.findLab(pos[0], "nic add")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, err := lab.Call(ctx, dir, lab.Request{Op: "nic-add", VM: pos[1], Network: *network, Queues: *queues, MAC: *mac})
	if err != nil {
		return err
	}
	n := resp.NIC
	fmt.Fprintf(e.stdout, "vm %s: added %s (tap %s, mac %s, %d queue(s)) on network %s\n", pos[1], n.ID, n.Tap, n.MAC, n.Queues, n.Network)
	return nil
}

func nicDel(e *env, args []string) error {
	fs := e.flags("vmnet nic del", "LAB VM NIC")
	pos, err := fs.parse(args, 3, 3)
	if err != nil {
		return err
	}
	if err := checkArg(names.VM, pos[1]); err != nil {
		return err
	}
	if err := checkArg(names.NIC, pos[2]); err != nil {
		return err
	}
	_, dir, _, err := e.findLab(pos[0], "nic del")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := lab.Call(ctx, dir, lab.Request{Op: "nic-del", VM: pos[1], NIC: pos[2]}); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "vm %s: removed %s\n", pos[1], pos[2])
	return nil
}

func shCommand() *command {
	return &command{name: "sh", args: "LAB VM [--timeout D] -- COMMAND...", summary: "run a command in a running lab guest", run: labShell}
}

func labShell(e *env, args []string) error {
	fs := e.flags("vmnet sh", "LAB VM [--timeout D] -- COMMAND...")
	timeout := fs.Duration("timeout", lab.ShellTimeout, "give up (exit 124) when the command has not finished after this long")
	pos, err := fs.parse(args, 3, -1)
	if err != nil {
		return err
	}
	if err := checkArg(names.VM, pos[1]); err != nil {
		return err
	}
	_, dir, _, err := e.findLab(pos[0], "sh")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	res, err := lab.Shell(ctx, dir, pos[1], shellJoin(pos[2:]), e.stdout)
	if res.Cut > 0 {
		fmt.Fprintf(e.stderr, "vmnet: output cut after %d MiB: %d more bytes were not shown\n", lab.MaxShellOutput>>20, res.Cut)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		fmt.Fprintf(e.stderr, "vmnet: timeout: %v\n", err)
		return exitStatus(exitTimeout)
	}
	if err != nil {
		return err
	}
	if res.Status != 0 {
		return exitStatus(res.Status)
	}
	return nil
}
