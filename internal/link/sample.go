package link

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"syscall"
	"time"
)

// Sample is one report of `vmnet link --stats`: the link's counters at a
// moment. Its JSON form is one object per line, with Stats' fields (a, b,
// a_to_b, b_to_a) at the top level; the field names are part of vmnet's
// interface and stay stable.
type Sample struct {
	Time time.Time `json:"time"`
	// ElapsedSeconds counts from when the link started forwarding.
	ElapsedSeconds float64 `json:"elapsed_seconds"`
	// Final marks the last sample, written when the link stops.
	Final bool `json:"final"`
	Stats
	// CPU is the process's CPU time, in the final sample only.
	CPU *CPU `json:"cpu,omitempty"`
}

// CPU is the CPU time a process used.
type CPU struct {
	UserSeconds   float64 `json:"user_seconds"`
	SystemSeconds float64 `json:"system_seconds"`
}

// Sample reads the counters now; start is when forwarding began. The
// final sample also carries the process's CPU time.
func (l *Link) Sample(start time.Time, final bool) Sample {
	now := time.Now()
	s := Sample{Time: now.UTC(), ElapsedSeconds: now.Sub(start).Seconds(), Final: final, Stats: l.Stats()}
	if final {
		var ru syscall.Rusage
		if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
			s.CPU = &CPU{UserSeconds: time.Duration(ru.Utime.Nano()).Seconds(), SystemSeconds: time.Duration(ru.Stime.Nano()).Seconds()}
		}
	}
	return s
}

// SampleFormats are the output formats of `vmnet link --stats -o`.
var SampleFormats = []string{"text", "json"}

// WriteSample prints s in one of SampleFormats: text is Stats.String()
// (and a cpu line in the final sample), json one object on one line (JSON
// Lines), written with a single Write so that samples never interleave.
func WriteSample(w io.Writer, format string, s Sample) error {
	var b []byte
	switch format {
	case "text", "":
		var sb strings.Builder
		sb.WriteString(s.Stats.String())
		sb.WriteByte('\n')
		if s.CPU != nil {
			fmt.Fprintf(&sb, "cpu: user %.2fs system %.2fs in %.1fs\n", s.CPU.UserSeconds, s.CPU.SystemSeconds, s.ElapsedSeconds)
		}
		b = []byte(sb.String())
	case "json":
		var err error
		if b, err = json.Marshal(s); err != nil {
			return err
		}
		b = append(b, '\n')
	default:
		return fmt.Errorf("unknown output format %q: use one of %s", format, strings.Join(SampleFormats, ", "))
	}
	_, err := w.Write(b)
	return err
}
