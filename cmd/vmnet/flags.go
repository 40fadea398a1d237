package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
)

var errHelp = errors.New("help shown")

type flags struct {
	*flag.FlagSet
	synopsis string
	help     io.Writer
}

func (e *env) flags(name, synopsis string) *flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &flags{FlagSet: fs, synopsis: synopsis, help: e.stdout}
}

// parse parses flags that may stand before, between or after the
// positional arguments (`vmnet tap create t0 --queues 4`), and checks the
// number of positional arguments (max < 0: unlimited). Everything after
// "--" is positional.
func (fs *flags) parse(args []string, min, max int) ([]string, error) {
	var pos []string
	for {
		if len(args) > 0 && args[0] == "--" {
			pos = append(pos, args[1:]...)
			break
		}
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fmt.Fprintf(fs.help, "Usage: %s %s\n", fs.Name(), fs.synopsis)
				fs.SetOutput(fs.help)
				fs.PrintDefaults()
				return nil, errHelp
			}
			return nil, usagef("%s: %v (see `%s --help`)", fs.Name(), err, fs.Name())
		}
		// The flag package eats a "--" it meets; what follows is positional.
		if n := len(args) - len(fs.Args()); n > 0 && args[n-1] == "--" {
			pos = append(pos, fs.Args()...)
			break
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	synopsis, _, _ := strings.Cut(fs.synopsis, "\n") // errors stay on one line
	switch {
	case len(pos) < min:
		return nil, usagef("%s: missing argument (usage: %s %s)", fs.Name(), fs.Name(), synopsis)
	case max >= 0 && len(pos) > max:
		return nil, usagef("%s: unexpected argument %q (usage: %s %s)", fs.Name(), pos[max], fs.Name(), synopsis)
	}
	return pos, nil
}

// output is the -o flag of verbs that describe things. An unknown format
// is refused while the flags are parsed, as a usage error.
type output struct {
	format  string
	formats []string
}

func (o *output) register(fs *flags, formats ...string) {
	o.format, o.formats = formats[0], formats
	fs.Var(o, "o", "output format: "+strings.Join(formats, ", "))
}

func (o *output) String() string { return o.format }

func (o *output) Set(s string) error {
	if !slices.Contains(o.formats, s) {
		return fmt.Errorf("unknown output format (choose %s)", strings.Join(o.formats, ", "))
	}
	o.format = s
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
