package link

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmnet/vmnet/vmconfig"
	"github.com/vmnet/vmnet/vnethdr"
)

// The impairment stage sits between a pump's decisions and its writes,
// for a direction that has a vmconfig.Impairment (a direction without one
// keeps the plain path: Options.AtoB/BtoA nil means no stage at all).
//
// It works like netem: per frame, loss and duplication decide how many
// copies go on (netem's count), corruption flips one bit, and every copy
// gets a time to send: now, or for a rate the time the token bucket
// allows it, plus delay and jitter; a reordered frame goes now, ahead of
// the delayed ones. Frames due at once while nothing waits go straight
// into the pump's own batch (what netem's tfifo does with an empty queue
// and a zero delay: dequeue at once), so a "delay 0" stage costs a clock
// read and a few branches. The others are copied into buffers from the
// stage's pool and wait in a queue ordered by time to send (tfifo); a
// goroutine per stage writes them when they are due. The forwarding loop
// never sleeps.
//
// Super-frames (GSO) are impaired as a unit, as netem does with an skb
// that the stack has not segmented: one loss drops the whole super-frame,
// the rate charges its full length, one delay holds all of it. Segmenting
// first would cost the passthrough its speed and impair differently from
// a kernel link, which is what a lab models. The one exception is
// corruption, where netem segments to hit one segment: here a corrupted
// super-frame gets one bit flipped in its partial checksum, so the
// receiver's checksum check drops every segment of it (the unit is
// corrupted), where a flipped payload bit would have been covered by the
// checksum the device computes later and reached the application.

// impairLimit is how many bytes of frames a stage holds (netem's limit,
// in bytes because a super-frame is up to 64 KB): 20 ms of 10 Gbit/s.
const impairLimit = 24 << 20

// smallBuf is the pool's size class for frames of a standard MTU; longer
// ones (super-frames, jumbo) take a full MaxFrame buffer.
const smallBuf = Headroom + 2048 + Tailroom

// ImpairStats count what the impairment stage of a direction did.
type ImpairStats struct {
	Lost       uint64 `json:"lost"`       // dropped by loss
	Duplicated uint64 `json:"duplicated"` // extra copies sent
	Corrupted  uint64 `json:"corrupted"`  // frames with a bit flipped
	Reordered  uint64 `json:"reordered"`  // frames sent ahead of delayed ones
	Delayed    uint64 `json:"delayed"`    // frames that waited in the queue
	Overflow   uint64 `json:"overflow"`   // dropped: the queue held its limit
}

// impairCounters are a direction's counters and its shared state: the
// rate is the direction's, not a queue's, so every pump of the direction
// draws from one bucket.
type impairCounters struct {
	lost, dup, corrupt, reorder, delayed, overflow atomic.Uint64

	rateMu sync.Mutex
	tat    int64 // rate: theoretical arrival time (GCRA), on the direction's clock
}

func (c *impairCounters) load() *ImpairStats {
	return &ImpairStats{Lost: c.lost.Load(), Duplicated: c.dup.Load(), Corrupted: c.corrupt.Load(),
		Reordered: c.reorder.Load(), Delayed: c.delayed.Load(), Overflow: c.overflow.Load()}
}

// slot is a frame waiting in the queue.
type slot struct {
	due int64 // nanoseconds on the stage's clock
	seq uint64
	buf []byte // pool buffer; the frame is buf[:n]
	n   int
}

// stage is one pump's impairment stage.
type stage struct {
	im  vmconfig.Impairment
	rng *rand.Rand
	// clock returns monotonic nanoseconds; a fake in unit tests.
	clock func() int64
	c     *impairCounters

	lossLast float64 // netem's correlation state for loss
	timed    bool    // delay, jitter or rate: frames may have to wait
	// nop: every parameter is zero ("delay 0"); the stage exists (its
	// counters and status show it) but frames take the plain path.
	nop bool
	// next is an impairment set at run time (Link.SetImpairment), taken
	// over by the pump at its next batch: im, timed and nop belong to
	// the pump's goroutine.
	next atomic.Pointer[vmconfig.Impairment]

	mu    sync.Mutex
	heap  []slot // ordered by (due, seq)
	seq   uint64
	bytes int // bytes held in the queue and in flight
	// pending counts frames queued or being written; the pump reads it
	// without the lock to tell whether a frame due now may go ahead.
	pending atomic.Int64
	small   [][]byte // free pool buffers
	large   [][]byte
	wake    chan struct{}
	rel     [][]byte // the writer's batch
	relBufs [][]byte
	// off is where queued frames start in their buffers: Headroom less
	// the destination's vnet header size when the stage was made.
	off int
}

func newStage(im vmconfig.Impairment, off int, c *impairCounters, clock func() int64, seed uint64) *stage {
	s := &stage{off: off, c: c, clock: clock, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		heap: make([]slot, 0, 1024), wake: make(chan struct{}, 1),
		rel: make([][]byte, 0, maxBatch), relBufs: make([][]byte, 0, maxBatch)}
	s.use(im)
	return s
}

func (s *stage) use(im vmconfig.Impairment) {
	s.im, s.nop, s.timed = im, im.IsZero(), im.Delay != 0 || im.Jitter != 0 || im.Rate != 0
}

// refresh takes over an impairment set at run time; the pump calls it
// once per batch (a plain load when nothing changed).
func (s *stage) refresh() {
	if s.next.Load() != nil {
		if im := s.next.Swap(nil); im != nil {
			s.use(*im)
		}
	}
}

// monoClock is a direction's real clock: nanoseconds since a fixed
// start, monotonic; the pumps of a direction share one (their rate
// bucket is on it).
func monoClock() func() int64 {
	start := time.Now()
	return func() int64 { return int64(time.Since(start)) }
}

// chance rolls a percentage.
func (s *stage) chance(pct float64) bool {
	return pct != 0 && s.rng.Float64()*100 < pct
}

// copies is how many copies of a frame go on: 0 (lost), 1, or 2
// (duplicated), decided as netem does (a duplicate and a loss cancel).
func (s *stage) copies() int {
	n := 1
	if s.chance(s.im.Duplicate) {
		n++
	}
	if s.im.Loss != 0 {
		v := s.rng.Float64()
		if rho := s.im.LossCorrelation / 100; rho != 0 {
			v = v*(1-rho) + s.lossLast*rho
			s.lossLast = v
		}
		if v*100 < s.im.Loss {
			n--
		}
	}
	switch n {
	case 0:
		s.c.lost.Add(1)
	case 2:
		s.c.dup.Add(1)
	}
	return n
}

// due is when a frame of flen bytes may go, read at now.
func (s *stage) due(flen int, now int64) (int64, bool) {
	t := now
	if s.im.Rate != 0 {
		// GCRA: the bucket holds Burst bytes (one frame by default) and
		// fills at Rate; a frame waits until the bucket has its length.
		cost := int64(flen) * 8 * int64(time.Second) / int64(s.im.Rate)
		burst := int64(s.im.Burst)
		if burst == 0 {
			burst = int64(flen)
		}
		tol := burst * 8 * int64(time.Second) / int64(s.im.Rate)
		s.c.rateMu.Lock()
		tat := max(s.c.tat, now)
		t = max(now, tat+cost-tol)
		s.c.tat = tat + cost
		s.c.rateMu.Unlock()
	}
	if s.im.Reorder != 0 && s.chance(s.im.Reorder) {
		s.c.reorder.Add(1)
		return t, true
	}
	d := int64(s.im.Delay)
	if j := int64(s.im.Jitter); j != 0 {
		d += s.rng.Int64N(2*j+1) - j
	}
	return t + max(d, 0), false
}

// corrupt flips one random bit of the frame as netem does, after
// completing a partial checksum (netem's skb_checksum_help) so the
// receiver can tell; for a super-frame, see the comment at the top.
func (s *stage) corrupt(frame []byte, hd *vnethdr.Hdr) {
	s.c.corrupt.Add(1)
	if hd.Flags&vnethdr.FlagNeedsCsum != 0 {
		if hd.GSOType == vnethdr.GSONone && vnethdr.CompleteChecksum(*hd, frame) == nil {
			hd.Flags &^= vnethdr.FlagNeedsCsum
		} else if o := int(hd.CsumStart) + int(hd.CsumOffset); o+2 <= len(frame) {
			v := binary.BigEndian.Uint16(frame[o:])
			binary.BigEndian.PutUint16(frame[o:], v^(1<<s.rng.IntN(16)))
			return
		}
	}
	if len(frame) > 14 {
		// Past the Ethernet header: netem's byte may hit the MAC
		// header too, but a flipped address only misdelivers, which a
		// lab user would not recognise as corruption.
		i := 14 + s.rng.IntN(len(frame)-14)
		frame[i] ^= 1 << s.rng.IntN(8)
	}
}

// idle reports whether nothing waits or is being written: a frame due
// now may then go ahead in the pump's batch without passing anyone. Only
// the pump adds frames, so a true answer stays true until it does.
func (s *stage) idle() bool { return s.pending.Load() == 0 }

// enqueue copies b (a whole frame buffer, header already encoded) into a
// pool buffer and queues it for due. It reports false when the queue is
// full (the frame is dropped and counted).
func (s *stage) enqueue(b []byte, due int64) bool {
	s.mu.Lock()
	if s.bytes+len(b) > impairLimit {
		s.mu.Unlock()
		s.c.overflow.Add(1)
		return false
	}
	var buf []byte
	pool := &s.small
	if len(b) > smallBuf {
		pool = &s.large
	}
	if n := len(*pool); n > 0 {
		buf = (*pool)[n-1]
		*pool = (*pool)[:n-1]
	}
	s.bytes += len(b)
	s.mu.Unlock()
	if buf == nil {
		// The pool grows to what the delay and rate keep in flight, then
		// stays: a delayed frame in steady state costs no allocation.
		size := smallBuf
		if len(b) > smallBuf {
			size = Headroom + MaxFrame + Tailroom
		}
		buf = make([]byte, size)
	}
	n := copy(buf, b)
	s.c.delayed.Add(1)
	s.mu.Lock()
	s.seq++
	s.pending.Add(1)
	s.push(slot{due: due, seq: s.seq, buf: buf, n: n})
	first := s.heap[0].seq == s.seq
	s.mu.Unlock()
	if first {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
	return true
}

func (a slot) before(b slot) bool { return a.due < b.due || (a.due == b.due && a.seq < b.seq) }

func (s *stage) push(e slot) {
	s.heap = append(s.heap, e)
	h := s.heap
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !h[i].before(h[p]) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
}

func (s *stage) pop() slot {
	h := s.heap
	e := h[0]
	n := len(h) - 1
	h[0] = h[n]
	h[n] = slot{}
	h = h[:n]
	i := 0
	for {
		l, m := 2*i+1, i
		if l < n && h[l].before(h[m]) {
			m = l
		}
		if r := l + 1; r < n && h[r].before(h[m]) {
			m = r
		}
		if m == i {
			break
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
	s.heap = h
	return e
}

// take moves the frames due at now (at most a batch) to s.rel and
// returns when the next one is due (-1: none waits).
func (s *stage) take(now int64) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.heap) > 0 && s.heap[0].due <= now && len(s.rel) < cap(s.rel) {
		e := s.pop()
		s.rel = append(s.rel, e.buf[:e.n])
		s.relBufs = append(s.relBufs, e.buf)
	}
	if len(s.heap) == 0 {
		return -1
	}
	return s.heap[0].due
}

// done gives the written batch's buffers back to the pool.
func (s *stage) done() {
	s.mu.Lock()
	for i, b := range s.relBufs {
		s.bytes -= len(s.rel[i])
		if cap(b) > smallBuf {
			s.large = append(s.large, b)
		} else {
			s.small = append(s.small, b)
		}
	}
	s.pending.Add(-int64(len(s.relBufs)))
	s.mu.Unlock()
	clear(s.rel)
	clear(s.relBufs)
	s.rel, s.relBufs = s.rel[:0], s.relBufs[:0]
}

// run writes queued frames when they are due until ctx is done (it then
// returns nil) or the destination is gone (returned).
func (s *stage) run(ctx context.Context, p *pump) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var local DirStats
	off := s.off
	for {
		next := s.take(s.clock())
		if len(s.rel) > 0 {
			out := s.rel
			for len(out) > 0 {
				n, err := p.dq.write(out, off)
				for _, b := range out[:n] {
					local.TxFrames++
					local.TxBytes += uint64(len(b) - Headroom)
				}
				out = out[n:]
				if err == nil {
					break
				}
				if fatal(err) {
					s.done()
					p.c.add(&local)
					if ctx.Err() != nil {
						return nil
					}
					return err
				}
				local.Drops.Write++
				if len(out) > 0 {
					out = out[1:]
				}
			}
			s.done()
			p.c.add(&local)
			continue
		}
		if next >= 0 {
			timer.Reset(time.Duration(next - s.clock()))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.wake:
		case <-timer.C:
		}
	}
}

// impair passes one frame through the stage: emit's path when the
// direction has impairments.
func (p *pump) impair(buf []byte, flen int, hd vnethdr.Hdr) {
	s := p.st
	n := s.copies()
	for k := 0; k < n; k++ {
		if s.chance(s.im.Corrupt) {
			s.corrupt(buf[Headroom:Headroom+flen], &hd)
		}
		var now int64
		if s.timed {
			// Without delay, jitter or rate every frame is due at once
			// and the clock need not be read.
			now = s.clock()
		}
		due, ahead := s.due(flen, now)
		if due <= now && (ahead || s.idle()) {
			p.emitNow(buf, flen, hd)
			continue
		}
		h := p.dstHdr.Size
		if Headroom-h != s.off {
			// The destination's vnet header size changed under the
			// link; the writer writes at the old offset.
			p.local.Drops.VnetHdrSize++
			continue
		}
		if h > 0 {
			hd.NumBuffers = 0
			p.dstHdr.Encode(buf[Headroom-h:], hd)
		}
		if p.l.capture != nil {
			p.l.capture.write(p.cs, hd, buf[Headroom:Headroom+flen])
		}
		s.enqueue(buf[:Headroom+flen], due)
	}
}
