package vmconfig

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Impairment is what a userspace link does to the frames of one
// direction. The parameters mean what tc-netem's mean (and the rate what
// its "rate", with tbf's burst): Delay plus a uniform Jitter of up to
// ±Jitter; Loss, Duplicate, Reorder and Corrupt are percentages (0-100)
// of frames; LossCorrelation makes a loss depend on the previous one as
// netem's correlation does; Reorder sends that share of frames at once,
// ahead of the delayed ones (it needs a delay to show); Rate limits the
// direction to bits per second, letting Burst bytes through at line
// speed. The zero value impairs nothing.
type Impairment struct {
	Delay, Jitter   time.Duration
	Loss            float64
	LossCorrelation float64
	Duplicate       float64
	Reorder         float64
	Corrupt         float64
	Rate            uint64 // bits per second; 0: unlimited
	Burst           uint64 // bytes; 0 with a Rate: one full-sized frame
}

// IsZero reports whether im impairs nothing.
func (im Impairment) IsZero() bool { return im == Impairment{} }

// String formats im the way tc shows a netem qdisc: only what is set.
func (im Impairment) String() string {
	var b []string
	if im.Delay != 0 || im.Jitter != 0 {
		s := "delay " + im.Delay.String()
		if im.Jitter != 0 {
			s += " jitter " + im.Jitter.String()
		}
		b = append(b, s)
	}
	pct := func(name string, v float64) {
		if v != 0 {
			b = append(b, name+" "+FormatPercent(v))
		}
	}
	pct("loss", im.Loss)
	if im.Loss != 0 {
		pct("correlation", im.LossCorrelation)
	}
	pct("duplicate", im.Duplicate)
	pct("reorder", im.Reorder)
	pct("corrupt", im.Corrupt)
	if im.Rate != 0 {
		s := "rate " + FormatRate(im.Rate)
		if im.Burst != 0 {
			s += " burst " + strconv.FormatUint(im.Burst, 10) + "b"
		}
		b = append(b, s)
	}
	if len(b) == 0 {
		return "none"
	}
	return strings.Join(b, " ")
}

// FormatPercent prints a percentage without trailing zeros: "0.1%".
func FormatPercent(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) + "%" }

// FormatRate prints bits per second in tc's units: "100mbit".
func FormatRate(v uint64) string {
	for _, u := range []struct {
		n    string
		mult uint64
	}{{"tbit", 1e12}, {"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}} {
		if v >= u.mult && v%u.mult == 0 {
			return strconv.FormatUint(v/u.mult, 10) + u.n
		}
	}
	return strconv.FormatUint(v, 10) + "bit"
}

// ParseDelay reads a delay or jitter: a Go or tc duration ("20ms",
// "1.5s", "500us"), not negative, at most a minute.
func ParseDelay(s string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration: want a number with a unit such as 20ms, 500us or 1s", s)
	}
	if d < 0 || d > time.Minute {
		return 0, fmt.Errorf("%q is out of range: want 0 to 1m", s)
	}
	return d, nil
}

// ParsePercent reads a percentage "5%", "0.1%" (the % sign is needed, so
// that 5 is not read as 500%), 0 to 100.
func ParsePercent(s string) (float64, error) {
	t := strings.TrimSpace(s)
	num, ok := strings.CutSuffix(t, "%")
	v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if !ok || err != nil || math.IsNaN(v) {
		return 0, fmt.Errorf("%q is not a percentage: want a number followed by %%, such as 5%% or 0.1%%", s)
	}
	if v < 0 || v > 100 {
		return 0, fmt.Errorf("%q is out of range: want 0%% to 100%%", s)
	}
	return v, nil
}

// rateUnits are tc's: "bit" units are bits per second, "bps" units bytes
// per second (tc(8): "bps" means bytes), powers of 1000.
var rateUnits = []struct {
	suffix string
	mult   float64
}{
	{"tbit", 1e12}, {"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1},
	{"tbps", 8e12}, {"gbps", 8e9}, {"mbps", 8e6}, {"kbps", 8e3}, {"bps", 8},
}

// ParseRate reads a rate in tc's units into bits per second: "100mbit",
// "1gbit", "500kbit", "12500kbps" (bytes per second). Zero ("0",
// "0bit") is no rate limit, as a zero delay is no delay, so that a rate
// set at run time can be taken away again.
func ParseRate(s string) (uint64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if t == "0" {
		return 0, nil
	}
	for _, u := range rateUnits {
		if num, ok := strings.CutSuffix(t, u.suffix); ok {
			v, err := strconv.ParseFloat(num, 64)
			if err != nil || math.IsNaN(v) {
				break
			}
			bits := v * u.mult
			if bits == 0 {
				return 0, nil
			}
			if bits < 8 || bits > 1e13 {
				return 0, fmt.Errorf("%q is out of range: want 8bit to 10tbit", s)
			}
			return uint64(bits), nil
		}
	}
	return 0, fmt.Errorf("%q is not a rate: want a number with a unit such as 100mbit, 1gbit or 500kbit", s)
}

// ParseSize reads a burst in bytes: "32kb", "1500b", "1mb" (tc's units:
// k and m are powers of 1024), or a plain number of bytes. Zero is the
// default burst (one frame).
func ParseSize(s string) (uint64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := 1.0
	for _, u := range []struct {
		suffix string
		mult   float64
	}{{"kb", 1024}, {"k", 1024}, {"mb", 1 << 20}, {"m", 1 << 20}, {"b", 1}} {
		if num, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = num, u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(v) {
		return 0, fmt.Errorf("%q is not a size: want bytes with a unit such as 32kb or 1500b", s)
	}
	n := v * mult
	if n == 0 {
		return 0, nil
	}
	if n < 1 || n > 1<<30 {
		return 0, fmt.Errorf("%q is out of range: want 1b to 1024mb", s)
	}
	return uint64(n), nil
}

// ImpairmentKeys are the keys of an impairment, in the lab file (with _)
// and on the command line (with -).
var ImpairmentKeys = []string{"delay", "jitter", "loss", "loss_correlation", "duplicate", "reorder", "corrupt", "rate", "burst"}

// SetImpairment parses value for key into im. The error names neither
// key nor place: the caller adds them.
func SetImpairment(im *Impairment, key, value string) error {
	var err error
	switch key {
	case "delay":
		im.Delay, err = ParseDelay(value)
	case "jitter":
		im.Jitter, err = ParseDelay(value)
	case "loss":
		im.Loss, err = ParsePercent(value)
	case "loss_correlation":
		im.LossCorrelation, err = ParsePercent(value)
	case "duplicate":
		im.Duplicate, err = ParsePercent(value)
	case "reorder":
		im.Reorder, err = ParsePercent(value)
	case "corrupt":
		im.Corrupt, err = ParsePercent(value)
	case "rate":
		im.Rate, err = ParseRate(value)
	case "burst":
		im.Burst, err = ParseSize(value)
	default:
		err = fmt.Errorf("unknown impairment %q: want one of %s", key, strings.Join(ImpairmentKeys, ", "))
	}
	return err
}

// Check reports parameters that make no sense together, in netem's
// terms.
func (im Impairment) Check() error {
	switch {
	case im.LossCorrelation != 0 && im.Loss == 0:
		return fmt.Errorf("loss_correlation needs a loss")
	case im.Burst != 0 && im.Rate == 0:
		return fmt.Errorf("burst needs a rate")
	}
	return nil
}

// DirKeys are the tables of per-direction impairments on a [[link]].
var DirKeys = []string{"a_to_b", "b_to_a"}
