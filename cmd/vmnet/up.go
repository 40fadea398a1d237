package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmnet/vmnet/internal/lab"
	"github.com/vmnet/vmnet/internal/logcap"
	"github.com/vmnet/vmnet/names"
	"github.com/vmnet/vmnet/tap"
	"github.com/vmnet/vmnet/vmconfig"
)

func upCommand(e *env) *cobra.Command {
	var f upFlags
	c := root(&cobra.Command{
		Use:   "up LAB.toml",
		Short: "bring a lab's networks and VMs up and supervise them",
		Long: "Creates the lab's bridges and taps, boots its VMs and waits until each guest is ready,\n" +
			"showing each VM's state as it changes. Without --detach vmnet stays in the foreground and\n" +
			"tears the lab down on Ctrl-C; with --detach a background supervisor keeps it (its log is\n" +
			"supervisor.log in the lab's state directory) until `vmnet down`.\n" +
			"A lab with several [[host]] tables is brought up one host at a time: run `vmnet up LAB.toml\n" +
			"--host NAME` on each host; it creates that host's VMs, the networks they use and, for a\n" +
			"network with VMs on other hosts too, a VXLAN device to those hosts.",
		Example: `  vmnet up examples/demo.toml
  vmnet up examples/demo.toml --detach
  vmnet --netns demo up examples/demo.toml --detach --ready-timeout 5m
  vmnet up big.toml --detach --max-boots 2    # boot two guests at a time
  vmnet up examples/two-hosts.toml --host h1 --detach   # on host h1; --host h2 on h2`,
		Args: nargs(1, 1),
		RunE: func(_ *cobra.Command, args []string) error { return up(e, args[0], f) },
	})
	fs := c.Flags()
	fs.BoolVarP(&f.detach, "detach", "d", false, "return once every VM is up and leave a background supervisor")
	fs.DurationVar(&f.ready, "ready-timeout", 3*time.Minute, "how long each guest may take to become ready")
	fs.BoolVar(&f.cold, "cold", false, "boot every guest from scratch instead of restoring a snapshot of its shape (as boot = \"cold\" in the lab file)")
	fs.IntVar(&f.maxBoots, "max-boots", lab.DefaultMaxBoots(), "how many guests boot at once; the others wait for a slot (default: two per core)")
	fs.StringVar(&f.host, "host", "", "the [[host]] of the lab file this machine is: bring up its part only")
	fs.BoolVar(&f.supervised, "supervised", false, "internal: run as the background supervisor of --detach")
	hide(fs, "supervised")
	return c
}

type upFlags struct {
	host               string
	detach, supervised bool
	ready              time.Duration
	maxBoots           int
	cold               bool
}

func downCommand(e *env) *cobra.Command {
	var ignore bool
	var host string
	c := root(&cobra.Command{
		Use:   "down LAB.toml|LABNAME",
		Short: "remove every trace of a lab, even after a crash",
		Long: "Removes the lab's guests, taps, bridges and VXLAN devices in this network namespace: only\n" +
			"what carries the lab's tag. On a host of a multi-host lab that is this host's part; --host\n" +
			"NAME makes sure it is the part of the host you mean.",
		Example: `  vmnet down demo
  vmnet down examples/demo.toml
  vmnet down --ignore-missing demo   # in cleanup scripts
  vmnet down two-hosts --host h1     # on host h1 of a multi-host lab`,
		Args:              nargs(1, 1),
		RunE:              func(_ *cobra.Command, args []string) error { return down(e, args[0], host, ignore) },
		ValidArgsFunction: e.completeLabs,
	})
	c.Flags().BoolVar(&ignore, "ignore-missing", false, "exit 0 when the lab does not exist (for cleanup scripts)")
	c.Flags().StringVar(&host, "host", "", "the [[host]] whose part of the lab is here; refuse if another host's part is")
	return c
}

func statusCommand(e *env) *cobra.Command {
	var o output
	c := root(&cobra.Command{
		Use:   "status [LAB.toml|LABNAME]",
		Short: "show labs: networks, VMs, NICs, queues, counters",
		Example: `  vmnet status
  vmnet status demo -o json
  vmnet status demo -o dot > demo.dot   # Graphviz: dot -Tsvg demo.dot
  vmnet status -o mermaid               # a flowchart GitHub renders`,
		Args:              nargs(0, 1),
		RunE:              func(_ *cobra.Command, args []string) error { return status(e, args, o) },
		ValidArgsFunction: e.completeLabs,
	})
	o.register(c, lab.StatusFormats...)
	return c
}

func nicCommand(e *env) *cobra.Command {
	return group("nic", "hot-plug NICs into running guests and change their impairments", `  vmnet nic add demo r2 --network dmz
  vmnet nic del demo r2 nic1
  vmnet nic set demo r2 nic0 --delay 20ms --loss 1%`, nicAddCommand(e), nicDelCommand(e), nicSetCommand(e))
}

func nicSetCommand(e *env) *cobra.Command {
	var f linkFlags
	c := root(&cobra.Command{
		Use:   "set LAB VM NIC [--delay D] [--loss P%] [--rate R] ...",
		Short: "change the impairments of a running guest's NIC",
		Long: "Changes the impairment keys given on a running guest's bridge NIC (nic0, nic1, ... as `vmnet status`\n" +
			"shows them, or the tap's name); the keys not given stay. They act as tc netem (and tbf for --rate and\n" +
			"--burst) on the NIC's tap, on frames going to the guest; impair the other end's NIC for the way back.\n" +
			"Every key at zero (--delay 0 --loss 0% ...) puts back the plain tap. A kernel without netem or tbf\n" +
			"refuses, naming the option it lacks. A NIC at the end of a [[link]] is changed with `vmnet link set`.",
		Example: `  vmnet nic set demo r2 nic0 --delay 20ms --jitter 2ms
  vmnet nic set demo r2 nic1 --loss 1% --rate 100mbit --burst 32kb
  vmnet nic set demo r2 demo-r2-0 --delay 0 --loss 0%`,
		Args:              nargs(3, 3),
		RunE:              func(_ *cobra.Command, args []string) error { return nicSet(e, args, &f) },
		ValidArgsFunction: e.completeLabs,
	})
	f.registerImpairmentsFor(c.Flags(), []string{""}, "to the guest")
	return c
}

func nicSet(e *env, pos []string, f *linkFlags) error {
	keys, err := f.changedKeys("nic set")
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		return usagef("vmnet nic set: nothing to change: give impairments such as --delay 20ms or --loss 1%%")
	}
	if err := checkArg(names.VM, pos[1]); err != nil {
		return err
	}
	if err := checkArg(names.NIC, pos[2]); err != nil {
		return err
	}
	_, dir, _, err := e.findLab(pos[0], "nic set")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := lab.Call(ctx, dir, lab.Request{Op: "nic-set", VM: pos[1], NIC: pos[2], Impair: keys})
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "vm %s %s: to the guest: %s\n", pos[1], pos[2], resp.NICImpairment)
	return nil
}

// hotplugPorts is how many free PCIe root ports `up` reserves on q35
// guests for `vmnet nic add`.
const hotplugPorts = 4

func up(e *env, file string, f upFlags) error {
	if f.ready <= 0 {
		return usagef("vmnet up: --ready-timeout %v: want a positive duration such as 3m", f.ready)
	}
	if f.maxBoots < 1 {
		return usagef("vmnet up: --max-boots %d: want at least 1", f.maxBoots)
	}
	if f.detach && f.supervised {
		return usagef("vmnet up: --detach and --supervised exclude each other")
	}
	whole, err := loadLab(e, file)
	if err != nil {
		return err
	}
	cfg, err := whole.Part(f.host)
	if err != nil {
		return usagef("vmnet up: %v", err)
	}
	if !f.supervised {
		if err := lab.CheckUnderlay(cfg); err != nil {
			return err
		}
		if err := lab.CheckVNIs(cfg); err != nil {
			return err
		}
		pid, err := lab.PrepareUp(cfg)
		if err != nil {
			return err
		}
		if pid > 0 {
			fmt.Fprintf(e.stdout, "lab %s is already up (supervisor pid %d); nothing changed\n", cfg.Name, pid)
			return nil
		}
	}
	if f.detach {
		return e.detach(cfg, file, f)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts := lab.SuperviseOptions{ReadyTimeout: f.ready,
		Options: lab.Options{Logf: e.logf, ImageProgress: e.progressWriter(), HotplugPorts: hotplugPorts, MaxBoots: f.maxBoots, Cold: f.cold,
			Progress: func(p lab.Progress) { e.logf("%s", p) }}}
	if e.verbose {
		opts.Console = e.stderr // the guests' boot consoles, interleaved
	}
	if f.supervised {
		// The background supervisor of --detach: its log is capped and
		// timestamped, and its ready pipe carries progress and the answer.
		if err := e.capLog(logcap.DefaultMax); err != nil {
			return fmt.Errorf("lab %s: %w", cfg.Name, err)
		}
		log := e.logger()
		pipe := lab.NewReadyPipe(os.NewFile(3, "ready"))
		opts.Logf = func(f string, a ...any) { log.Info(fmt.Sprintf(f, a...)) }
		opts.ImageProgress = &lineLog{log: log.With("step", "image")}
		opts.Console = nil // each guest's console has its log in the state directory
		opts.Progress = func(p lab.Progress) {
			attrs := []any{"vm", p.VM, "state", p.State, "elapsed", p.Elapsed.Round(time.Millisecond)}
			if p.Err != nil {
				attrs = append(attrs, "error", p.Err)
			}
			log.Info("vm state", attrs...)
			pipe.Progress(p)
		}
		opts.Ready = pipe.Ready
	}
	return lab.Supervise(ctx, cfg, opts)
}

// progressWriter is where image build steps go: stderr unless --quiet.
func (e *env) progressWriter() io.Writer {
	if e.quiet {
		return io.Discard
	}
	return e.stderr
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

// logger is the supervisor's structured log on stderr (the capped
// supervisor.log when detached): timestamped lines, debug with --verbose.
func (e *env) logger() *slog.Logger {
	level := slog.LevelInfo
	if e.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))
}

// lineLog logs what is written to it through slog, a record a line.
type lineLog struct {
	log     *slog.Logger
	partial []byte
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		if line := strings.TrimSpace(string(l.partial[:i])); line != "" {
			l.log.Info(line)
		}
		l.partial = l.partial[i+1:]
	}
	return len(p), nil
}

// detach starts a background supervisor (this binary, --supervised) in a
// session of its own, shows its progress and returns once it reports the
// lab up, or its error.
func (e *env) detach(cfg *vmconfig.Lab, file string, f upFlags) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	// The supervisor's command line, spelled out rather than edited from
	// ours: it enters --netns itself (lab.Detach starts it in the
	// namespace vmnet started in).
	args := []string{}
	if e.netns != "" {
		args = append(args, "--netns", e.netns)
	}
	if e.verbose {
		args = append(args, "--verbose")
	}
	args = append(args, "up", "--supervised", "--ready-timeout", f.ready.String(), "--max-boots", strconv.Itoa(f.maxBoots))
	if f.cold {
		args = append(args, "--cold")
	}
	if f.host != "" {
		args = append(args, "--host", f.host)
	}
	args = append(args, "--", file)
	pid, err := lab.Detach(cfg, exec.Command(self, args...), func(p lab.Progress) { e.logf("%s", p) })
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "lab %s is up; supervisor pid %d, log %s\n", cfg.Name, pid, lab.SupervisorLog(cfg))
	return nil
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

func down(e *env, arg, host string, ignoreMissing bool) error {
	name, dir, cfg, err := e.findLab(arg, "down")
	if errors.Is(err, errNoLab) && ignoreMissing {
		fmt.Fprintf(e.stdout, "%v; nothing to do\n", err)
		return nil
	}
	if err != nil {
		return err
	}
	if host != "" {
		if cfg != nil {
			if _, err := cfg.Part(host); err != nil {
				return usagef("vmnet down: %v", err)
			}
		}
		// The tags name the lab, not the host: what is here goes. So
		// make sure this is the part the user means.
		if st, err := lab.ReadState(dir); err == nil && st.Host != "" && st.Host != host {
			return fmt.Errorf("lab %s: this network namespace holds host %s's part, not host %s's: run `vmnet down %s --host %s` here, or run it on host %s",
				name, st.Host, host, name, st.Host, host)
		}
	}
	ns, err := lab.CurrentNetNS()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := lab.Down(ctx, name, dir, ns, e.logf); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "lab %s is down\n", name)
	return nil
}

func status(e *env, pos []string, o output) error {
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

func nicAddCommand(e *env) *cobra.Command {
	var network, mac string
	var queues int
	c := root(&cobra.Command{
		Use:   "add LAB VM --network NET",
		Short: "add a NIC to a running guest",
		Example: `  vmnet nic add demo r2 --network dmz
  vmnet nic add demo r2 --network lan --queues 2 --mac 52:54:00:12:34:56`,
		Args:              nargs(2, 2),
		RunE:              func(_ *cobra.Command, args []string) error { return nicAdd(e, args, &network, &queues, &mac) },
		ValidArgsFunction: e.completeLabs,
	})
	c.Flags().StringVar(&network, "network", "", "network (from the lab file) to attach the new NIC to")
	c.Flags().IntVar(&queues, "queues", 0, "tap queues, 1..256 (default: one per vCPU)")
	c.Flags().StringVar(&mac, "mac", "", "MAC address (default: derived from lab, VM and index)")
	return c
}

func nicAdd(e *env, pos []string, network *string, queues *int, mac *string) error {
	if c := *queues; c < 0 || c > tap.MaxQueues {
		return usagef("vmnet nic add: --queues %d: want 1..%d (or leave it out for one per vCPU)", c, tap.MaxQueues)
	}
	if *mac != "" {
		if _, err := net.ParseMAC(*mac); err != nil {
			return usagef("vmnet nic add: --mac %q: want a MAC address such as 52:54:00:12:34:56", *mac)
		}
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

func nicDelCommand(e *env) *cobra.Command {
	return root(&cobra.Command{
		Use:               "del LAB VM NIC",
		Short:             "remove a hot-plugged NIC",
		Example:           `  vmnet nic del demo r2 nic1`,
		Args:              nargs(3, 3),
		RunE:              func(_ *cobra.Command, args []string) error { return nicDel(e, args) },
		ValidArgsFunction: e.completeLabs,
	})
}

func nicDel(e *env, pos []string) error {
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

func shCommand(e *env) *cobra.Command {
	var timeout time.Duration
	c := root(&cobra.Command{
		Use:   "sh LAB VM -- COMMAND...",
		Short: "run a command in a running lab guest",
		Long: "Runs COMMAND in a guest of a lab that is up, with sh -c: one word is taken as a shell\n" +
			"command line, several words are quoted and run as they are. vmnet exits with the\n" +
			"command's status, 124 on timeout.",
		Example: `  vmnet sh demo r1 -- 'ping -c 2 10.90.0.12'
  vmnet sh demo r1 --timeout 30s -- ip -br addr`,
		Args:              nargs(3, -1),
		RunE:              func(_ *cobra.Command, args []string) error { return labShell(e, args, timeout) },
		ValidArgsFunction: e.completeLabs,
	})
	c.Flags().DurationVar(&timeout, "timeout", lab.ShellTimeout, "give up (exit 124) when the command has not finished after this long")
	return c
}

func labShell(e *env, pos []string, timeout time.Duration) error {
	if timeout <= 0 {
		return usagef("vmnet sh: --timeout %v: want a positive duration such as 30s", timeout)
	}
	if err := checkArg(names.VM, pos[1]); err != nil {
		return err
	}
	_, dir, _, err := e.findLab(pos[0], "sh")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
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
