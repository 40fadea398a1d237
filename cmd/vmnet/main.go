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

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/vmnet/vmnet/netns"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// Exit statuses: 0 success, 1 a runtime error naming the object, 2 a
// usage error (the command line itself is wrong: an unknown verb or flag,
// a missing argument, a bad name or a flag value out of range). Verbs
// that run guest commands return the guest's status.
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

// env is what a verb writes to, and the global flags.
type env struct {
	stdout, stderr io.Writer
	netns          string
	quiet, verbose bool
}

// logf prints a step or notice on stderr, unless --quiet.
func (e *env) logf(format string, args ...any) {
	if e.quiet {
		return
	}
	fmt.Fprintf(e.stderr, "vmnet: "+format+"\n", args...)
}

// Annotations on verbs.
const (
	// needsRoot: the verb changes interfaces or reads root's state; a user
	// without CAP_NET_ADMIN gets one line saying so instead of a netlink
	// or setns error.
	needsRoot = "vmnet/needs-root"
	// hostOnly: the verb does not enter --netns (help, version,
	// completion: nothing to do with interfaces).
	hostOnly = "vmnet/host-only"
)

func newRoot(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:   "vmnet",
		Short: "fast, correct networking for QEMU guests",
		Long: "vmnet gives QEMU guests fast, correct networking on Linux: multi-queue vnet_hdr taps,\n" +
			"bridges with VLANs, whole labs of guests from a TOML file, and teardown that removes\n" +
			"exactly what vmnet created.",
		Example: `  vmnet features
  vmnet tap create t0 --queues 4 --offload csum,tso4,tso6
  vmnet --netns demo up examples/demo.toml --detach
  vmnet help tap create`,
		Version:       versionLine(),
		Args:          cobra.ArbitraryArgs,
		RunE:          groupRun,
		SilenceErrors: true,
		SilenceUsage:  true,
		// Completion is a verb of its own, with examples (completionCommand).
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&e.netns, "netns", "", "work in the network namespace `NS` (a name from `ip netns`, or a path)")
	root.RegisterFlagCompletionFunc("netns", func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		ents, _ := os.ReadDir("/run/netns") // the names `ip netns` knows
		var out []cobra.Completion
		for _, e := range ents {
			out = append(out, e.Name())
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	})
	pf.BoolVarP(&e.quiet, "quiet", "q", false, "print only results and errors, no steps or progress")
	pf.BoolVarP(&e.verbose, "verbose", "v", false, "print more: every step with its timing, guest boot consoles")
	root.SetFlagErrorFunc(flagError)
	root.AddCommand(
		tapCommand(e),
		bridgeCommand(e),
		featuresCommand(e),
		validateCommand(e),
		upCommand(e),
		downCommand(e),
		statusCommand(e),
		lsCommand(e),
		nicCommand(e),
		shCommand(e),
		logsCommand(e),
		consoleCommand(e),
		linkCommand(e),
		runCommand(e),
		imageCommand(e),
		execCommand(e),
		versionCommand(e),
		completionCommand(e),
	)
	for _, extra := range extraCommands {
		root.AddCommand(extra(e))
	}
	root.SetHelpCommand(helpCommand())
	root.InitDefaultHelpCmd()
	root.InitDefaultHelpFlag()
	root.InitDefaultVersionFlag()
	walk(root, func(c *cobra.Command) { prepare(e, c) })
	return root
}

// helpCommand is `vmnet help VERB...`: the verb's help, or a usage
// error with suggestions for a verb that does not exist.
func helpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "help [VERB...]",
		Short: "show the help of vmnet or of a verb",
		Example: `  vmnet help
  vmnet help tap
  vmnet help bridge port add`,
		Args:        cobra.ArbitraryArgs,
		Annotations: map[string]string{hostOnly: "true"},
		ValidArgsFunction: func(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
			parent, _, err := c.Root().Find(args)
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var out []cobra.Completion
			for _, s := range parent.Commands() {
				if s.IsAvailableCommand() && strings.HasPrefix(s.Name(), toComplete) {
					out = append(out, cobra.CompletionWithDesc(s.Name(), s.Short))
				}
			}
			return out, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(c *cobra.Command, args []string) error {
			target := c.Root()
			for _, a := range args {
				var next *cobra.Command
				for _, s := range target.Commands() {
					if s.Name() == a || s.HasAlias(a) {
						next = s
					}
				}
				if next == nil {
					return groupRun(target, []string{a})
				}
				target = next
			}
			return target.Help()
		},
	}
}

// extraCommands are verbs that build tags add (man.go: gen-man).
var extraCommands []func(*env) *cobra.Command

// walk calls fn on c and every command below it.
func walk(c *cobra.Command, fn func(*cobra.Command)) {
	fn(c)
	for _, s := range c.Commands() {
		walk(s, fn)
	}
}

// prepare makes argument mistakes usage errors and runs each verb in the
// --netns namespace, after the root check.
func prepare(e *env, c *cobra.Command) {
	c.SuggestionsMinimumDistance = 2
	if c.Args != nil {
		check := c.Args
		c.Args = func(c *cobra.Command, args []string) error {
			if err := check(c, args); err != nil {
				var ue usageError
				if errors.As(err, &ue) {
					return err
				}
				return usagef("%s: %v (see `%s --help`)", c.CommandPath(), err, c.CommandPath())
			}
			return nil
		}
	}
	if c.RunE == nil {
		return
	}
	verb := c.RunE
	c.RunE = func(c *cobra.Command, args []string) error {
		if c.Annotations[hostOnly] != "" {
			return verb(c, args)
		}
		var err error
		if e.netns == "" {
			err = verb(c, args)
		} else {
			// The whole verb runs in the namespace; what must not (image
			// downloads, the detached supervisor) goes back with
			// netns.DoInitial.
			err = netns.DoNamed(e.netns, func() error { return verb(c, args) })
		}
		// A verb that needs root failed without it: say that, in one
		// line, rather than what netlink or setns made of it. Mistakes
		// in the command line (checked first) are still reported as such.
		var ue usageError
		var st exitStatus
		if err != nil && !errors.As(err, &ue) && !errors.As(err, &st) && (c.Annotations[needsRoot] != "" || e.netns != "") {
			if rerr := requireRoot(c, e.netns != ""); rerr != nil {
				return rerr
			}
		}
		return err
	}
}

// groupRun is the verb of a group (vmnet, vmnet tap, ...): an unknown verb
// is a usage error with suggestions; no verb shows the help and exits 2.
func groupRun(c *cobra.Command, args []string) error {
	if len(args) == 0 {
		c.Help() // on stdout, as `vmnet VERB --help`; the status says it was not a command
		return exitStatus(exitUsage)
	}
	msg := fmt.Sprintf("%s: unknown verb %q", c.CommandPath(), args[0])
	if s := c.SuggestionsFor(args[0]); len(s) > 0 {
		msg += ` (did you mean "` + strings.Join(s, `" or "`) + `"?)`
	}
	return usagef("%s; see `%s --help`", msg, c.CommandPath())
}

// group makes a command that only holds verbs.
func group(use, short, example string, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{Use: use, Short: short, Example: example, Args: cobra.ArbitraryArgs, RunE: groupRun}
	c.AddCommand(subs...)
	return c
}

// nargs checks the number of positional arguments (max < 0: no limit)
// and names the synopsis in the error.
func nargs(min, max int) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		switch {
		case len(args) < min:
			return usagef("%s: missing argument (usage: %s)", c.CommandPath(), c.UseLine())
		case max >= 0 && len(args) > max:
			return usagef("%s: unexpected argument %q (usage: %s)", c.CommandPath(), args[max], c.UseLine())
		}
		return nil
	}
}

// root marks a verb as needing root (see needsRoot).
func root(c *cobra.Command) *cobra.Command {
	if c.Annotations == nil {
		c.Annotations = map[string]string{}
	}
	c.Annotations[needsRoot] = "true"
	return c
}

// hide adds a flag that scripts and vmnet itself use but users need not
// see in the help.
func hide(fs *pflag.FlagSet, name string) {
	if err := fs.MarkHidden(name); err != nil {
		panic(err)
	}
}

func run(args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr}
	root := newRoot(e)
	root.SetArgs(args)
	err := root.Execute()
	var st exitStatus
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &st):
		return int(st)
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, errorLine(err))
		return exitUsage
	default:
		fmt.Fprintln(stderr, errorLine(err))
		return exitError
	}
}

// errorLine prefixes an error with "vmnet:" once: not again when it
// already starts with the program's name or a verb's path ("vmnet tap
// create: ...").
func errorLine(err error) string {
	msg := err.Error()
	if strings.HasPrefix(msg, "vmnet: ") || strings.HasPrefix(msg, "vmnet ") {
		return msg
	}
	return "vmnet: " + msg
}
