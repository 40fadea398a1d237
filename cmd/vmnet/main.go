// Command vmnet gives QEMU guests fast, correct networking on Linux: it
// creates multi-queue vnet_hdr taps and bridges, boots guests on them and
// tears everything down again.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/vmnet/vmnet/netns"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// Exit statuses: 0 success, 1 a user or runtime error naming the object,
// 2 a usage error. Verbs that run guest commands return the guest's status.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// usageError marks mistakes in the command line itself (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// exitStatus carries a status that is not an error, such as a guest
// command's own exit status.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// command is one verb or a group of verbs.
type command struct {
	name    string
	args    string // synopsis after the name, e.g. "NAME [flags]"
	summary string
	run     func(env *env, args []string) error
	subs    []*command
}

// env is what a verb writes to.
type env struct {
	stdout, stderr io.Writer
}

func root() *command {
	return &command{
		name:    "vmnet",
		summary: "fast, correct networking for QEMU guests",
		subs: []*command{
			tapCommand(),
			bridgeCommand(),
			featuresCommand(),
			validateCommand(),
			upCommand(),
			downCommand(),
			statusCommand(),
			lsCommand(),
			nicCommand(),
			shCommand(),
			linkCommand(),
			runCommand(),
			imageCommand(),
			execCommand(),
			versionCommand(),
		},
	}
}

func run(args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr}
	ns, args, err := globalFlags(args)
	if err != nil {
		fmt.Fprintln(e.stderr, message(err))
		return exitUsage
	}
	cmd, path, rest := resolve(root(), args)
	switch {
	case cmd.run == nil && len(rest) > 0 && !isHelp(rest[0]):
		err = usagef("%s: unknown verb %q (see `%s --help`)", path, rest[0], path)
	case cmd.run == nil:
		printHelp(e.stdout, cmd, path)
		if len(rest) == 0 {
			return exitUsage
		}
		return exitOK
	case ns != "":
		err = netns.DoNamed(ns, func() error { return cmd.run(e, rest) })
	default:
		err = cmd.run(e, rest)
	}
	var st exitStatus
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errHelp):
		return exitOK
	case errors.As(err, &st):
		return int(st)
	case errors.As(err, &ue):
		fmt.Fprintln(e.stderr, message(err))
		return exitUsage
	default:
		fmt.Fprintln(e.stderr, message(err))
		return exitError
	}
}

// message is err as the one line vmnet prints: with one "vmnet" prefix,
// also when the error already names the verb ("vmnet up: ...") or comes
// from a part that names itself ("vmnet image: ...").
func message(err error) string {
	s := err.Error()
	if strings.HasPrefix(s, "vmnet: ") || strings.HasPrefix(s, "vmnet ") && strings.Contains(s, ": ") {
		return s
	}
	return "vmnet: " + s
}

// globalFlags takes the options that stand before the verb.
func globalFlags(args []string) (ns string, rest []string, err error) {
	for len(args) > 0 {
		a := args[0]
		switch {
		case a == "--netns" || a == "-netns":
			if len(args) < 2 {
				return "", nil, usagef("--netns needs a namespace name (from `ip netns`) or path")
			}
			ns, args = args[1], args[2:]
		case strings.HasPrefix(a, "--netns="):
			ns, args = strings.TrimPrefix(a, "--netns="), args[1:]
		default:
			return ns, args, nil
		}
	}
	return ns, args, nil
}

// resolve walks args down the verb tree and returns the deepest command.
func resolve(c *command, args []string) (*command, string, []string) {
	path := c.name
	for len(args) > 0 {
		var next *command
		for _, s := range c.subs {
			if s.name == args[0] {
				next = s
			}
		}
		if next == nil {
			break
		}
		c, path, args = next, path+" "+next.name, args[1:]
	}
	return c, path, args
}

func isHelp(s string) bool { return s == "-h" || s == "--help" || s == "help" || s == "-help" }

func printHelp(w io.Writer, c *command, path string) {
	fmt.Fprintf(w, "%s: %s\n\nUsage:\n", path, c.summary)
	if c.name == "vmnet" {
		fmt.Fprintf(w, "  vmnet [--netns NS] VERB ...   (--netns: work in the network namespace NS, a name from `ip netns` or a path)\n\n")
	}
	for _, s := range c.subs {
		line := path + " " + s.name
		if s.args != "" {
			line += " " + s.args
		} else if s.subs != nil {
			line += " VERB ..."
		}
		fmt.Fprintf(w, "  %-44s %s\n", line, s.summary)
	}
	fmt.Fprintf(w, "\nRun `%s VERB --help` for a verb's flags.\n", path)
}

func versionCommand() *command {
	return &command{name: "version", summary: "print the version", run: func(e *env, args []string) error {
		if _, err := e.flags("vmnet version", "").parse(args, 0, 0); err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, "vmnet", version)
		return nil
	}}
}

var version = "dev"
