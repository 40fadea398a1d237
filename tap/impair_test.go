package tap

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/netns"
)

// tcQdiscs is `tc -j qdisc show dev NAME`: what the kernel reports,
// read by iproute2 rather than by the code under test. Delays are in
// seconds, shares as fractions, tbf's rate in bytes per second.
type tcQdisc struct {
	Kind    string `json:"kind"`
	Handle  string `json:"handle"`
	Parent  string `json:"parent"`
	Root    bool   `json:"root"`
	Options struct {
		Limit int `json:"limit"`
		Delay *struct {
			Delay, Jitter float64
		} `json:"delay"`
		Loss *struct {
			Loss, Correlation float64
		} `json:"loss-random"`
		Duplicate *struct{ Duplicate float64 } `json:"duplicate"`
		Reorder   *struct{ Reorder float64 }   `json:"reorder"`
		Corrupt   *struct{ Corrupt float64 }   `json:"corrupt"`
		Rate      float64                      `json:"rate"`
		Burst     float64                      `json:"burst"`
	} `json:"options"`
}

func tcQdiscs(t *testing.T, name string) []tcQdisc {
	t.Helper()
	out := run(t, "tc", "-j", "qdisc", "show", "dev", name)
	var qs []tcQdisc
	if err := json.Unmarshal([]byte(out), &qs); err != nil {
		t.Fatalf("tc -j qdisc show dev %s: %v\n%s", name, err, out)
	}
	return qs
}

func near(got, want float64) bool { return math.Abs(got-want) <= 1e-6+want*1e-3 }

// kernelLacks reports whether err is how the kernel refuses a qdisc kind
// it does not have.
func kernelLacks(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP)
}

// needTbf fails (CI) or skips a test whose tap could not get its tbf
// qdisc because the kernel lacks it: the host and the exec image have
// tbf, but a guest booted with fewer modules (an older vmnet's exec) does
// not.
func needTbf(t testing.TB, err error) {
	t.Helper()
	var m *MissingQdiscError
	if errors.As(err, &m) && m.Kind == "tbf" {
		testenv.Missing(t, "needs the tbf qdisc (CONFIG_NET_SCH_TBF, module sch_tbf), which this kernel lacks: %v", err)
	}
}

// createImpaired is mustCreate for a tap with a rate (tbf).
func createImpaired(t testing.TB, cfg Config) *Tap {
	t.Helper()
	tp, err := Create(cfg)
	needTbf(t, err)
	if err != nil {
		t.Fatalf("Create(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { tp.Close() })
	return tp
}

// TestImpairmentWithoutNetem: on a kernel without netem, creating a tap
// with a delay fails with an error that names the tap, the kernel
// option and the module, and leaves no interface behind; a rate alone
// (tbf) still works, and a zero impairment puts noqueue back.
func TestImpairmentWithoutNetem(t *testing.T) {
	t.Parallel()
	testenv.RequireProgram(t, "tc")
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		cfg := NewConfig("imp0", 2)
		cfg.Up = true
		cfg.Impairment = Impairment{Delay: 20 * time.Millisecond, Rate: 10e6}
		tp, err := Create(cfg)
		needTbf(t, err)
		if err == nil {
			tp.Close()
			t.Skip("this kernel has netem: the refusal is tested on kernels without it (the host's); TestImpairment runs here")
		}
		for _, want := range []string{"tap imp0", "netem", "CONFIG_NET_SCH_NETEM", "modprobe sch_netem"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q: %v", want, err)
			}
		}
		if !kernelLacks(err) {
			t.Errorf("error does not carry the kernel's errno: %v", err)
		}
		if err := noLinksBut(t, "lo"); err != nil {
			t.Errorf("after the refusal: %v", err)
		}

		// tbf alone: the host has it.
		cfg.Impairment = Impairment{Rate: 10e6, Burst: 4000}
		tp = createImpaired(t, cfg)
		qs := tcQdiscs(t, "imp0")
		if len(qs) != 1 || qs[0].Kind != "tbf" || !qs[0].Root || qs[0].Options.Rate != 10e6/8 || math.Abs(qs[0].Options.Burst-4000) > 2 {
			t.Errorf("rate 10mbit burst 4000: tc shows %+v", qs)
		}
		info, err := tp.Describe()
		if err != nil {
			return err
		}
		if info.Impairment == nil || info.Impairment.Rate != 10e6 || info.Impairment.Burst != 4000 || info.Qdisc != "tbf" {
			t.Errorf("Describe reads back %+v (%s)", info.Impairment, info.Qdisc)
		}
		// Adding a delay at run time fails on this kernel and keeps what ran.
		err = tp.SetImpairment(Impairment{Delay: time.Millisecond})
		if err == nil || !strings.Contains(err.Error(), "CONFIG_NET_SCH_NETEM") {
			t.Errorf("SetImpairment with a delay: %v", err)
		}
		if qs := tcQdiscs(t, "imp0"); len(qs) != 1 || qs[0].Kind != "tbf" {
			t.Errorf("after the refused change tc shows %+v", qs)
		}
		if err := tp.SetImpairment(Impairment{}); err != nil {
			return err
		}
		if qs := tcQdiscs(t, "imp0"); len(qs) != 1 || qs[0].Kind != "noqueue" {
			t.Errorf("after clearing, tc shows %+v, want noqueue", qs)
		}
		return nil
	})
}

// TestImpairment: netem and tbf carry the parameters as tc reads them
// back, and the kernel applies them to frames going out of the tap to
// its reader: delay on both taps of a bridge makes a round trip of at
// least both delays, loss and duplicate change what arrives, and the
// rate bounds how fast frames leave. Needs netem; the host lacks it, so
// TestGuestOnly runs this in a guest. The measurements are parallel
// subtests, each on a bridge of its own: most of their time is waiting.
func TestImpairment(t *testing.T) {
	t.Parallel()
	testenv.RequireProgram(t, "tc")
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		im := Impairment{Delay: 20 * time.Millisecond, Jitter: 2 * time.Millisecond, Loss: 5, LossCorrelation: 25, Duplicate: 1,
			Reorder: 10, Corrupt: 0.1, Rate: 100e6, Burst: 32 << 10}
		cfg := NewConfig("impa", 1)
		cfg.Up, cfg.Impairment = true, im
		a, err := Create(cfg)
		needTbf(t, err)
		if kernelLacks(err) {
			t.Skipf("needs the netem qdisc (CONFIG_NET_SCH_NETEM), which this kernel lacks (%v); runs inside a guest (TestGuestOnly)", err)
		}
		if err != nil {
			return err
		}
		t.Cleanup(func() { a.Close() })
		qs := tcQdiscs(t, "impa")
		if len(qs) != 2 {
			t.Fatalf("tc shows %+v, want netem with tbf under it", qs)
		}
		n, b := qs[0], qs[1]
		o := n.Options
		if n.Kind != "netem" || !n.Root || n.Handle != "1:" || o.Limit != netemLimit || o.Delay == nil || !near(o.Delay.Delay, 0.020) ||
			!near(o.Delay.Jitter, 0.002) || o.Loss == nil || !near(o.Loss.Loss, 0.05) || !near(o.Loss.Correlation, 0.25) ||
			o.Duplicate == nil || !near(o.Duplicate.Duplicate, 0.01) || o.Reorder == nil || !near(o.Reorder.Reorder, 0.10) ||
			o.Corrupt == nil || !near(o.Corrupt.Corrupt, 0.001) {
			t.Errorf("netem as tc reads it: %+v", n)
		}
		// tc prints the burst the bucket's time holds in whole
		// microseconds: up to a microsecond's bytes (12.5) below.
		if b.Kind != "tbf" || b.Parent != "1:1" || b.Options.Rate != 100e6/8 || math.Abs(b.Options.Burst-32<<10) > 100e6/8/1e6+1 {
			t.Errorf("tbf as tc reads it: %+v", b)
		}
		info, err := a.Describe()
		if err != nil {
			return err
		}
		got := *info.Impairment
		got.Burst = im.Burst // read back with the kernel's granularity, checked with tc above
		if got != im {
			t.Errorf("Describe reads back %+v, want %+v", got, im)
		}
		if err := a.SetImpairment(Impairment{Delay: 20 * time.Millisecond}); err != nil {
			return err
		}
		if qs := tcQdiscs(t, "impa"); len(qs) != 1 || qs[0].Kind != "netem" {
			t.Errorf("a delay alone: tc shows %+v, want netem without tbf", qs)
		}
		return nil
	})

	// Delay, measured: 20 ms on each tap of a bridge, a frame and its
	// answer cross both.
	t.Run("delay", func(t *testing.T) {
		t.Parallel()
		delay := Impairment{Delay: 20 * time.Millisecond}
		ns, a, bt := bridgedPair(t, delay, delay)
		testenv.Do(t, ns, func() error {
			qa, qb := a.Queues()[0], bt.Queues()[0]
			var rtts []time.Duration
			for i := range 3 {
				id := uint32(100 + i)
				start := time.Now()
				if _, err := qa.Write(markedFrame(id, 100)); err != nil {
					return err
				}
				if _, err := readMatch(qb, arrive, isID(id)); err != nil {
					return err
				}
				back := markedFrame(id+1000, 100)
				copy(back[0:], srcMAC) // to the address impa's side sent from
				copy(back[6:], dstMAC)
				if _, err := qb.Write(back); err != nil {
					return err
				}
				if _, err := readMatch(qa, arrive, isID(id+1000)); err != nil {
					return err
				}
				rtts = append(rtts, time.Since(start))
			}
			slices.Sort(rtts)
			t.Logf("round trips through netem delay 20ms on both taps: %v", rtts)
			if rtts[0] < 40*time.Millisecond {
				t.Errorf("round trip %v is shorter than the two 20 ms delays", rtts[0])
			}
			return nil
		})
	})

	// Loss and duplicate, counted over 400 frames (bounds ±6 sd), each
	// set at run time over the impairment the tap had before.
	for _, c := range []struct {
		name       string
		before, im Impairment
		min, max   int
	}{
		{"loss", Impairment{Delay: 20 * time.Millisecond}, Impairment{Loss: 50}, 140, 260},
		{"duplicate", Impairment{Loss: 50}, Impairment{Duplicate: 50}, 540, 660},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ns, a, bt := bridgedPair(t, Impairment{}, c.before)
			testenv.Do(t, ns, func() error {
				if err := bt.SetImpairment(c.im); err != nil {
					return err
				}
				got := sendCount(t, a.Queues()[0], bt.Queues()[0], 400)
				t.Logf("%+v: 400 frames sent, %d arrived", c.im, got)
				if got < c.min || got > c.max {
					t.Errorf("%+v: %d of 400 frames arrived, want %d to %d", c.im, got, c.min, c.max)
				}
				return nil
			})
		})
	}

	// netem with tbf under it: the rate still holds.
	t.Run("rate", func(t *testing.T) {
		t.Parallel()
		ns, a, bt := bridgedPair(t, Impairment{}, Impairment{Duplicate: 50})
		testenv.Do(t, ns, func() error {
			if err := bt.SetImpairment(Impairment{Delay: 5 * time.Millisecond, Rate: 10e6}); err != nil {
				return err
			}
			if qs := tcQdiscs(t, "impb"); len(qs) != 2 || qs[0].Kind != "netem" || qs[1].Kind != "tbf" {
				t.Errorf("delay 5ms rate 10mbit: tc shows %+v", qs)
			}
			checkRate(t, a.Queues()[0], bt.Queues()[0], "delay 5ms rate 10mbit")
			if err := bt.SetImpairment(Impairment{}); err != nil {
				return err
			}
			if qs := tcQdiscs(t, "impb"); len(qs) != 1 || qs[0].Kind != "noqueue" {
				t.Errorf("after clearing: %+v, want noqueue", qs)
			}
			return nil
		})
	})
}

// bridgedPair makes taps impa and impb, up, with the given impairments,
// on a bridge in a new namespace, which it returns.
func bridgedPair(t *testing.T, ia, ib Impairment) (netns.Handle, *Tap, *Tap) {
	t.Helper()
	ns := newNS(t)
	var a, b *Tap
	testenv.Do(t, ns, func() error {
		cfg := NewConfig("impa", 1)
		cfg.Up, cfg.Impairment = true, ia
		a = createImpaired(t, cfg)
		cfg.Name, cfg.Impairment = "impb", ib
		b = createImpaired(t, cfg)
		if err := bridgeTaps(a, b); err != nil {
			return err
		}
		time.Sleep(50 * time.Millisecond) // carrier
		return nil
	})
	return ns, a, b
}

// TestImpairmentRate: tbf on a tap lets frames out to its reader no
// faster than the rate (the bound a shaper cannot beat, whatever the
// load), and none are lost while its queue holds them. tbf is on the
// host too, so this runs everywhere.
func TestImpairmentRate(t *testing.T) {
	t.Parallel()
	testenv.RequireProgram(t, "tc")
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		a := mustCreate(t, Config{Name: "ra", Queues: 1, Owner: -1, Group: -1, Up: true})
		cfg := NewConfig("rb", 1)
		cfg.Up, cfg.Impairment = true, Impairment{Rate: 10e6}
		b := createImpaired(t, cfg)
		if err := bridgeTaps(a, b); err != nil {
			return err
		}
		time.Sleep(50 * time.Millisecond)
		checkRate(t, a.Queues()[0], b.Queues()[0], "rate 10mbit")
		return nil
	})
}

// checkRate sends 40 frames of 1000 bytes (40 kB: inside tbf's queue of
// 100 ms at the rate plus the burst, 31 ms at 10 Mbit/s) from one tap to
// the other, whose tbf has 10mbit with the default burst, and checks
// that all arrive, no faster than the rate lets them (the bucket holds
// one frame, so all but the first wait for tokens). On a kernel without
// high-resolution timers (exec guests) tbf lets out about one frame per
// tick, 4 ms: 100 frames took 0.4 s there.
func checkRate(t *testing.T, qa, qb *Queue, what string) {
	t.Helper()
	const frames, size = 40, 1000
	// From the first write, not the first read: a reader that starts
	// late would see frames the bucket let out while it was away.
	start := time.Now()
	for i := range frames {
		if _, err := qa.Write(markedFrame(uint32(i), size)); err != nil {
			t.Fatal(err)
		}
	}
	var last time.Time
	n := 0
	_, err := readMatch(qb, arrive, func(f []byte) bool {
		if !isMarked(f) {
			return false
		}
		n++
		last = time.Now()
		return n == frames
	})
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal(err)
	}
	if n != frames {
		t.Fatalf("%s: %d of %d frames arrived", what, n, frames)
	}
	// All but the one-frame bucket wait for tokens at 1.25 MB/s: the
	// last frame cannot arrive before that, whatever the load.
	took := last.Sub(start)
	want := time.Duration(float64(frames*size-(1500+14)) / (10e6 / 8) * float64(time.Second))
	t.Logf("%s: %d frames of %d bytes in %v (%.1f Mbit/s)", what, frames, size, took, float64(frames*size*8)/took.Seconds()/1e6)
	if took < want*95/100 {
		t.Errorf("%s: frames left in %v, faster than 10 Mbit/s allows (%v)", what, took, want)
	}
}

func isID(id uint32) func([]byte) bool {
	return func(f []byte) bool {
		return isMarked(f) && uint32(f[14])<<24|uint32(f[15])<<16|uint32(f[16])<<8|uint32(f[17]) == id
	}
}

// sendCount writes n marked frames on from and counts the marked frames
// that reach to. It then writes end frames one by one until one arrives:
// netem without delay or reordering lets frames out in the order they
// came, so when one arrives, every earlier frame that got through is in.
// The calling thread (locked) stays on one CPU meanwhile, so its frames
// go through one CPU's backlog and keep their order there too.
func sendCount(t *testing.T, from, to *Queue, n int) int {
	t.Helper()
	const endID = 1 << 31
	got := 0
	count := func(f []byte) bool {
		if !isMarked(f) {
			return false
		}
		if binary.BigEndian.Uint32(f[14:]) >= endID {
			return true
		}
		got++
		return false
	}
	onOneCPU(t, func() {
		for i := range n {
			if _, err := from.Write(markedFrame(uint32(i), 100)); err != nil {
				t.Fatal(err)
			}
			if i%50 == 49 {
				time.Sleep(5 * time.Millisecond) // stay below the reader's queue length
			}
		}
		deadline := time.Now().Add(10 * time.Second)
		for id := uint32(endID); ; id++ {
			if _, err := from.Write(markedFrame(id, 100)); err != nil {
				t.Fatal(err)
			}
			_, err := readMatch(to, 20*time.Millisecond, count)
			if err == nil {
				return
			}
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal(err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("none of %d end frames arrived (%d of %d frames before them did)", id-endID+1, got, n)
			}
		}
	})
	return got
}

// onOneCPU runs fn with the calling thread, which must be locked to its
// goroutine, bound to one of the CPUs it may run on, and then lets it
// run on all of them again.
func onOneCPU(t *testing.T, fn func()) {
	t.Helper()
	var all, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		t.Fatalf("sched_getaffinity: %v", err)
	}
	for c := 0; c < len(all)*64; c++ {
		if all.IsSet(c) {
			one.Set(c)
			break
		}
	}
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatalf("sched_setaffinity: %v", err)
	}
	defer func() {
		if err := unix.SchedSetaffinity(0, &all); err != nil {
			t.Errorf("sched_setaffinity back: %v", err)
		}
	}()
	fn()
}

// TestReadImpairment: the read-back of netem and tbf from netlink
// messages, including a tbf at the root and one under netem.
func TestReadImpairment(t *testing.T) {
	t.Parallel()
	tick := netlink.TickInUsec()
	if tick == 0 {
		t.Skip("prerequisite missing: /proc/net/psched")
	}
	nq := netlink.NewNetem(netlink.QdiscAttrs{Parent: netlink.HANDLE_ROOT}, netlink.NetemQdiscAttrs{Latency: 20000, Jitter: 500, Loss: 12.5})
	tb := newTbf(100e6, 1514)
	tb.QdiscAttrs = netlink.QdiscAttrs{Parent: netlink.MakeHandle(1, 1)}
	im, ok := readImpairment([]netlink.Qdisc{nq, tb})
	if !ok || im.Delay != 20*time.Millisecond || im.Jitter != 500*time.Microsecond || im.Loss != 12.5 || im.Rate != 100e6 || im.Burst != 1514 {
		t.Errorf("netem + tbf: %+v %v", im, ok)
	}
	if _, ok := readImpairment([]netlink.Qdisc{&netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{Parent: netlink.HANDLE_ROOT}, QdiscType: "noqueue"}}); ok {
		t.Error("noqueue read as an impairment")
	}
	for _, bad := range []Impairment{{Loss: 101}, {Burst: 10}, {Delay: -1}, {Delay: 2 * time.Minute}, {Rate: 1}} {
		if err := bad.check(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// TestImpairmentClearKeepsDefaultQdisc: clearing the impairment of a tap
// made with the kernel's default qdisc gives that default back, not
// noqueue.
func TestImpairmentClearKeepsDefaultQdisc(t *testing.T) {
	t.Parallel()
	testenv.RequireProgram(t, "tc")
	dq := kernelDefaultQdisc(t)
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		cfg := NewConfig("dq0", 1)
		cfg.Up, cfg.Qdisc, cfg.Impairment = true, QdiscDefault, Impairment{Rate: 1e9}
		tp := createImpaired(t, cfg)
		if qs := tcQdiscs(t, "dq0"); len(qs) != 1 || qs[0].Kind != "tbf" {
			t.Errorf("rate 1gbit: tc shows %+v", qs)
		}
		if err := tp.SetImpairment(Impairment{}); err != nil {
			return err
		}
		if qs := tcQdiscs(t, "dq0"); len(qs) != 1 || qs[0].Kind != dq || !qs[0].Root {
			t.Errorf("after clearing: tc shows %+v, want the kernel's default %s", qs, dq)
		}
		return nil
	})
}
