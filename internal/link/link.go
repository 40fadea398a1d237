package link

import (
	"context"
	"errors"
	"fmt"
	"log"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/vmconfig"
	"github.com/vmnet/vmnet/vnethdr"
)

// Options tune a Link.
type Options struct {
	// PCAP, when set, is a file the link writes a pcap capture of both
	// directions to, with frames as they would appear on a wire:
	// super-frames segmented, checksums complete.
	PCAP string
	// Batch is the most frames read per call; 0 means 32.
	Batch int
	// AtoB and BtoA, when set, impair that direction (see impair.go);
	// nil keeps the direction's plain path. A set but zero Impairment
	// ("delay 0") runs the stage without effect.
	AtoB, BtoA *vmconfig.Impairment
	// NoGRO turns software GRO off: frames that arrive one by one are
	// written one by one even to a destination that takes super-frames.
	NoGRO bool
	// Datapath is DatapathAuto ("" too): the kernel forwards (kernel.go)
	// between two local interfaces while no capture and no impairment
	// needs userspace; or DatapathUserspace: every frame through vmnet.
	Datapath string
	// Logf, when set, receives the line a link logs when it cannot use
	// the kernel data path; nil: the standard logger.
	Logf func(format string, args ...any)
}

// Link joins two endpoints and forwards frames both ways.
type Link struct {
	a, b    *Endpoint
	batch   int
	noGRO   bool
	capture *capture
	ab, ba  counters
	imMu    sync.Mutex // guards imAB, imBA and stages
	imAB    *vmconfig.Impairment
	imBA    *vmconfig.Impairment
	stages  [2][]*stage // per direction (0: a to b), of the running pumps

	// kern is the kernel data path; nil for a link that cannot have
	// one (see kernelCapable) or runs in userspace by choice. poke asks
	// Run to look again (an impairment changed).
	kern *kernelPath
	poke chan struct{}
	logf func(format string, args ...any)

	running       atomic.Bool
	ran           atomic.Bool  // Run has returned
	pumps         atomic.Int32 // userspace pumps running (a switch to the kernel ends when they have drained)
	endedInKernel atomic.Bool  // Run returned while the kernel forwarded
	closeMu       sync.Mutex
	closed        bool

	// hooks are the tests' (nil outside tests).
	hooks atomic.Pointer[testHooks]
}

// testHooks let a test hold the pumps off their queues: beforeRead runs
// before each read of a pump, draining when a switch to the kernel has
// set the pumps' read deadline.
type testHooks struct {
	beforeRead func(src *Endpoint)
	draining   func(deadline time.Time)
}

// New makes a link between a and b. The Link owns both endpoints from then
// on (Close closes them), also when New fails.
func New(a, b *Endpoint, opts Options) (*Link, error) {
	l := &Link{a: a, b: b, batch: opts.Batch, noGRO: opts.NoGRO, imAB: opts.AtoB, imBA: opts.BtoA,
		poke: make(chan struct{}, 1), logf: opts.Logf}
	if l.logf == nil {
		l.logf = log.Printf
	}
	if opts.Datapath != "" && !slices.Contains(vmconfig.Datapaths, opts.Datapath) {
		a.Close()
		b.Close()
		return nil, fmt.Errorf("link %s <-> %s: unknown datapath %q: want %s", a, b, opts.Datapath, strings.Join(vmconfig.Datapaths, " or "))
	}
	if err := fitVXLANMTU(a, b, func(format string, args ...any) { l.logf("link %s: "+format, append([]any{l}, args...)...) }); err != nil {
		a.Close()
		b.Close()
		return nil, fmt.Errorf("link %s <-> %s: %w", a, b, err)
	}
	if opts.Datapath != DatapathUserspace && opts.PCAP == "" && kernelCapable(a, b) {
		k, err := newKernelPath(a, b, &l.ab, &l.ba)
		if err != nil {
			l.logf("link %s: forwarding in userspace: %v", l, err)
		} else {
			l.kern = k
		}
	}
	if l.imAB != nil || l.kern != nil {
		l.ab.imp = new(impairCounters)
	}
	if l.imBA != nil || l.kern != nil {
		l.ba.imp = new(impairCounters)
	}
	l.ab.queues = make([]atomic.Uint64, len(a.queues))
	l.ba.queues = make([]atomic.Uint64, len(b.queues))
	if l.batch <= 0 {
		l.batch = 32
	}
	l.batch = min(l.batch, maxBatch)
	if opts.PCAP != "" {
		c, err := newCapture(opts.PCAP)
		if err != nil {
			a.Close()
			b.Close()
			return nil, fmt.Errorf("link %s <-> %s: %w", a, b, err)
		}
		l.capture = c
	}
	return l, nil
}

// String names the link by its endpoints.
func (l *Link) String() string { return l.a.String() + " <-> " + l.b.String() }

// Close removes the kernel data path's redirects, closes both endpoints
// and finishes the capture file.
func (l *Link) Close() error {
	l.closeMu.Lock()
	defer l.closeMu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var errs []error
	if l.kern != nil {
		errs = append(errs, l.kern.close())
	}
	errs = append(errs, l.a.Close(), l.b.Close())
	if l.capture != nil {
		errs = append(errs, l.capture.close())
	}
	return errors.Join(errs...)
}

// drainTime is how long the userspace pumps go on waiting for frames,
// after the kernel's redirects are in place (a frame on its way to a
// queue in that moment); then each reads what its queue still holds
// without waiting, until it is empty (see sweeper).
const drainTime = 20 * time.Millisecond

// maxSweep bounds the frames a pump reads from its queue once its drain's
// deadline has passed: far above what a tap's ring or a socket's receive
// buffer holds, so it ends a sweep only if something still feeds the
// queue while the kernel forwards.
const maxSweep = 1 << 16

// Run forwards frames until ctx is done (it then returns nil) or an
// endpoint fails for good (a tap deleted, a socket closed), which stops
// both directions and is returned. A Link runs once.
//
// A link with a kernel data path switches between the two as its
// impairments change, in an order that never lets a frame cross twice:
// to the kernel, the redirects go in (AF_PACKET sockets muted first)
// while the pumps still run, and the pumps stop once they have read what
// their queues held; to userspace, the pumps start, then the redirects
// go and the sockets are unmuted. Only frames arriving at an AF_PACKET
// end in the moment between muting (unmuting) and the redirect going in
// (out) are lost.
func (l *Link) Run(ctx context.Context) error {
	if l.running.Swap(true) {
		return fmt.Errorf("link %s: Run called twice", l)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer l.ran.Store(true)
	defer func() {
		if l.kern != nil {
			l.endedInKernel.Store(l.inKernel())
			if err := l.kern.teardown(); err != nil {
				l.logf("link %s: %v", l, err)
			}
		}
	}()
	for {
		ph := l.startPumps(ctx)
		if l.inKernel() {
			// The pumps read now: take the redirects away.
			if err := l.kern.uninstall(); err != nil {
				l.logf("link %s: %v", l, err)
			}
		}
		toKernel, err := l.userspace(ctx, ph)
		if !toKernel {
			return err
		}
		if toUser, err := l.kernel(ctx); !toUser {
			return err
		}
	}
}

// phase is one run of the userspace pumps.
type phase struct {
	cancel      context.CancelFunc // the pumps'
	stageCancel context.CancelFunc // the impairment stages'
	pumps       sync.WaitGroup
	stages      sync.WaitGroup
	errOnce     sync.Once
	err         error
	failed      chan struct{}
	draining    atomic.Bool // the pumps empty their queues before they stop
}

// stop ends the phase. Without drain, reads and writes end at deadline
// (in the past: at once) and frames waiting in impairment stages are
// dropped. With drain, reads wait for frames until deadline, and then
// the pumps read what their queues still hold until they are empty,
// however late they come to it (a loaded machine); writes in flight
// finish, and frames waiting in the stages (delayed before the
// impairments were cleared) leave on time before the stages stop.
func (l *Link) stop(ph *phase, deadline time.Time, drain bool) {
	if drain {
		ph.draining.Store(true)
	}
	ph.cancel()
	if drain {
		l.a.setReadDeadline(deadline)
		l.b.setReadDeadline(deadline)
		if h := l.hooks.Load(); h != nil && h.draining != nil {
			h.draining(deadline)
		}
	} else {
		l.a.setDeadline(deadline)
		l.b.setDeadline(deadline)
	}
	ph.pumps.Wait()
	if drain {
		l.a.setDeadline(time.Time{})
		l.b.setDeadline(time.Time{})
		for end := time.Now().Add(2 * time.Minute); !l.stagesIdle() && time.Now().Before(end); {
			select {
			case <-ph.failed:
				end = time.Time{}
			case <-time.After(time.Millisecond):
			}
		}
	}
	ph.stageCancel()
	l.a.setDeadline(time.Unix(1, 0))
	l.b.setDeadline(time.Unix(1, 0))
	ph.stages.Wait()
}

// startPumps starts a pump per source queue, and an impairment stage per
// pump of a direction with impairments; a link with a kernel data path
// gets stages in both directions (a zero one costs nothing), so that
// impairments can be set at run time in either.
func (l *Link) startPumps(ctx context.Context) *phase {
	pctx, pcancel := context.WithCancel(ctx)
	sctx, scancel := context.WithCancel(ctx)
	ph := &phase{cancel: pcancel, stageCancel: scancel, failed: make(chan struct{})}
	fail := func(err error) {
		ph.errOnce.Do(func() {
			ph.err = fmt.Errorf("link %s: %w", l, err)
			close(ph.failed)
		})
		pcancel()
		scancel()
	}
	// A phase before this one ended its reads with a deadline.
	l.a.setDeadline(time.Time{})
	l.b.setDeadline(time.Time{})
	l.imMu.Lock()
	l.stages = [2][]*stage{}
	l.imMu.Unlock()
	start := func(src, dst *Endpoint, c *counters, dir int) {
		clock := monoClock()
		l.imMu.Lock()
		im := [2]*vmconfig.Impairment{l.imAB, l.imBA}[dir]
		l.imMu.Unlock()
		if im == nil && l.kern != nil {
			im = &vmconfig.Impairment{}
		}
		for i := range src.queues {
			p := newPump(l, src, dst, i, c)
			p.drain = &ph.draining
			if im != nil {
				p.st = newStage(*im, Headroom-dst.hdr.Size, c.imp, clock, rand.Uint64())
				l.imMu.Lock()
				l.stages[dir] = append(l.stages[dir], p.st)
				l.imMu.Unlock()
				ph.stages.Add(1)
				go func() {
					defer ph.stages.Done()
					if err := p.st.run(sctx, p); err != nil {
						fail(err)
					}
				}()
			}
			ph.pumps.Add(1)
			l.pumps.Add(1)
			go func() {
				defer ph.pumps.Done()
				defer l.pumps.Add(-1)
				if err := p.run(pctx); err != nil {
					fail(err)
				}
			}()
		}
	}
	start(l.a, l.b, &l.ab, 0)
	start(l.b, l.a, &l.ba, 1)
	return ph
}

// userspace waits while the pumps of ph forward: until ctx is done
// (false, nil), a pump fails (false, the error), or the kernel takes
// over (true; the pumps have stopped).
func (l *Link) userspace(ctx context.Context, ph *phase) (toKernel bool, err error) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	// While a switch waits for delayed frames to leave, look often.
	var soon <-chan time.Time
	for {
		if l.wantKernel() {
			if l.stagesIdle() {
				if err := l.kern.install(); err != nil {
					l.logf("link %s: forwarding in userspace: %v", l, err)
				} else {
					// The kernel forwards from here on; the pumps only
					// finish what reached them before.
					l.stop(ph, time.Now().Add(drainTime), true)
					return true, l.flushCapture(nil)
				}
			} else {
				soon = time.After(10 * time.Millisecond)
			}
		}
		select {
		case <-ctx.Done():
			// A deadline in the past wakes every blocked read and write.
			l.stop(ph, time.Unix(1, 0), false)
			return false, l.flushCapture(nil)
		case <-ph.failed:
			l.stop(ph, time.Unix(1, 0), false)
			return false, l.flushCapture(ph.err)
		case <-l.poke:
		case <-soon:
			soon = nil
		case <-tick.C:
			if l.capture != nil {
				l.capture.flush()
			}
		}
	}
}

// flushCapture writes out the capture; the first error wins.
func (l *Link) flushCapture(first error) error {
	if l.capture != nil {
		if err := l.capture.flush(); err != nil && first == nil {
			first = fmt.Errorf("link %s: %w", l, err)
		}
	}
	return first
}

// kernel waits while the kernel forwards: until ctx is done (false,
// nil), an interface is gone (false, the error, as a pump's would be), or
// userspace is needed (true): impairments were set, or someone removed
// vmnet's redirect (then for good, said in one log line). It reads the
// redirects' counters every second, so that the kernel's 32-bit packet
// counts never wrap unseen.
func (l *Link) kernel(ctx context.Context) (toUser bool, err error) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false, nil
		case <-l.poke:
			if !l.wantKernel() {
				return true, nil
			}
		case <-tick.C:
			err := l.kern.poll()
			switch {
			case errors.Is(err, unix.ENODEV):
				return false, fmt.Errorf("link %s: %w", l, err)
			case err != nil:
				l.kern.fail()
				l.logf("link %s: forwarding in userspace: %v", l, err)
				return true, nil
			}
		}
	}
}

// wantKernel reports whether the kernel should forward: the link has a
// kernel data path that has not failed, and no impairment.
func (l *Link) wantKernel() bool {
	if l.kern == nil || !l.kern.usable() {
		return false
	}
	l.imMu.Lock()
	defer l.imMu.Unlock()
	for _, im := range []*vmconfig.Impairment{l.imAB, l.imBA} {
		if im != nil && !im.IsZero() {
			return false
		}
	}
	return true
}

// stagesIdle reports whether no impairment stage holds a frame (frames
// delayed before the impairments were cleared still leave on time).
func (l *Link) stagesIdle() bool {
	l.imMu.Lock()
	defer l.imMu.Unlock()
	for _, ss := range l.stages {
		for _, s := range ss {
			if s.pending.Load() != 0 {
				return false
			}
		}
	}
	return true
}

// SetImpairment changes the impairments of the directions given (nil:
// leave that direction alone) while the link runs or before. Frames
// already waiting keep their times to send. A direction the link was
// made without impairments has no stage to change (its plain path costs
// nothing): that is an error, and nothing changes; except on a link with
// a kernel data path, which has stages in both directions whenever it
// forwards in userspace. Such a link moves to userspace when an
// impairment is set, and back to the kernel when every impairment is
// zero again; a running link has switched when SetImpairment returns.
func (l *Link) SetImpairment(ab, ba *vmconfig.Impairment) error {
	l.imMu.Lock()
	cur := [2]**vmconfig.Impairment{&l.imAB, &l.imBA}
	names := [2]string{l.a.String() + " to " + l.b.String(), l.b.String() + " to " + l.a.String()}
	for dir, im := range [2]*vmconfig.Impairment{ab, ba} {
		if im != nil && *cur[dir] == nil && l.kern == nil {
			l.imMu.Unlock()
			return fmt.Errorf("link %s: the direction from %s was started without impairments, so they cannot be set now: start the link with an impairment in that direction (delay 0 costs nothing)", l, names[dir])
		}
	}
	for dir, im := range [2]*vmconfig.Impairment{ab, ba} {
		if im == nil {
			continue
		}
		v := *im
		*cur[dir] = &v
		for _, s := range l.stages[dir] {
			s.next.Store(&v)
		}
	}
	l.imMu.Unlock()
	if l.kern == nil {
		return nil
	}
	select {
	case l.poke <- struct{}{}:
	default:
	}
	// Wait for Run to switch (if it runs): the caller (`vmnet link set`,
	// a test) then sees the path it asked for. A switch to the kernel
	// waits for frames delayed before to leave, which may take longer.
	want := l.wantKernel()
	for end := time.Now().Add(2 * time.Second); l.running.Load() && !l.ran.Load() && l.inKernel() != want && time.Now().Before(end); {
		time.Sleep(time.Millisecond)
	}
	return nil
}

// Impairments returns copies of the directions' impairments (a to b,
// b to a); nil for a direction without.
func (l *Link) Impairments() [2]*vmconfig.Impairment {
	l.imMu.Lock()
	defer l.imMu.Unlock()
	var out [2]*vmconfig.Impairment
	for i, im := range [2]*vmconfig.Impairment{l.imAB, l.imBA} {
		if im != nil {
			v := *im
			out[i] = &v
		}
	}
	return out
}

// Stats are a link's counters, per direction.
type Stats struct {
	A string `json:"a"`
	B string `json:"b"`
	// Datapath says what forwards the frames now (once Run has
	// returned: what forwarded them last): DatapathKernel (tc
	// redirects; the counters are the kernel's, which count a
	// super-frame as its segments) or DatapathUserspace.
	Datapath string   `json:"datapath"`
	AtoB     DirStats `json:"a_to_b"`
	BtoA     DirStats `json:"b_to_a"`
}

// DirStats count one direction. Frames and Bytes are what was read from
// the source (a super-frame counts once, bytes without vnet header); Tx*
// is what the destination took.
type DirStats struct {
	Frames      uint64 `json:"frames"`
	Bytes       uint64 `json:"bytes"`
	SuperFrames uint64 `json:"super_frames"` // GSO frames read
	Segmented   uint64 `json:"segmented"`    // super-frames split in software
	Segments    uint64 `json:"segments"`     // frames those splits produced
	Coalesced   uint64 `json:"coalesced"`    // super-frames GRO built from frames read one by one
	Merged      uint64 `json:"merged"`       // frames those super-frames hold
	// Queues counts the frames read from each queue of the source (tap
	// queues, AF_PACKET fanout sockets), in the order they were opened.
	Queues   []uint64 `json:"queues"`
	TxFrames uint64   `json:"tx_frames"`
	TxBytes  uint64   `json:"tx_bytes"`
	Drops    Drops    `json:"drops"`
	// Impairment is the direction's impairments ("none" when it has
	// a stage that does nothing), Impaired what they did; both absent
	// for a direction without impairments.
	Impairment string       `json:"impairment,omitempty"`
	Impaired   *ImpairStats `json:"impaired,omitempty"`
}

// Drops count frames lost, by reason.
type Drops struct {
	MTU       uint64 `json:"mtu"`       // longer than the destination's MTU and not GSO (or segments too long)
	Invalid   uint64 `json:"invalid"`   // vnet header the kernel would reject, or a runt
	Truncated uint64 `json:"truncated"` // longer than the read buffer
	Segments  uint64 `json:"segments"`  // needs more segments than the link's buffers hold
	Write     uint64 `json:"write"`     // refused by the destination (down, no buffer, bad frame)
	// VnetHdrSize counts frames read or written across a change of a
	// tap's vnet header size (another holder, QEMU, changed it while the
	// link ran), or while the size was one vmnet does not handle.
	VnetHdrSize uint64 `json:"vnet_hdr_size"`
	// Auth counts encrypted tunnel datagrams that failed authentication
	// (wrong key, forged or corrupted, too short); Replay those that
	// authenticated but were seen before, are too old for the replay
	// window, or belong to an older session of the peer.
	Auth   uint64 `json:"auth"`
	Replay uint64 `json:"replay"`
}

// Total is the sum of all drops.
func (d Drops) Total() uint64 {
	return d.MTU + d.Invalid + d.Truncated + d.Segments + d.Write + d.VnetHdrSize + d.Auth + d.Replay
}

// inKernel reports whether the kernel carries the link's frames now.
func (l *Link) inKernel() bool { return l.kern != nil && l.kern.installed.Load() }

// Stats reads the counters; safe at any time, from any goroutine.
func (l *Link) Stats() Stats {
	s := Stats{A: l.a.String(), B: l.b.String(), Datapath: DatapathUserspace}
	switch {
	case l.inKernel():
		s.Datapath = DatapathKernel
		l.kern.poll()
	case l.endedInKernel.Load():
		// Run has taken the redirects away: the final counters are
		// still the kernel's.
		s.Datapath = DatapathKernel
	}
	s.AtoB, s.BtoA = l.ab.load(), l.ba.load()
	l.imMu.Lock()
	defer l.imMu.Unlock()
	// A link with a kernel data path counts in both directions from the
	// start; a direction never impaired shows nothing of it.
	if l.imAB != nil {
		s.AtoB.Impairment = l.imAB.String()
	} else {
		s.AtoB.Impaired = nil
	}
	if l.imBA != nil {
		s.BtoA.Impairment = l.imBA.String()
	} else {
		s.BtoA.Impaired = nil
	}
	return s
}

// String formats the stats on one line per direction for --stats output.
func (s Stats) String() string {
	f := func(from, to string, d DirStats) string {
		return fmt.Sprintf("%s -> %s: %d frames %d bytes (%d super, %d split into %d, %d merged into %d), sent %d frames %d bytes, dropped %d (mtu %d invalid %d truncated %d segments %d write %d vnet_hdr_size %d auth %d replay %d)",
			from, to, d.Frames, d.Bytes, d.SuperFrames, d.Segmented, d.Segments, d.Merged, d.Coalesced, d.TxFrames, d.TxBytes,
			d.Drops.Total(), d.Drops.MTU, d.Drops.Invalid, d.Drops.Truncated, d.Drops.Segments, d.Drops.Write,
			d.Drops.VnetHdrSize, d.Drops.Auth, d.Drops.Replay)
	}
	g := func(from, to string, d DirStats) string {
		line := f(from, to, d)
		if len(d.Queues) > 1 {
			line += fmt.Sprintf("; frames read per queue %v", d.Queues)
		}
		if i := d.Impaired; i != nil {
			line += fmt.Sprintf("\n%s -> %s impaired (%s): lost %d, duplicated %d, corrupted %d, reordered %d, delayed %d, overflow %d",
				from, to, d.Impairment, i.Lost, i.Duplicated, i.Corrupted, i.Reordered, i.Delayed, i.Overflow)
		}
		return line
	}
	out := g(s.A, s.B, s.AtoB) + "\n" + g(s.B, s.A, s.BtoA)
	if s.Datapath != "" {
		out += "\ndatapath: " + s.Datapath
	}
	return out
}

type counters struct {
	frames, bytes, super, segmented, segments, coalesced, merged, txFrames, txBytes atomic.Uint64
	dMTU, dInvalid, dTrunc, dSegs, dWrite, dHdr, dAuth, dReplay                     atomic.Uint64
	imp                                                                             *impairCounters // nil: no impairments
	queues                                                                          []atomic.Uint64 // frames read per source queue
}

func (c *counters) load() DirStats {
	d := DirStats{
		Frames: c.frames.Load(), Bytes: c.bytes.Load(), SuperFrames: c.super.Load(),
		Segmented: c.segmented.Load(), Segments: c.segments.Load(),
		Coalesced: c.coalesced.Load(), Merged: c.merged.Load(),
		TxFrames: c.txFrames.Load(), TxBytes: c.txBytes.Load(),
		Drops: Drops{MTU: c.dMTU.Load(), Invalid: c.dInvalid.Load(), Truncated: c.dTrunc.Load(),
			Segments: c.dSegs.Load(), Write: c.dWrite.Load(), VnetHdrSize: c.dHdr.Load(),
			Auth: c.dAuth.Load(), Replay: c.dReplay.Load()},
	}
	if c.imp != nil {
		d.Impaired = c.imp.load()
	}
	d.Queues = make([]uint64, len(c.queues))
	for i := range c.queues {
		d.Queues[i] = c.queues[i].Load()
	}
	return d
}

// add publishes a pump's local counts; once per batch, so the shared
// cache lines are touched rarely.
func (c *counters) add(d *DirStats) {
	add := func(a *atomic.Uint64, v *uint64) {
		if *v != 0 {
			a.Add(*v)
			*v = 0
		}
	}
	add(&c.frames, &d.Frames)
	add(&c.bytes, &d.Bytes)
	add(&c.super, &d.SuperFrames)
	add(&c.segmented, &d.Segmented)
	add(&c.segments, &d.Segments)
	add(&c.coalesced, &d.Coalesced)
	add(&c.merged, &d.Merged)
	add(&c.txFrames, &d.TxFrames)
	add(&c.txBytes, &d.TxBytes)
	add(&c.dMTU, &d.Drops.MTU)
	add(&c.dInvalid, &d.Drops.Invalid)
	add(&c.dTrunc, &d.Drops.Truncated)
	add(&c.dSegs, &d.Drops.Segments)
	add(&c.dWrite, &d.Drops.Write)
	add(&c.dHdr, &d.Drops.VnetHdrSize)
	add(&c.dAuth, &d.Drops.Auth)
	add(&c.dReplay, &d.Drops.Replay)
}

// pump forwards one source queue to the destination: read a batch, decide
// per frame (pass, complete checksum, segment, cut for a datagram, drop),
// write a batch. All buffers are made here, once.
type pump struct {
	l        *Link
	src, dst *Endpoint
	sq, dq   queueIO
	qi       int // index of sq in the source's queues
	c        *counters
	local    DirStats

	// The vnet header formats this pump reads and writes with. A tap's
	// size can change under the link (QEMU renegotiating with its guest),
	// so for taps they are asked for again after a read batch, at most
	// every hdrCheckEvery (srcSz, dstSz, checked); a size above MaxVnetHdr
	// makes srcBad/dstBad, and frames are dropped until it comes back
	// into range.
	srcHdr, dstHdr vnethdr.Format
	srcSz, dstSz   hdrSizer
	srcBad, dstBad bool
	checked        time.Time

	rbufs [][]byte
	sizes []int

	out [][]byte // frames to write: buf[:Headroom+len]; header already encoded

	// Segment pool, made on first use (links that never segment never pay
	// for it). segFull[i] is a whole buffer, segView[i] = segFull[i][Headroom:].
	segFull  [][]byte
	segView  [][]byte
	segSizes []int
	segUsed  int

	cs *captureScratch

	st *stage // impairments; nil: none

	// Software GRO (nil: off): frames without GSO and with complete
	// checksums wait in groIn (groBuf[i] is the read buffer of groIn[i],
	// groHdr[i] its vnet header) until the end of the read batch or the
	// next frame that cannot wait, then go out merged where the kernel's
	// GRO rules allow.
	gro    *vnethdr.Coalescer
	groIn  [][]byte
	groBuf [][]byte
	groHdr []vnethdr.Hdr

	fragID uint32 // IPv6 fragment id of the last UFO datagram split

	drain *atomic.Bool // the phase's draining; nil: never drains
}

func newPump(l *Link, src, dst *Endpoint, i int, c *counters) *pump {
	p := &pump{l: l, src: src, dst: dst, sq: src.queues[i], qi: i, dq: dst.queues[i%len(dst.queues)], c: c,
		srcHdr: src.hdr, dstHdr: dst.hdr, fragID: rand.Uint32()}
	if src.hdr.Size > 0 {
		p.srcSz, _ = p.sq.(hdrSizer)
	}
	if dst.hdr.Size > 0 {
		p.dstSz, _ = p.dq.(hdrSizer)
	}
	size := Headroom + MaxFrame + Tailroom
	back := make([]byte, size*l.batch)
	p.rbufs = make([][]byte, l.batch)
	for j := range p.rbufs {
		p.rbufs[j] = back[j*size : (j+1)*size : (j+1)*size]
	}
	p.sizes = make([]int, l.batch)
	p.out = make([][]byte, 0, l.batch+1024)
	if l.capture != nil {
		p.cs = newCaptureScratch()
	}
	// Not towards a UDP tunnel: there frames of one size already go out
	// in UDP_SEGMENT runs of datagrams that fit the path MTU, while a
	// merged super-frame would be one IP-fragmented datagram; the far
	// end merges them for its own destination.
	if dst.gso && !l.noGRO && dst.kind != vmconfig.KindUDP {
		p.gro = vnethdr.NewCoalescer(vnethdr.CoalesceOptions{UDP: dst.uso})
		p.groIn = make([][]byte, 0, l.batch)
		p.groBuf = make([][]byte, 0, l.batch)
		p.groHdr = make([]vnethdr.Hdr, 0, l.batch)
		// Grow the Coalescer's tables to a whole batch now, so that
		// forwarding never allocates.
		p.gro.Coalesce(make([][]byte, l.batch))
	}
	return p
}

func (p *pump) run(ctx context.Context) error {
	// sweep: the drain's deadline has passed, and the pump reads what
	// its queue holds without waiting until it is empty.
	var sweep sweeper
	swept := 0
	for {
		off := Headroom - p.srcHdr.Size
		if p.srcBad {
			off = 0 // read to drain; every frame is dropped
		}
		if h := p.l.hooks.Load(); h != nil && h.beforeRead != nil {
			h.beforeRead(p.src)
		}
		var n int
		var err error
		if sweep == nil {
			n, err = p.sq.read(p.rbufs, off, p.sizes)
		} else {
			n, err = sweep.readNow(p.rbufs, off, p.sizes)
			if swept += n; n == 0 || swept >= maxSweep {
				// Empty (or fed while the kernel forwards): the queue
				// is the kernel's now.
				err = errSwept
			}
		}
		if n > 0 && p.qi < len(p.c.queues) {
			p.c.queues[p.qi].Add(uint64(n))
		}
		if p.st != nil {
			p.st.refresh()
		}
		due := false
		if n > 0 && (p.srcSz != nil || p.dstSz != nil) {
			if now := time.Now(); now.Sub(p.checked) >= hdrCheckEvery {
				due, p.checked = true, now
			}
		}
		if n > 0 && p.srcSz != nil {
			// The kernel wrote each frame with the size in force when it
			// was read; a size that differs now may have changed in the
			// middle of the batch, which cannot be told apart frame by
			// frame: drop the batch (TCP resends) rather than forward
			// frames shifted by the difference.
			// While the size is out of range the frames were read at
			// offset 0 and are dropped whether or not a check is due.
			if (due && p.recheck(p.srcSz, &p.srcHdr, &p.srcBad)) || p.srcBad {
				p.local.Frames += uint64(n)
				p.local.Drops.VnetHdrSize += uint64(n)
				n = 0
				p.c.add(&p.local)
			}
		}
		if n > 0 && due && p.dstSz != nil {
			// Frames are encoded for the destination's size as last
			// asked; a change since (at most hdrCheckEvery ago) or
			// before the write garbles them (the kernel offers no way to
			// write with an expected size).
			p.recheck(p.dstSz, &p.dstHdr, &p.dstBad)
		}
		for i := 0; i < n; i++ {
			p.handle(p.rbufs[i], p.sizes[i])
		}
		// Nothing waits for the next batch: a frame is never held back
		// in the hope that more of its flow follows.
		p.groFlush()
		if n > 0 {
			if ferr := p.flush(); ferr != nil {
				p.c.add(&p.local)
				if ctx.Err() != nil {
					return nil
				}
				return ferr
			}
			p.c.add(&p.local)
		}
		if err != nil {
			if ctx.Err() != nil {
				if sw, ok := p.sq.(sweeper); ok && sweep == nil && p.drain != nil && p.drain.Load() {
					// A read ends at the drain's deadline, even one
					// that never tried because the pump came late.
					sweep = sw
					continue
				}
				return nil
			}
			if fatal(err) {
				return err
			}
			// ECONNREFUSED (the tunnel's far end is not up yet), ENETDOWN
			// (the interface went down) and the like pass.
			if n == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}
}

// errSwept ends a pump's sweep of its queue.
var errSwept = errors.New("queue swept")

// hdrCheckEvery is how often a pump asks the kernel for a tap's vnet
// header size. The question (TUNGETVNETHDRSZ) takes the kernel's RTNL
// lock and costs about 1 µs, a good part of a small frame's trip; once a
// millisecond costs nothing measurable, and a change (rare: a guest
// driver renegotiating) garbles at most the frames of that millisecond.
const hdrCheckEvery = time.Millisecond

// recheck asks the kernel for a tap's current vnet header size and
// updates f and bad; it reports whether the size changed. An error
// asking leaves the format alone: the next read or write says what is
// wrong with the device.
func (p *pump) recheck(sz hdrSizer, f *vnethdr.Format, bad *bool) bool {
	n, err := sz.vnetHdrSize()
	if err != nil || n == f.Size {
		return false
	}
	f.Size = n
	*bad = n < vnethdr.HdrLen || n > MaxVnetHdr
	return true
}

func (p *pump) handle(buf []byte, size int) {
	h := p.srcHdr.Size
	switch {
	case size == sizeAuthFailed:
		p.local.Frames++
		p.local.Drops.Auth++
		return
	case size == sizeReplayed:
		p.local.Frames++
		p.local.Drops.Replay++
		return
	case size > len(buf)-(Headroom-h):
		p.local.Frames++
		p.local.Drops.Truncated++
		return
	case size < h+14:
		p.local.Frames++
		p.local.Drops.Invalid++
		return
	}
	flen := size - h
	var hd vnethdr.Hdr
	if h > 0 {
		hd, _ = p.srcHdr.Decode(buf[Headroom-h:])
		if hd.Flags&^(vnethdr.FlagNeedsCsum|vnethdr.FlagDataValid|vnethdr.FlagRSCInfo) != 0 {
			// No device sets other flags; an encrypted tunnel datagram
			// reaching a cleartext endpoint starts with 0xff.
			p.local.Frames++
			p.local.Drops.Invalid++
			return
		}
	}
	frame := buf[Headroom : Headroom+flen]
	p.local.Frames++
	p.local.Bytes += uint64(flen)
	dst := p.dst
	if p.dstBad {
		p.local.Drops.VnetHdrSize++
		return
	}

	if hd.GSOType == vnethdr.GSONone {
		if flen > dst.maxFrame {
			p.local.Drops.MTU++
			return
		}
		// Impairments act on the frames as they came (--loss 20% loses
		// one datagram in five, not one merged super-frame in five):
		// no GRO on a direction whose stage does something.
		if p.gro != nil && (p.st == nil || p.st.nop) {
			if hd.Flags&vnethdr.FlagNeedsCsum != 0 {
				// MTU-sized frames with a partial checksum (a tap with
				// checksum offload but no TSO, AF_PACKET on a device
				// without GSO): the Coalescer needs whole checksums. A
				// frame that is not merged leaves complete, which every
				// destination takes.
				// The kernel's rules first: where it would refuse the
				// header, completing could write into any byte.
				if vnethdr.Validate(hd, frame, vnethdr.Options{}) != nil || vnethdr.CompleteChecksum(hd, frame) != nil {
					p.local.Drops.Invalid++
					return
				}
			}
			if len(p.groIn) == cap(p.groIn) {
				p.groFlush()
			}
			p.groIn = append(p.groIn, frame)
			p.groBuf = append(p.groBuf, buf)
			// Of the header only DATA_VALID means anything for a whole
			// frame with its checksum complete; hdr_len and the like
			// from a peer could be anything (the kernel refuses an
			// hdr_len beyond the frame).
			p.groHdr = append(p.groHdr, vnethdr.Hdr{Flags: hd.Flags & vnethdr.FlagDataValid})
			return
		}
		if hd.Flags&vnethdr.FlagNeedsCsum != 0 && p.dstHdr.Size == 0 {
			if err := vnethdr.CompleteChecksum(hd, frame); err != nil {
				p.local.Drops.Invalid++
				return
			}
			hd.Flags &^= vnethdr.FlagNeedsCsum
		}
		p.emit(buf, flen, hd)
		return
	}

	p.local.SuperFrames++
	p.groFlush()
	pkt, err := vnethdr.Parse(hd, frame, vnethdr.Options{})
	if err != nil {
		p.local.Drops.Invalid++
		return
	}
	if dst.gso && hd.GSOType&^vnethdr.GSOECN != vnethdr.GSOUDP {
		if dst.segCheck && pkt.MaxSegmentLen() > dst.maxFrame {
			p.local.Drops.MTU++
			return
		}
		if flen <= dst.gsoMax {
			p.emit(buf, flen, hd)
			return
		}
		p.cut(hd, frame, &pkt)
		return
	}
	if pkt.MaxSegmentLen() > dst.maxFrame {
		p.local.Drops.MTU++
		return
	}
	p.segment(&pkt, vnethdr.Hdr{}, false)
}

// groFlush writes the frames waiting for GRO: merged ones are copied into
// the segment pool as one super-frame each (the destination takes a frame
// as one contiguous write), the others go out from their read buffers
// untouched. Writing a merged frame from its pieces instead (one writev
// of the header and ~45 payloads, tap.Queue.WriteVec) saves this copy but
// measured no faster: bench-link's gro case, six alternating runs, link
// CPU 1.34-1.68 s/GB with writev against 1.24-1.66 s/GB copying (medians
// 1.39 and 1.28): the kernel's copy from 46 iovecs costs more than
// one copy of 64 KB here plus one from a single buffer.
func (p *pump) groFlush() {
	if len(p.groIn) == 0 {
		return
	}
	n := p.gro.Coalesce(p.groIn)
	for i := 0; i < n; i++ {
		first, count := p.gro.Inputs(i)
		if count == 1 {
			// As read: a DATA_VALID flag stays.
			p.emit(p.groBuf[first], len(p.groIn[first]), p.groHdr[first])
			continue
		}
		if p.segFull == nil {
			p.makePool()
		}
		// Room for the super-frame and the two pieces a tunnel may cut
		// it into: segment must not flush (and reuse the pool) while the
		// super-frame it reads from sits in the pool.
		if p.segUsed+3 > len(p.segFull) || len(p.out)+3 > cap(p.out) {
			p.flush()
		}
		buf := p.segFull[p.segUsed]
		flen, err := p.gro.CopyOut(i, buf[Headroom:len(buf)-Tailroom])
		if err != nil {
			// The pool holds MaxFrame and GRO stops at 64 KB: cannot happen.
			p.local.Drops.Segments += uint64(count)
			continue
		}
		p.segUsed++
		p.local.Coalesced++
		p.local.Merged += uint64(count)
		hd, _ := p.gro.Out(i)
		if flen > p.dst.gsoMax {
			pkt, err := vnethdr.Parse(hd, buf[Headroom:Headroom+flen], vnethdr.Options{})
			if err != nil {
				p.local.Drops.Invalid++
				continue
			}
			p.cut(hd, buf[Headroom:Headroom+flen], &pkt)
			continue
		}
		p.emit(buf, flen, hd)
	}
	clear(p.groIn)
	clear(p.groBuf)
	p.groIn, p.groBuf, p.groHdr = p.groIn[:0], p.groBuf[:0], p.groHdr[:0]
}

// cut splits a super-frame too long for one tunnel datagram into shorter
// super-frames: the same packet segmented at a multiple of gso_size, with
// partial checksums, each sent with the original gso_size.
func (p *pump) cut(hd vnethdr.Hdr, frame []byte, pkt *vnethdr.Packet) {
	mss := int(hd.GSOSize)
	k := (p.dst.gsoMax - pkt.HeaderLen()) / mss
	if k < 1 {
		p.local.Drops.MTU++
		return
	}
	h2 := hd
	h2.GSOSize = uint16(k * mss)
	big, err := vnethdr.Parse(h2, frame, vnethdr.Options{PartialCsum: true})
	if err != nil {
		p.local.Drops.Invalid++
		return
	}
	sh := big.SegmentHdr()
	sh.GSOType, sh.GSOSize = hd.GSOType, hd.GSOSize
	p.segment(&big, sh, true)
}

// segment splits pkt into the pool and queues the pieces with header sh.
func (p *pump) segment(pkt *vnethdr.Packet, sh vnethdr.Hdr, cut bool) {
	if p.segFull == nil {
		p.makePool()
	}
	if pkt.Hdr().GSOType&^vnethdr.GSOECN == vnethdr.GSOUDP {
		// IPv6 fragments of one datagram share an id that must not
		// repeat soon between the same addresses: number them per pump.
		p.fragID++
		pkt.SetFragmentID(p.fragID)
	}
	ns := pkt.Segments()
	if ns > len(p.segFull) || pkt.MaxSegmentLen() > len(p.segView[0]) {
		p.local.Drops.Segments++
		return
	}
	if p.segUsed+ns > len(p.segFull) || len(p.out)+ns > cap(p.out) {
		p.flush()
	}
	k, err := pkt.Segment(p.segView[p.segUsed:p.segUsed+ns], p.segSizes[p.segUsed:p.segUsed+ns])
	if err != nil {
		p.local.Drops.Invalid++
		return
	}
	if !cut {
		p.local.Segmented++
		p.local.Segments += uint64(k)
	}
	hl := pkt.HeaderLen()
	for j := 0; j < k; j++ {
		i := p.segUsed + j
		h := sh
		if cut && p.segSizes[i]-hl <= int(sh.GSOSize) {
			// A last piece no longer than gso_size is an ordinary frame.
			h.GSOType, h.GSOSize = vnethdr.GSONone, 0
		}
		p.emit(p.segFull[i], p.segSizes[i], h)
	}
	p.segUsed += k
}

func (p *pump) makePool() {
	frame := p.dst.maxFrame
	if p.dst.gso {
		frame = max(frame, p.dst.gsoMax)
	}
	if p.gro != nil {
		// A merged frame may be longer than a tunnel datagram (then cut).
		frame = MaxFrame
	}
	frame = min(frame, MaxFrame)
	size := Headroom + frame + Tailroom
	n := max(64, min(1024, (8<<20)/size))
	back := make([]byte, size*n)
	p.segFull = make([][]byte, n)
	p.segView = make([][]byte, n)
	p.segSizes = make([]int, n)
	for i := range p.segFull {
		p.segFull[i] = back[i*size : (i+1)*size : (i+1)*size]
		p.segView[i] = p.segFull[i][Headroom : size-Tailroom]
	}
}

// emit queues buf's frame for the destination with header hd, through
// the impairment stage if the direction has one.
func (p *pump) emit(buf []byte, flen int, hd vnethdr.Hdr) {
	if p.st != nil && !p.st.nop {
		p.impair(buf, flen, hd)
		return
	}
	p.emitNow(buf, flen, hd)
}

// emitNow queues buf's frame for the pump's next write.
func (p *pump) emitNow(buf []byte, flen int, hd vnethdr.Hdr) {
	if len(p.out) == cap(p.out) {
		p.flush()
	}
	if h := p.dstHdr.Size; h > 0 {
		hd.NumBuffers = 0
		p.dstHdr.Encode(buf[Headroom-h:], hd)
	}
	if p.l.capture != nil {
		p.l.capture.write(p.cs, hd, buf[Headroom:Headroom+flen])
	}
	p.out = append(p.out, buf[:Headroom+flen])
}

// flush writes the queued frames. A frame the destination refuses is
// counted and skipped; an error that means the destination is gone is
// returned.
func (p *pump) flush() error {
	off := Headroom - p.dstHdr.Size
	out := p.out
	var ferr error
	var bytes int
	for len(out) > 0 {
		n, err := p.dq.write(out, off)
		for _, b := range out[:n] {
			bytes += len(b) - Headroom
		}
		p.local.TxFrames += uint64(n)
		out = out[n:]
		if err == nil {
			break
		}
		if fatal(err) {
			ferr = err
			break
		}
		p.local.Drops.Write++
		if len(out) > 0 {
			out = out[1:]
		}
	}
	p.local.TxBytes += uint64(bytes)
	if p.dst.napi != nil {
		p.dst.napi.wrote(bytes, p.l.logf)
	}
	clear(p.out) // drop references so old buffers are not kept by the slice header
	p.out = p.out[:0]
	p.segUsed = 0
	return ferr
}

// Dial opens both endpoints and makes a link between them. On error
// nothing stays open (a tap it created is gone again).
func Dial(ctx context.Context, a, b vmconfig.Endpoint, oo OpenOptions, opts Options) (*Link, error) {
	ea, err := Open(ctx, a, oo)
	if err != nil {
		return nil, err
	}
	eb, err := Open(ctx, b, oo)
	if err != nil {
		ea.Close()
		return nil, err
	}
	return New(ea, eb, opts)
}
