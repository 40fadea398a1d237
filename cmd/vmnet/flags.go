package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
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

// output is the -o flag of verbs that describe things.
type output struct{ format string }

func (o *output) register(fs *flags, formats ...string) {
	o.format = formats[0]
	fs.StringVar(&o.format, "o", formats[0], "output format: "+strings.Join(formats, ", "))
}

func (o *output) check(formats ...string) error {
	for _, f := range formats {
		if o.format == f {
			return nil
		}
	}
	return usagef("-o %s: unknown output format (choose %s)", o.format, strings.Join(formats, ", "))
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
