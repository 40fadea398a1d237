package tap

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Impairment is what the kernel's netem and tbf qdiscs do to the frames
// a tap sends to its reader (the guest). The fields mean what tc-netem's
// and tc-tbf's parameters mean: Delay with a uniform Jitter of up to
// ±Jitter; Loss (with LossCorrelation), Duplicate, Reorder and Corrupt
// are percentages 0-100; Rate is bits per second, Burst bytes (0: one
// frame of the tap's MTU). The zero value impairs nothing.
type Impairment struct {
	Delay, Jitter   time.Duration
	Loss            float64
	LossCorrelation float64
	Duplicate       float64
	Reorder         float64
	Corrupt         float64
	Rate            uint64
	Burst           uint64
}

// netem reports whether im needs a netem qdisc (anything but a rate).
func (im Impairment) netem() bool {
	n := im
	n.Rate, n.Burst = 0, 0
	return n != Impairment{}
}

// Kernel options, for the error that names what a kernel lacks.
const (
	netemOption = "CONFIG_NET_SCH_NETEM, module sch_netem"
	tbfOption   = "CONFIG_NET_SCH_TBF, module sch_tbf"
)

// netemLimit is netem's queue length in frames: tc's default, so a
// delay behaves as it does under `tc qdisc add ... netem delay`.
const netemLimit = 1000

// tbfLatency bounds how long a frame waits in tbf's queue (tc-tbf's
// latency): the queue holds what the rate sends in that time.
const tbfLatency = 100 * time.Millisecond

// SetImpairment makes im the root qdisc of the tap: netem for delay,
// jitter, loss, duplicate, reorder and corrupt; tbf for rate and burst
// (under netem when both are set, as `tc qdisc add ... parent 1:1 tbf`).
// The zero Impairment puts back the tap's own root qdisc (noqueue or the
// kernel's default, as it was created). netem acts on what the tap sends
// to its reader: frames going to the guest.
func (t *Tap) SetImpairment(im Impairment) error {
	return t.inNS(func() error {
		h := &netlink.Handle{}
		link, err := h.LinkByIndex(t.index)
		if err != nil {
			return fmt.Errorf("tap %s: look up: %w", t.name, err)
		}
		return setImpairment(h, link, im, t.qdisc)
	})
}

func setImpairment(h *netlink.Handle, link netlink.Link, im Impairment, base Qdisc) error {
	name := link.Attrs().Name
	if err := im.check(); err != nil {
		return fmt.Errorf("tap %s: impairment %w", name, err)
	}
	root := netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.HANDLE_ROOT, Handle: netlink.MakeHandle(1, 0)}
	if im == (Impairment{}) {
		if base == QdiscNoqueue {
			return setQdisc(h, link, QdiscNoqueue)
		}
		// Deleting the root qdisc gives the device the kernel's default
		// back; a tap that has none of vmnet's has nothing to delete.
		qs, err := h.QdiscList(link)
		if err != nil {
			return fmt.Errorf("tap %s: list qdiscs: %w", name, err)
		}
		for _, q := range qs {
			if q.Attrs().Parent == netlink.HANDLE_ROOT && (q.Type() == "netem" || q.Type() == "tbf") {
				if err := h.QdiscDel(q); err != nil {
					return fmt.Errorf("tap %s: remove %s: %w", name, q.Type(), err)
				}
			}
		}
		return nil
	}
	var tbf *netlink.Tbf
	if im.Rate != 0 {
		burst := im.Burst
		if burst == 0 {
			burst = uint64(link.Attrs().MTU) + 14 // one frame, with its Ethernet header
		}
		tbf = newTbf(im.Rate, burst)
	}
	if !im.netem() {
		// Its own handle: replacing a root of another kind needs a new
		// handle (the kernel refuses to change a qdisc into another
		// kind, EINVAL), while the same kind is changed in place.
		tbf.QdiscAttrs = root
		tbf.Handle = netlink.MakeHandle(2, 0)
		if err := h.QdiscReplace(tbf); err != nil {
			return missing(name, "tbf", tbfOption, err)
		}
		return nil
	}
	nq := netlink.NewNetem(root, netlink.NetemQdiscAttrs{
		Latency: uint32(im.Delay.Microseconds()), Jitter: uint32(im.Jitter.Microseconds()),
		Loss: float32(im.Loss), LossCorr: float32(im.LossCorrelation), Duplicate: float32(im.Duplicate),
		ReorderProb: float32(im.Reorder), CorruptProb: float32(im.Corrupt), Limit: netemLimit,
	})
	if im.Delay == 0 && im.Jitter != 0 {
		// NewNetem converts jitter to ticks only with a delay.
		nq.Jitter = uint32(float64(im.Jitter.Microseconds()) * netlink.TickInUsec())
	}
	// What runs now, to put back should the tbf below be refused.
	qs, err := h.QdiscList(link)
	if err != nil {
		return fmt.Errorf("tap %s: list qdiscs: %w", name, err)
	}
	prev, _ := readImpairment(qs)
	// netem over netem (handle 1:) is changed in place and keeps its
	// child; another root is replaced by it.
	if err := h.QdiscReplace(nq); err != nil {
		return missing(name, "netem", netemOption, err)
	}
	child := netlink.MakeHandle(1, 1)
	if tbf != nil {
		tbf.QdiscAttrs = netlink.QdiscAttrs{LinkIndex: root.LinkIndex, Parent: child, Handle: netlink.MakeHandle(10, 0)}
		if err := h.QdiscReplace(tbf); err != nil {
			err = missing(name, "tbf", tbfOption, err)
			// Leave no half-set impairment: the rate is part of it.
			if prev == im {
				prev = Impairment{}
			}
			if derr := setImpairment(h, link, prev, base); derr != nil {
				err = errors.Join(err, derr)
			}
			return err
		}
		return nil
	}
	// A tbf left under netem from an earlier setting would keep limiting.
	if qs, err = h.QdiscList(link); err != nil {
		return fmt.Errorf("tap %s: list qdiscs: %w", name, err)
	}
	for _, q := range qs {
		if q.Attrs().Parent == child {
			if err := h.QdiscDel(q); err != nil {
				return fmt.Errorf("tap %s: remove the rate: %w", name, err)
			}
		}
	}
	return nil
}

// newTbf is tc-tbf with rate bits/s, burst bytes and a queue of
// tbfLatency at that rate.
func newTbf(rate, burst uint64) *netlink.Tbf {
	bytesPerSec := float64(rate) / 8
	// buffer is the time the burst takes at the rate, in the kernel's
	// scheduler ticks, rounded up so the bucket holds the whole burst
	// (netlink.Xmittime rounds to whole microseconds first, which at
	// gigabit rates is smaller than a frame).
	ticks := math.Ceil(float64(burst) / bytesPerSec * 1e6 * netlink.TickInUsec())
	limit := bytesPerSec*tbfLatency.Seconds() + float64(burst)
	return &netlink.Tbf{Rate: uint64(bytesPerSec), Buffer: uint32(min(ticks, math.MaxUint32)), Limit: uint32(min(limit, math.MaxUint32))}
}

// MissingQdiscError is a tap's qdisc the kernel does not have: it
// answered ENOENT (no such kind, and no module to load) or EOPNOTSUPP.
type MissingQdiscError struct {
	Tap    string
	Kind   string // netem or tbf
	Option string // the kernel option and module that provide it
	Err    error
}

func (e *MissingQdiscError) Error() string {
	return fmt.Sprintf("tap %s: add %s qdisc: %v (this kernel has no %s qdisc (%s): load the module with `modprobe sch_%s`, or use a kernel built with it)",
		e.Tap, e.Kind, e.Err, e.Kind, e.Option, e.Kind)
}

func (e *MissingQdiscError) Unwrap() error { return e.Err }

// missing explains the errors the kernel gives for a qdisc it does not
// have.
func missing(name, kind, option string, err error) error {
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP) {
		return &MissingQdiscError{Tap: name, Kind: kind, Option: option, Err: err}
	}
	return fmt.Errorf("tap %s: add %s qdisc: %w", name, kind, err)
}

// check refuses what netem and tbf cannot express.
func (im Impairment) check() error {
	pct := func(n string, v float64) error {
		if v < 0 || v > 100 || math.IsNaN(v) {
			return fmt.Errorf("%s %v%% is out of range: want 0%% to 100%%", n, v)
		}
		return nil
	}
	for _, c := range []struct {
		n string
		v float64
	}{{"loss", im.Loss}, {"loss correlation", im.LossCorrelation}, {"duplicate", im.Duplicate}, {"reorder", im.Reorder}, {"corrupt", im.Corrupt}} {
		if err := pct(c.n, c.v); err != nil {
			return err
		}
	}
	switch {
	case im.Delay < 0 || im.Jitter < 0 || im.Delay > time.Minute || im.Jitter > time.Minute:
		return fmt.Errorf("delay %v jitter %v: want 0 to 1m", im.Delay, im.Jitter)
	case im.Burst != 0 && im.Rate == 0:
		return fmt.Errorf("burst needs a rate")
	case im.Rate != 0 && im.Rate < 8:
		return fmt.Errorf("rate %d bit/s is below 8bit", im.Rate)
	}
	return nil
}

// readImpairment reads back the impairment of a tap's root qdisc: netem
// and a tbf at the root or under it. ok is false when there is none.
func readImpairment(qs []netlink.Qdisc) (im Impairment, ok bool) {
	tick := netlink.TickInUsec()
	us := func(ticks uint32) time.Duration {
		return time.Duration(math.Round(float64(ticks)/tick)) * time.Microsecond
	}
	pct := func(v uint32) float64 { return math.Round(float64(v)/math.MaxUint32*100*1e4) / 1e4 }
	for _, q := range qs {
		switch q := q.(type) {
		case *netlink.Netem:
			if q.Parent != netlink.HANDLE_ROOT {
				continue
			}
			ok = true
			im.Delay, im.Jitter = us(q.Latency), us(q.Jitter)
			im.Loss, im.LossCorrelation, im.Duplicate = pct(q.Loss), pct(q.LossCorr), pct(q.Duplicate)
			im.Reorder, im.Corrupt = pct(q.ReorderProb), pct(q.CorruptProb)
		case *netlink.Tbf:
			if q.Parent != netlink.HANDLE_ROOT && q.Parent != netlink.MakeHandle(1, 1) {
				continue
			}
			ok = true
			im.Rate = q.Rate * 8
			im.Burst = uint64(math.Round(float64(q.Rate) * float64(q.Buffer) / tick / 1e6))
		}
	}
	return im, ok
}
