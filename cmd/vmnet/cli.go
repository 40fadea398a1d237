package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vmnet/vmnet/internal/lab"
	"github.com/vmnet/vmnet/netns"
)

// output is the -o flag of verbs that describe things. An unknown format
// is refused while the flags are parsed, as a usage error. Verbs list
// their formats; adding one (mermaid, yaml) is adding it to that list.
type output struct {
	format  string
	formats []string
}

// register adds -o/--output to c with the formats it takes (the first is
// the default) and offers them to shell completion.
func (o *output) register(c *cobra.Command, formats ...string) {
	o.format, o.formats = formats[0], formats
	c.Flags().VarP(o, "output", "o", "output `FORMAT`: "+strings.Join(formats, ", "))
	c.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(formats, cobra.ShellCompDirectiveNoFileComp))
}

func (o *output) String() string { return o.format }
func (o *output) Type() string   { return "format" }

func (o *output) Set(s string) error {
	if !slices.Contains(o.formats, s) {
		return fmt.Errorf("unknown output format %q (choose %s)", s, strings.Join(o.formats, ", "))
	}
	o.format = s
	return nil
}

// flagError turns pflag's message about a bad flag value into one
// without Go's parser names: `invalid argument "four" for "--queues"
// flag: not a whole number`.
func flagError(c *cobra.Command, err error) error {
	msg := err.Error()
	for _, r := range []struct{ marker, say string }{
		{": strconv.ParseInt: ", ": not a whole number"},
		{": strconv.ParseUint: ", ": not a whole number"},
		{": strconv.ParseBool: ", ": want true or false"},
		{": time: ", ": not a duration such as 30s, 2m or 1h"},
	} {
		if i := strings.Index(msg, r.marker); i >= 0 {
			msg = msg[:i] + r.say
		}
	}
	return usagef("%s: %s (see `%s --help`)", c.CommandPath(), msg, c.CommandPath())
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// buildInfo is what `vmnet version` reports, from the build information
// the Go toolchain embeds (the same that `go version -m` prints).
type buildInfo struct {
	Module    string `json:"module"`
	Version   string `json:"version"`
	Revision  string `json:"revision,omitempty"`
	Time      string `json:"time,omitempty"`
	Modified  bool   `json:"modified"`
	GoVersion string `json:"go_version"`
}

func readBuildInfo() buildInfo {
	b := buildInfo{Module: "github.com/vmnet/vmnet", Version: "(unknown)"}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	b.GoVersion = bi.GoVersion
	if bi.Main.Path != "" {
		b.Module, b.Version = bi.Main.Path, bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.time":
			b.Time = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		}
	}
	return b
}

// versionLine is `vmnet --version`: one line.
func versionLine() string {
	b := readBuildInfo()
	s := "vmnet " + b.Version
	if b.Revision != "" {
		s += " revision " + b.Revision
		if b.Modified {
			s += " (modified)"
		}
	}
	if b.GoVersion != "" {
		s += " " + b.GoVersion
	}
	return s
}

func versionCommand(e *env) *cobra.Command {
	var o output
	c := &cobra.Command{
		Use:   "version",
		Short: "print the version and VCS revision vmnet was built from",
		Example: `  vmnet version
  vmnet version -o json`,
		Args:        nargs(0, 0),
		Annotations: map[string]string{hostOnly: "true"},
		RunE: func(c *cobra.Command, args []string) error {
			if o.format == "json" {
				return writeJSON(e.stdout, readBuildInfo())
			}
			fmt.Fprintln(e.stdout, versionLine())
			return nil
		},
	}
	o.register(c, "text", "json")
	return c
}

func completionCommand(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "completion bash|zsh|fish",
		Short: "print a shell completion script",
		Long: "Prints a script that makes the shell complete vmnet's verbs, flags, and values such as\n" +
			"output formats. Load it in the current shell, or install it where the shell looks for\n" +
			"completions.",
		Example: `  source <(vmnet completion bash)
  vmnet completion bash > /etc/bash_completion.d/vmnet
  vmnet completion zsh > "${fpath[1]}/_vmnet"
  vmnet completion fish > ~/.config/fish/completions/vmnet.fish`,
		ValidArgs:   []string{"bash", "zsh", "fish"},
		Args:        cobra.MatchAll(cobra.ExactArgs(1), cobra.OnlyValidArgs),
		Annotations: map[string]string{hostOnly: "true"},
		RunE: func(c *cobra.Command, args []string) error {
			root := c.Root()
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(e.stdout, true)
			case "zsh":
				return root.GenZshCompletion(e.stdout)
			default:
				return root.GenFishCompletion(e.stdout, true)
			}
		},
	}
}

// capNetAdmin and capSysAdmin are bits of the capability sets in
// /proc/self/status (linux/capability.h).
const (
	capNetAdmin = 12
	capSysAdmin = 21
)

// requireRoot refuses, in one line, a verb that needs root when vmnet
// lacks the capabilities, rather than failing later with a netlink or
// setns error that does not say what to do.
// Entering a namespace (--netns) needs CAP_SYS_ADMIN as well.
func requireRoot(c *cobra.Command, enterNS bool) error {
	want := uint64(1) << capNetAdmin
	if enterNS {
		want |= 1 << capSysAdmin
	}
	eff, ok := effectiveCaps()
	if !ok || eff&want == want {
		return nil // cannot tell, or may: let the kernel decide
	}
	return fmt.Errorf("%s needs root (CAP_NET_ADMIN): run it as root, for example with sudo", c.CommandPath())
}

func effectiveCaps() (uint64, bool) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// completeLabs offers the labs of the --netns namespace (or the current
// one) for a verb's first argument; lab files complete as files.
func (e *env) completeLabs(_ *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var labs []string
	list := func() error {
		ns, err := lab.CurrentNetNS()
		if err != nil {
			return err
		}
		labs, err = lab.Labs(ns)
		return err
	}
	if e.netns != "" {
		netns.DoNamed(e.netns, list)
	} else {
		list()
	}
	return labs, cobra.ShellCompDirectiveDefault
}
