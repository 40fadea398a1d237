package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmnet/vmnet/images"
	"github.com/vmnet/vmnet/internal/lab"
	"github.com/vmnet/vmnet/internal/snapshot"
	"github.com/vmnet/vmnet/names"
	"github.com/vmnet/vmnet/vmconfig"
)

// exitTimeout is what `timeout(1)` returns, so CI scripts read it alike.
const exitTimeout = 124

func validateCommand(e *env) *cobra.Command {
	var o output
	c := &cobra.Command{
		Use:   "validate LAB.toml",
		Short: "check a lab file and print every problem",
		Long: "Checks a lab file without touching the host and prints every problem as FILE:LINE:COLUMN:\n" +
			"MESSAGE, warnings included; -o json prints them as a list of {file, line, column, severity,\n" +
			"message} ([] for a clean file), for CI annotations. It exits 1 when there are errors.",
		Example: `  vmnet validate examples/demo.toml
  vmnet validate examples/demo.toml -o json`,
		Args: nargs(1, 1),
		RunE: func(_ *cobra.Command, args []string) error { return validate(e, args[0], o) },
	}
	o.register(c, "text", "json")
	return c
}

func validate(e *env, file string, o output) error {
	if o.format == "json" {
		ns, err := lab.CurrentNetNS()
		if err != nil {
			return err
		}
		ps, err := vmconfig.ProblemsOf(vmconfig.LoadWith(file, vmconfig.Options{StateRoot: lab.StateRoot(ns)}))
		if err != nil {
			return err
		}
		if err := writeJSON(e.stdout, ps); err != nil || !ps.HasErrors() {
			return err
		}
		return exitStatus(exitError)
	}
	cfg, err := loadLab(e, file)
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

func runCommand(e *env) *cobra.Command {
	var timeout, boot time.Duration
	var cold bool
	c := root(&cobra.Command{
		Use:   "run LAB.toml VM [-- COMMAND...]",
		Short: "boot one VM of a lab, run a command in it, exit with its status",
		Long: "Boots one VM of a lab in a network namespace of its own, runs COMMAND in the guest with\n" +
			"sh -c and exits with the command's status: one word is taken as a shell command line\n" +
			"('ping -c1 h && x'), several words are quoted and run as they are. Without COMMAND the\n" +
			"VM's own command runs, or the guest runs until it powers off or Ctrl-C.\n" +
			"Exit status: the command's, 124 on timeout, 130 on interrupt.",
		Example: `  vmnet run examples/ci.toml ci -- 'ping -c 1 10.80.0.1'
  vmnet run examples/ci.toml ci --timeout 2m -- sh -c 'ip -br link; exit 3'
  vmnet run --quiet examples/ci.toml ci -- true
  vmnet run --cold examples/ci.toml ci -- true`,
		Args: nargs(2, -1),
		RunE: func(_ *cobra.Command, args []string) error { return runVM(e, args, boot, timeout, cold) },
	})
	c.Flags().BoolVar(&cold, "cold", false, "boot the guest from scratch instead of restoring a snapshot of its shape (as boot = \"cold\" in the lab file)")
	c.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "give up (exit 124) when the guest has not finished after this long")
	c.Flags().DurationVar(&boot, "boot-timeout", 3*time.Minute, "give up when the guest is not ready after this long")
	return c
}

func runVM(e *env, pos []string, boot, timeout time.Duration, cold bool) error {
	if timeout <= 0 || boot <= 0 {
		return usagef("vmnet run: --timeout and --boot-timeout want positive durations such as 2m")
	}
	if err := checkArg(names.VM, pos[1]); err != nil {
		return err
	}
	cfg, err := loadLab(e, pos[0])
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts := lab.RunOptions{BootTimeout: boot, Timeout: timeout, Notef: e.logf, Stdout: e.stdout, Stderr: e.stderr,
		Options: lab.Options{Logf: e.logf, Console: e.stdout, ImageProgress: e.progressWriter(), Cold: cold}}
	if e.quiet {
		opts.Console = nil
	}
	st, err := lab.Run(ctx, cfg, pos[1], shellJoin(pos[2:]), opts)
	switch {
	case errors.Is(err, lab.ErrInterrupted):
		if err != lab.ErrInterrupted {
			fmt.Fprintf(e.stderr, "vmnet: %v\n", err)
		}
		return exitStatus(130)
	case errors.Is(err, lab.ErrTimeout):
		fmt.Fprintf(e.stderr, "vmnet: %v\n", err)
		return exitStatus(exitTimeout)
	case err != nil:
		return err
	case st != 0:
		return exitStatus(st)
	}
	return nil
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

func imageCommand(e *env) *cobra.Command {
	var cache, mods string
	build := &cobra.Command{
		Use:   "build [NAME]",
		Short: "build (or reuse) a guest image: the test image, or a named one (debian-12)",
		Long: "Without NAME, builds the small test guest image (kernel and busybox initramfs).\n" +
			"With NAME, builds the named disk image from Debian packages. Prints key=value lines:\n" +
			"disk=, kernel=, initrd=, cmdline= (what to boot it with) and dir=.",
		Example: `  vmnet image build
  vmnet image build debian-12
  vmnet image build --modules bridge,8021q --cache /var/cache/vmnet`,
		Args: nargs(0, 1),
		ValidArgsFunction: func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			return images.Names(), cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(_ *cobra.Command, args []string) error {
			if len(args) == 1 {
				return imageBuildNamed(e, cache, mods, args[0])
			}
			return imageBuild(e, cache, mods)
		},
	}
	build.Flags().StringVar(&cache, "cache", "", "cache `DIR`ectory (default $VMNET_CACHE, else ~/.cache/vmnet)")
	build.Flags().StringVar(&mods, "modules", "", "extra kernel modules to put into the test image, e.g. bridge,8021q")
	build.MarkFlagDirname("cache")
	prune := &cobra.Command{
		Use:   "prune",
		Short: "remove the snapshots of warm boots (they are saved again on the next boot of each shape)",
		Long: "Removes every snapshot of the test image from the cache (next to the images, in\n" +
			"$VMNET_CACHE/snapshots). Guests running from a snapshot keep running.",
		Example: `  vmnet image prune`,
		Args:    nargs(0, 0),
		RunE: func(*cobra.Command, []string) error {
			removed, err := snapshot.Prune()
			for _, d := range removed {
				fmt.Fprintf(e.stdout, "removed %s\n", d)
			}
			return err
		},
	}
	var listCache string
	list := &cobra.Command{
		Use:     "list",
		Short:   "list the cached guest images and their sizes",
		Example: `  vmnet image list`,
		Args:    nargs(0, 0),
		RunE: func(*cobra.Command, []string) error {
			l, err := images.List(listCache)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%-32s %-10s %10s  %s\n", "IMAGE", "NAME", "SIZE", "BUILT")
			for _, c := range l {
				fmt.Fprintf(e.stdout, "%-32s %-10s %10s  %s\n", filepath.Base(c.Dir), c.Name, humanBytes(c.Bytes), c.Built.Format("2006-01-02 15:04"))
			}
			return nil
		},
	}
	list.Flags().StringVar(&listCache, "cache", "", "cache `DIR`ectory (default $VMNET_CACHE, else ~/.cache/vmnet)")
	return group("image", "build, list and prune guest images and the snapshots of warm boots", `  vmnet image build
  vmnet image build debian-12
  vmnet image list
  vmnet image prune`, build, list, prune)
}

// humanBytes prints a size in binary units.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func imageBuild(e *env, cache, mods string) error {
	opts := images.Options{CacheDir: cache, Progress: e.progressWriter()}
	if mods != "" {
		opts.Modules = strings.Split(mods, ",")
	}
	img, err := images.Ensure(context.Background(), opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "kernel  %s\ninitrd  %s\nversion %s\n", img.Kernel, img.Initrd, img.KernelVersion)
	return nil
}

func imageBuildNamed(e *env, cache, mods, name string) error {
	if !slices.Contains(images.Names(), name) {
		return usagef("vmnet image build: unknown image %q: known images are %s (without a name: the test image)", name, strings.Join(images.Names(), ", "))
	}
	if mods != "" {
		return usagef("vmnet image build: --modules applies to the test image only, not to %s", name)
	}
	d, err := images.EnsureNamed(context.Background(), name, images.Options{CacheDir: cache, Progress: e.progressWriter()})
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "name=%s\ndisk=%s\nformat=%s\nkernel=%s\ninitrd=%s\ncmdline=%s\ndir=%s\n",
		d.Name, d.Disk, d.Format, d.Kernel, d.Initrd, d.Cmdline, d.Dir)
	return nil
}

func lsCommand(e *env) *cobra.Command {
	var o output
	c := root(&cobra.Command{
		Use:   "ls",
		Short: "list the labs of every network namespace: name, namespace, state, VMs",
		Long: "Lists every lab vmnet knows of, in every network namespace: up (its supervisor runs),\n" +
			"stale (the supervisor is gone, or only tagged interfaces are left) or stopped.",
		Example: `  vmnet ls
  vmnet ls -o json`,
		Args: nargs(0, 0),
		RunE: func(*cobra.Command, []string) error {
			labs, err := lab.List()
			if err != nil {
				return err
			}
			return lab.WriteList(e.stdout, o.format, labs)
		},
	})
	o.register(c, lab.ListFormats...)
	return c
}
