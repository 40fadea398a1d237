package vmconfig

import (
	"fmt"
	"sort"
	"strings"
)

// Pos is a place in a config file. Line and Col start at 1; Col counts bytes,
// like the Go compiler and the toml package do.
type Pos struct {
	File string
	Line int
	Col  int
}

func (p Pos) String() string {
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Col)
}

// Severity tells whether a Problem stops the lab from being used.
type Severity uint8

const (
	// Error makes the config unusable.
	Error Severity = iota
	// Warning is reported but the config still loads.
	Warning
)

func (s Severity) String() string {
	if s == Warning {
		return "warning"
	}
	return "error"
}

// Problem is one finding about a config file.
type Problem struct {
	Pos      Pos
	Severity Severity
	Msg      string
}

// String formats the problem as "file:line:col: message"; warnings carry a
// "warning: " prefix in the message part so they stand out in a long list.
func (p Problem) String() string {
	if p.Severity == Warning {
		return p.Pos.String() + ": warning: " + p.Msg
	}
	return p.Pos.String() + ": " + p.Msg
}

// Problems is every finding about one config file, sorted by position. As an
// error it reports all of them, one per line.
type Problems []Problem

func (ps Problems) Error() string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// HasErrors reports whether any problem is an Error (not only warnings).
func (ps Problems) HasErrors() bool {
	for _, p := range ps {
		if p.Severity == Error {
			return true
		}
	}
	return false
}

// Warnings returns only the warnings.
func (ps Problems) Warnings() Problems {
	var out Problems
	for _, p := range ps {
		if p.Severity == Warning {
			out = append(out, p)
		}
	}
	return out
}

// sortDedup orders problems by position and drops exact repeats, which
// happen when one [defaults] value is wrong for several VMs.
func (ps Problems) sortDedup() Problems {
	sort.SliceStable(ps, func(i, j int) bool {
		a, b := ps[i].Pos, ps[j].Pos
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
	out := ps[:0]
	seen := make(map[Problem]bool, len(ps))
	for _, p := range ps {
		if seen[p] {
			continue
		}
		seen[p] = true
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
