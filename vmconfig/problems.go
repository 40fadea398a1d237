package vmconfig

import (
	"encoding/json"
	"errors"
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

// problemJSON is the machine-readable form of a Problem, one object per
// finding, with the field names CI annotation tools expect.
type problemJSON struct {
	File     string `json:"file"`
	Line     int    `json:"line"`
	Column   int    `json:"column"`
	Severity string `json:"severity"` // "error" or "warning"
	Message  string `json:"message"`
}

// MarshalJSON writes {"file","line","column","severity","message"}.
func (p Problem) MarshalJSON() ([]byte, error) {
	return json.Marshal(problemJSON{File: p.Pos.File, Line: p.Pos.Line, Column: p.Pos.Col, Severity: p.Severity.String(), Message: p.Msg})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (p *Problem) UnmarshalJSON(b []byte) error {
	var j problemJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	sev := Error
	switch j.Severity {
	case "error":
	case "warning":
		sev = Warning
	default:
		return fmt.Errorf("unknown severity %q: want \"error\" or \"warning\"", j.Severity)
	}
	*p = Problem{Pos: Pos{File: j.File, Line: j.Line, Col: j.Column}, Severity: sev, Msg: j.Message}
	return nil
}

// MarshalJSON writes a list, [] when there are no problems (a clean file),
// never null.
func (ps Problems) MarshalJSON() ([]byte, error) {
	if len(ps) == 0 {
		return []byte("[]"), nil
	}
	return json.Marshal([]Problem(ps))
}

// ProblemsOf turns what Load, LoadWith or Parse returned into every
// finding about the file, errors and warnings alike, for a report such as
// `vmnet validate -o json`. An error that is not about the file's content
// (it could not be read) comes back as err.
func ProblemsOf(lab *Lab, err error) (Problems, error) {
	var ps Problems
	switch {
	case errors.As(err, &ps):
		return ps, nil
	case err != nil:
		return nil, err
	case lab == nil:
		return nil, nil
	}
	return lab.Warnings, nil
}
