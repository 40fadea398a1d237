package link

import (
	"encoding/binary"
	"math"
	"testing"
	"time"

	"github.com/vmnet/vmnet/vmconfig"
	"github.com/vmnet/vmnet/vnethdr"
)

// fakeClock is a settable stage clock.
type fakeClock struct{ now int64 }

func (c *fakeClock) read() int64 { return c.now }

// stagedPump is a memPump whose direction has impairment im, on a fake
// clock; frames are 1000-byte Ethernet frames that carry a sequence
// number.
func stagedPump(im vmconfig.Impairment) (*pump, *memQueue, *fakeClock) {
	src, _ := memEndpoint("tap", 10, 1500, true)
	dst, q := memEndpoint("tap", 10, 1500, true)
	p := memPump(src, dst, "")
	clk := &fakeClock{}
	p.l.ab.imp = new(impairCounters)
	p.st = newStage(im, Headroom-dst.hdr.Size, p.l.ab.imp, clk.read, 1)
	return p, q, clk
}

func seqFrame(p *pump, i int) int {
	f := make([]byte, 1000)
	copy(f, []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x88, 0xb5})
	binary.BigEndian.PutUint32(f[14:], uint32(i))
	return load(p, vnethdr.Hdr{}, f)
}

// release writes what is due at the clock's time the way stage.run does
// and returns the sequence numbers written.
func release(p *pump, q *memQueue) []int {
	q.keep, q.last = true, q.last[:0]
	p.st.take(p.st.clock())
	if len(p.st.rel) > 0 {
		p.dq.write(p.st.rel, p.st.off)
		p.st.done()
	}
	var seqs []int
	for _, b := range q.last {
		seqs = append(seqs, int(binary.BigEndian.Uint32(b[p.dstHdr.Size+14:])))
	}
	return seqs
}

// TestImpairQueueOrder: with a delay and a jitter larger than the gap
// between frames, frames leave in the order of their times to send (the
// jitter reorders them, as netem's does), none before its time, all by
// delay+jitter after the last.
func TestImpairQueueOrder(t *testing.T) {
	im := vmconfig.Impairment{Delay: 10 * time.Millisecond, Jitter: 5 * time.Millisecond}
	p, q, clk := stagedPump(im)
	dues := map[int]int64{}
	const n = 500
	for i := range n {
		clk.now = int64(i) * int64(10*time.Microsecond)
		size := seqFrame(p, i)
		p.handleNow(p.rbufs[0], size)
		p.flush()
	}
	// The time to send of each frame, read back from the queue itself.
	for _, e := range p.st.heap {
		dues[int(binary.BigEndian.Uint32(e.buf[Headroom+14:]))] = e.due
	}
	if q.frames != 0 {
		t.Fatalf("%d frames written before their time", q.frames)
	}
	var got []int
	last := int64(-1)
	reordered := 0
	for clk.now = 0; clk.now <= int64(n)*int64(10*time.Microsecond)+int64(im.Delay+im.Jitter); clk.now += int64(100 * time.Microsecond) {
		for _, s := range release(p, q) {
			d := dues[s]
			if d > clk.now {
				t.Fatalf("frame %d due at %v released at %v", s, time.Duration(d), time.Duration(clk.now))
			}
			if d < clk.now-int64(100*time.Microsecond) {
				t.Fatalf("frame %d due at %v released late at %v", s, time.Duration(d), time.Duration(clk.now))
			}
			if d < last {
				t.Fatalf("frame %d (due %v) after one due at %v", s, time.Duration(d), time.Duration(last))
			}
			if len(got) > 0 && s < got[len(got)-1] {
				reordered++
			}
			last = d
			got = append(got, s)
		}
	}
	if len(got) != n {
		t.Fatalf("released %d of %d frames", len(got), n)
	}
	if reordered == 0 {
		t.Error("a 5 ms jitter on frames 10 µs apart reordered nothing")
	}
	if len(p.st.heap) != 0 || p.st.bytes != 0 {
		t.Errorf("queue not empty: %d frames, %d bytes", len(p.st.heap), p.st.bytes)
	}
}

// TestImpairRate: at 8 Mbit/s (one byte per µs) with the default burst
// of one frame, 1000-byte frames arriving together leave 1 ms apart.
func TestImpairRate(t *testing.T) {
	p, q, clk := stagedPump(vmconfig.Impairment{Rate: 8_000_000})
	for i := range 10 {
		p.handleNow(p.rbufs[0], seqFrame(p, i))
	}
	p.flush()
	if q.frames != 1 {
		t.Fatalf("%d frames went at once, want 1 (the burst)", q.frames)
	}
	for i := 1; i < 10; i++ {
		clk.now = int64(i)*int64(time.Millisecond) - 1
		if s := release(p, q); len(s) != 0 {
			t.Fatalf("frame %v left before %v", s, time.Duration(clk.now+1))
		}
		clk.now++
		if s := release(p, q); len(s) != 1 || s[0] != i {
			t.Fatalf("at %v released %v, want [%d]", time.Duration(clk.now), s, i)
		}
	}
}

// TestImpairDelayZero: a stage with nothing to do writes in the pump's
// own batch, queues nothing.
func TestImpairDelayZero(t *testing.T) {
	p, q, _ := stagedPump(vmconfig.Impairment{})
	for i := range 10 {
		p.handleNow(p.rbufs[0], seqFrame(p, i))
	}
	p.flush()
	if q.frames != 10 || p.l.ab.imp.delayed.Load() != 0 {
		t.Errorf("wrote %d of 10 at once, %d queued", q.frames, p.l.ab.imp.delayed.Load())
	}
}

// TestImpairChances: loss, duplication, reordering and corruption hit
// their share of frames (fixed seed: the counts are reproducible, the
// bounds are ±10% of the share), and a correlated loss comes in (slightly)
// longer runs than an uncorrelated one with the same share.
func TestImpairChances(t *testing.T) {
	const n = 100000
	near := func(what string, got uint64, pct float64) {
		t.Helper()
		want := pct / 100 * n
		if math.Abs(float64(got)-want) > want/10 {
			t.Errorf("%s: %d of %d, want about %.0f", what, got, n, want)
		}
	}
	p, _, _ := stagedPump(vmconfig.Impairment{Loss: 20, Duplicate: 5, Reorder: 10, Corrupt: 1, Delay: time.Millisecond})
	size := seqFrame(p, 0)
	for range n {
		p.handleNow(p.rbufs[0], size)
		p.flush()
		p.st.take(math.MaxInt64)
		p.st.done()
	}
	c := p.l.ab.imp
	// A duplicate and a loss cancel (netem's count): losses are 20% of
	// the 95% not duplicated, duplicates 5% of the 80% not lost.
	near("lost", c.lost.Load(), 20*0.95)
	near("duplicated", c.dup.Load(), 5*0.8)
	sent := float64(n) * (1 - 0.19 + 0.04)
	near("reordered", c.reorder.Load(), 10*sent/n)
	near("corrupted", c.corrupt.Load(), 1*sent/n)

	runs := func(corr float64) float64 {
		s := newStage(vmconfig.Impairment{Loss: 20, LossCorrelation: corr}, 0, new(impairCounters), func() int64 { return 0 }, 7)
		lost, starts, prev := 0, 0, false
		for range n {
			l := s.copies() == 0
			if l {
				lost++
				if !prev {
					starts++
				}
			}
			prev = l
		}
		return float64(lost) / float64(starts)
	}
	// netem's correlation (an average with the previous draw) changes
	// runs only slightly: 1.28 against 1.25 frames here; that is what
	// netem does too, so it is what the parameter means.
	if plain, corr := runs(0), runs(75); corr <= plain {
		t.Errorf("mean loss run %.2f with 75%% correlation, %.2f without", corr, plain)
	}
}

// TestImpairCorruptCaught: a corrupted frame fails its checksum, also
// one that came with a partial checksum.
func TestImpairCorruptCaught(t *testing.T) {
	hd, frame := tcpSuperFrame(t, 1000)
	hd.GSOType, hd.GSOSize = vnethdr.GSONone, 0
	s := newStage(vmconfig.Impairment{Corrupt: 100}, 0, new(impairCounters), func() int64 { return 0 }, 3)
	for i := range 50 {
		f := append([]byte(nil), frame...)
		h := hd
		s.corrupt(f, &h)
		if h.Flags&vnethdr.FlagNeedsCsum != 0 {
			t.Fatal("checksum left partial")
		}
		good := append([]byte(nil), frame...)
		if err := vnethdr.CompleteChecksum(hd, good); err != nil {
			t.Fatal(err)
		}
		diff := 0
		for j := range f {
			if f[j] != good[j] {
				diff++
			}
		}
		if diff != 1 {
			t.Fatalf("round %d: %d bytes differ from the completed frame, want 1", i, diff)
		}
	}
}

// TestImpairAllocs: a delayed frame, small or a super-frame, costs no
// allocation once the pool holds what is in flight.
func TestImpairAllocs(t *testing.T) {
	for _, payload := range []int{1000, 45 * 1448} {
		p, q, clk := stagedPump(vmconfig.Impairment{Delay: time.Millisecond, Jitter: 100 * time.Microsecond, Loss: 1, Duplicate: 1, Reorder: 1, Corrupt: 1})
		hdr, frame := tcpSuperFrame(t, payload)
		if payload < 1448 {
			hdr.GSOType, hdr.GSOSize = vnethdr.GSONone, 0
		}
		size := load(p, hdr, frame)
		round := func() {
			for range 8 {
				p.handleNow(p.rbufs[0], size)
			}
			p.flush()
			clk.now += int64(2 * time.Millisecond)
			p.st.take(clk.now)
			p.dq.write(p.st.rel, p.st.off)
			p.st.done()
		}
		round()
		round()
		if a := testing.AllocsPerRun(100, round); a != 0 {
			t.Errorf("payload %d: %.1f allocations per 8 delayed frames", payload, a)
		}
		if q.frames == 0 || p.l.ab.imp.delayed.Load() == 0 {
			t.Errorf("payload %d: wrote %d, delayed %d", payload, q.frames, p.l.ab.imp.delayed.Load())
		}
	}
}

// TestImpairRateShared: the pumps of a direction (one per queue) draw
// from one bucket: two stages on the same direction at 8 Mbit/s give
// 1000-byte frames, alternating between them, 1 ms apart in all.
func TestImpairRateShared(t *testing.T) {
	c := new(impairCounters)
	clk := &fakeClock{}
	s1 := newStage(vmconfig.Impairment{Rate: 8_000_000}, 0, c, clk.read, 1)
	s2 := newStage(vmconfig.Impairment{Rate: 8_000_000}, 0, c, clk.read, 2)
	for i := range 10 {
		s := s1
		if i%2 == 1 {
			s = s2
		}
		if due, _ := s.due(1000, 0); due != int64(i)*int64(time.Millisecond) {
			t.Fatalf("frame %d due at %v, want %v", i, time.Duration(due), time.Duration(i)*time.Millisecond)
		}
	}
}

// BenchmarkImpairDelayed is the cost of the queued path: a frame copied
// into the pool, ordered in the queue, released and written (to memory)
// a millisecond later on a fake clock (so no sleeping is measured), next
// to BenchmarkForward's plain path for the same frames.
func BenchmarkImpairDelayed(b *testing.B) {
	for _, bc := range []struct {
		name    string
		payload int
	}{{"small", 1000}, {"super", 45 * 1448}} {
		b.Run(bc.name, func(b *testing.B) {
			p, q, clk := stagedPump(vmconfig.Impairment{Delay: time.Millisecond})
			hdr, frame := tcpSuperFrame(b, bc.payload)
			if bc.payload <= 1448 {
				hdr.GSOType, hdr.GSOSize = vnethdr.GSONone, 0
			}
			size := load(p, hdr, frame)
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				p.handleNow(p.rbufs[0], size)
				p.flush()
				clk.now += int64(10 * time.Microsecond)
				if p.st.take(clk.now); len(p.st.rel) > 0 {
					p.dq.write(p.st.rel, p.st.off)
					p.st.done()
				}
			}
			b.StopTimer()
			if q.frames < b.N-200 {
				b.Fatalf("%d frames written for %d", q.frames, b.N)
			}
		})
	}
}
