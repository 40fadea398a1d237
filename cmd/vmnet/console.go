package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/lab"
	"github.com/vmnet/vmnet/names"
)

func logsCommand(e *env) *cobra.Command {
	var lines int
	var follow bool
	c := root(&cobra.Command{
		Use:   "logs LAB VM [-f] [--lines N]",
		Short: "print a lab guest's serial console log",
		Long: "Prints the last lines of the serial console log of a guest of a lab that is up here (the log\n" +
			"is capped: its oldest part is dropped past 4 MiB). With -f it keeps printing what the guest\n" +
			"writes until interrupted (Ctrl-C) or until the guest stops.",
		Example: `  vmnet logs demo r1
  vmnet logs demo r1 --lines 500
  vmnet logs demo r1 -f --lines 0`,
		Args:              nargs(2, 2),
		RunE:              func(_ *cobra.Command, args []string) error { return labLogs(e, args, lines, follow) },
		ValidArgsFunction: e.completeLabs,
	})
	c.Flags().IntVarP(&lines, "lines", "n", 100, "print the last `N` lines first (0: none)")
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until interrupted or the guest stops")
	return c
}

func labLogs(e *env, pos []string, lines int, follow bool) error {
	if lines < 0 {
		return usagef("vmnet logs: --lines %d: want 0 or more", lines)
	}
	if err := checkArg(names.VM, pos[1]); err != nil {
		return err
	}
	_, dir, _, err := e.findLab(pos[0], "logs")
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return lab.Logs(ctx, dir, pos[1], lab.LogsOptions{Lines: lines, Follow: follow}, e.stdout)
}

func consoleCommand(e *env) *cobra.Command {
	return root(&cobra.Command{
		Use:   "console LAB VM",
		Short: "attach the terminal to a lab guest's serial console",
		Long: "Attaches the terminal to the serial console (ttyS0) of a guest of a lab that is up here, in\n" +
			"raw mode: every key, Ctrl-C included, goes to the guest. Ctrl-] leaves. One session per\n" +
			"guest: while another holds the console, vmnet says so and exits 1. The console log\n" +
			"(vmnet logs) keeps recording meanwhile.",
		Example: `  vmnet console demo r1
  printf 'uname -a\r' | vmnet console demo r1`,
		Args:              nargs(2, 2),
		RunE:              func(_ *cobra.Command, args []string) error { return labConsole(e, args) },
		ValidArgsFunction: e.completeLabs,
	})
}

func labConsole(e *env, pos []string) error {
	if err := checkArg(names.VM, pos[1]); err != nil {
		return err
	}
	_, dir, _, err := e.findLab(pos[0], "console")
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	var restoreTerm func()
	nl := "\n"
	attached := func() {
		if restore, err := rawTerminal(int(os.Stdin.Fd())); err == nil {
			restoreTerm = restore
			nl = "\r\n" // raw mode: no output processing
		}
		if !e.quiet {
			fmt.Fprintf(e.stderr, "vmnet: console of vm %s; leave with Ctrl-]%s", pos[1], nl)
		}
	}
	err = lab.Console(ctx, dir, pos[1], os.Stdin, e.stdout, attached)
	if restoreTerm != nil {
		restoreTerm()
	}
	if !e.quiet && err == nil {
		fmt.Fprintf(e.stderr, "%svmnet: left the console of vm %s%s", nl, pos[1], nl)
	}
	return err
}

// rawTerminal puts the terminal fd in raw mode (as cfmakeraw does) and
// returns what puts it back; a descriptor that is no terminal is an
// error and left alone, so that piped input works as it is.
func rawTerminal(fd int) (restore func(), err error) {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	old := *t
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		return nil, err
	}
	return func() { unix.IoctlSetTermios(fd, unix.TCSETS, &old) }, nil
}
