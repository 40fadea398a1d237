package link

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/vmconfig"
)

// The impairments measured through the real kernel: hosts A and B in
// their own namespaces behind bridges, the link between two taps, UDP
// probes with sequence numbers (a ping of our own: no ping binary needed)
// and iperf3 for the rate.

// impairedWorld runs a tap-tap link with the given impairments between
// A and B.
func impairedWorld(t *testing.T, ab, ba *vmconfig.Impairment) (*world, *Link) {
	w := newWorld(t, true)
	l, err := New(w.open("tap:tA"), w.open("tap:tB"), Options{AtoB: ab, BtoA: ba, Datapath: DatapathUserspace})
	w.must(err)
	w.plug("tA", "brA")
	w.plug("tB", "brB")
	w.run(l)
	return w, l
}

// probes are a UDP socket in A sending to one in B.
type probes struct {
	t      *testing.T
	tx, rx net.PacketConn
	dst    net.Addr
	warmed bool
}

func (w *world) probes(port int) *probes {
	p := &probes{t: w.t}
	testenv.Do(w.t, w.B, func() (err error) {
		p.rx, err = net.ListenPacket("udp4", w.ipB.String()+":"+strconv.Itoa(port))
		return err
	})
	testenv.Do(w.t, w.A, func() (err error) {
		p.tx, err = net.ListenPacket("udp4", w.ipA.String()+":0")
		return err
	})
	// A receive buffer beyond rmem_max (root may): a loaded machine
	// can leave the reader behind by a few hundred probes, which the
	// default buffer would drop and the test count as the link's loss.
	for _, c := range []net.PacketConn{p.rx, p.tx} {
		rc, err := c.(*net.UDPConn).SyscallConn()
		w.must(err)
		w.must(rc.Control(func(fd uintptr) {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
		}))
	}
	p.dst = &net.UDPAddr{IP: w.ipB, Port: port}
	w.t.Cleanup(func() { p.tx.Close(); p.rx.Close() })
	return p
}

const warmSeq = 0xffffffff

// warm sends until one probe arrives (ARP resolved through the
// impairments), then drains what else arrives.
func (p *probes) warm() {
	p.t.Helper()
	buf := make([]byte, 64)
	for range 100 {
		p.send(warmSeq)
		p.rx.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, _, err := p.rx.ReadFrom(buf); err == nil {
			for {
				p.rx.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				if _, _, err := p.rx.ReadFrom(buf); err != nil {
					return
				}
			}
		}
	}
	p.t.Fatal("no probe got through A -> B in 100 tries")
}

func (p *probes) send(seq uint32) {
	var b [64]byte
	binary.BigEndian.PutUint32(b[:], seq)
	if _, err := p.tx.WriteTo(b[:], p.dst); err != nil {
		p.t.Fatal(err)
	}
}

// oneWay sends n probes A -> B, paced (20 per ms), and returns the sequence numbers B received, in order
// of arrival, once nothing more arrives for quiet.
func (p *probes) oneWay(n int, quiet time.Duration) []uint32 {
	return p.oneWayThen(n, quiet, nil)
}

// oneWayThen is oneWay, calling sent (if not nil) once the last probe is
// sent, before the wait for the last ones to arrive.
func (p *probes) oneWayThen(n int, quiet time.Duration, sent func()) []uint32 {
	if !p.warmed {
		p.warm()
		p.warmed = true
	}
	got := make(chan []uint32, 1)
	var allSent atomic.Bool
	go func() {
		var seqs []uint32
		buf := make([]byte, 64)
		for {
			// Quiet counts only once everything is sent: a loaded
			// machine can stall the sender for longer.
			p.rx.SetReadDeadline(time.Now().Add(quiet))
			k, _, err := p.rx.ReadFrom(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() && !allSent.Load() {
					continue
				}
				got <- seqs
				return
			}
			if s := binary.BigEndian.Uint32(buf[:k]); s != warmSeq {
				seqs = append(seqs, s)
			}
		}
	}()
	for i := range n {
		p.send(uint32(i))
		if i%20 == 19 {
			time.Sleep(time.Millisecond)
		}
	}
	if sent != nil {
		sent()
	}
	allSent.Store(true)
	return <-got
}

// quiet is how long oneWay waits for more probes once all are sent. The
// link's pump can be off a CPU for hundreds of milliseconds on a loaded
// 2-core machine (load 20 while other packages' tests run), and a probe
// still in a tap's ring then would count as lost; 300 ms was within
// reach of that.
const quiet = time.Second

// tapDropped is what tap name in L dropped on its way to the link (tun
// drops a frame when the queue's ring, tx_queue_len frames, is full: a
// link pump kept off the CPU while probes come at 20 a millisecond).
// Those frames never reached the link: a count of what the link did
// must leave them out.
func (w *world) tapDropped(name string) int {
	w.t.Helper()
	l, err := w.nlL.LinkByName(name)
	w.must(err)
	return int(l.Attrs().Statistics.TxDropped)
}

// TestImpairLossKernel: --a-to-b-loss 20% loses 14-26% of 2000 probes
// A -> B, and the link counts what it dropped.
func TestImpairLossKernel(t *testing.T) {
	w, l := impairedWorld(t, &vmconfig.Impairment{Loss: 20}, nil)
	before := w.tapDropped("tA")
	seqs := w.probes(6001).oneWay(2000, quiet)
	uniq := map[uint32]bool{}
	for _, s := range seqs {
		uniq[s] = true
	}
	in := 2000 - (w.tapDropped("tA") - before)
	lost := 100 * float64(in-len(uniq)) / float64(in)
	s := l.Stats()
	t.Logf("lost %.1f%% of the %d of 2000 that reached the link; link: %+v, drops %+v", lost, in, s.AtoB.Impaired, s.AtoB.Drops)
	if lost < 14 || lost > 26 {
		t.Errorf("lost %.1f%% of 2000 probes, want 14-26%%", lost)
	}
	if s.AtoB.Impaired == nil || s.AtoB.Impaired.Lost < uint64(in)*14/100 || s.BtoA.Impaired != nil {
		t.Errorf("stats: %+v / %+v", s.AtoB.Impaired, s.BtoA.Impaired)
	}
}

// TestImpairDelayKernel: --delay 20ms both ways makes every round trip
// (an echo of our own) last at least 40 ms, and the fastest of 25 at most
// 60 ms. The upper bound is on the fastest, not the median: load only
// adds to a round trip (four passes through userspace programs), and a
// median of 25 on a machine at load 20 went past the 50 ms the test once
// asked for; the fastest stays near 40 unless the delay itself is wrong
// (applied twice: 80).
func TestImpairDelayKernel(t *testing.T) {
	im := &vmconfig.Impairment{Delay: 20 * time.Millisecond}
	w, _ := impairedWorld(t, im, im)
	p := w.probes(6002)
	p.warm()
	go func() { // echo in B
		buf := make([]byte, 64)
		for {
			p.rx.SetReadDeadline(time.Time{})
			n, from, err := p.rx.ReadFrom(buf)
			if err != nil {
				return
			}
			p.rx.WriteTo(buf[:n], from)
		}
	}()
	var rtts []time.Duration
	buf := make([]byte, 64)
	for i := range 25 {
		start := time.Now()
		p.send(uint32(i))
		for {
			p.tx.SetReadDeadline(time.Now().Add(10 * time.Second)) // ends when the echo comes
			n, _, err := p.tx.ReadFrom(buf)
			if err != nil {
				t.Fatalf("probe %d: no echo: %v", i, err)
			}
			if n >= 4 && binary.BigEndian.Uint32(buf) == uint32(i) {
				break
			}
		}
		rtts = append(rtts, time.Since(start))
	}
	slices.Sort(rtts)
	med := rtts[len(rtts)/2]
	t.Logf("round trips %v .. %v, median %v", rtts[0], rtts[len(rtts)-1], med)
	if rtts[0] < 40*time.Millisecond || rtts[0] > 60*time.Millisecond {
		t.Errorf("round trips %v .. %v with 20 ms each way, want the fastest 40-60 ms", rtts[0], rtts[len(rtts)-1])
	}
}

// TestImpairDuplicateKernel: --duplicate 10% one way delivers about a
// tenth of the probes twice.
func TestImpairDuplicateKernel(t *testing.T) {
	w, l := impairedWorld(t, &vmconfig.Impairment{Duplicate: 10}, nil)
	before := w.tapDropped("tA")
	seqs := w.probes(6003).oneWay(1000, quiet)
	in := 1000 - (w.tapDropped("tA") - before)
	count := map[uint32]int{}
	for _, s := range seqs {
		count[s]++
	}
	dups := len(seqs) - len(count)
	t.Logf("%d probes arrived, %d of the %d of 1000 that reached the link distinct, %d duplicates; link: %+v", len(seqs), len(count), in, dups, l.Stats().AtoB.Impaired)
	// in is a lower bound: tA's tx_dropped may count frames other than
	// probes too.
	if len(count) < in || dups < in*5/100 || dups > 1000*15/100 {
		t.Errorf("%d distinct probes of the %d that reached the link and %d duplicates, want all and 5-15%%", len(count), in, dups)
	}
}

// TestImpairReorderKernel: --delay 10ms --reorder 25% one way sends a
// quarter of the probes ahead of earlier, delayed ones.
func TestImpairReorderKernel(t *testing.T) {
	w, _ := impairedWorld(t, &vmconfig.Impairment{Delay: 10 * time.Millisecond, Reorder: 25}, nil)
	before := w.tapDropped("tA")
	seqs := w.probes(6004).oneWay(1000, quiet)
	in := 1000 - (w.tapDropped("tA") - before)
	late, high := 0, -1
	for _, s := range seqs {
		if int(s) < high {
			late++
		}
		high = max(high, int(s))
	}
	t.Logf("%d of %d probes arrived after a later one", late, len(seqs))
	if len(seqs) < in || len(seqs) > 1000 || late < in/10 {
		t.Errorf("%d probes of the %d of 1000 that reached the link arrived, %d after a later one; want all and at least a tenth", len(seqs), in, late)
	}
}

// iperf runs iperf3 TCP from A to B for two seconds and returns the
// received rate in Mbit/s.
func (w *world) iperf(t *testing.T) float64 {
	t.Helper()
	testenv.RequireProgram(t, "iperf3")
	srv := exec.Command("iperf3", "-s", "-1", "-B", w.ipB.String(), "-p", "5201")
	startIn(t, w.B, srv)
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	var r struct {
		End struct {
			Received struct {
				BPS float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	// Until the server listens: iperf3 -J reports a refused connection
	// in its JSON, with or without a failing exit status.
	for try := 0; ; try++ {
		var out bytes.Buffer
		cli := exec.Command("iperf3", "-c", w.ipB.String(), "-p", "5201", "-t", "2", "-J")
		cli.Stdout = &out
		var err error
		testenv.Do(t, w.A, func() error { err = cli.Run(); return nil })
		r.Error = ""
		jerr := json.Unmarshal(out.Bytes(), &r)
		if err == nil && jerr == nil && r.Error == "" {
			break
		}
		if try == 30 {
			t.Fatalf("iperf3: %v\n%s", errors.Join(err, jerr), out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return r.End.Received.BPS / 1e6
}

// TestImpairRateKernel: --rate 100mbit gives iperf3 TCP at most 105
// Mbit/s, and not far below 100: the floor is loose (20) because a loaded
// 2-core machine starves iperf3 itself (a run in a full suite gave 80, one
// at load 19 gave 45.6 and failed the floor of 60 the test had), and
// still catches a shaper off by a factor (bytes for bits: 12.5).
func TestImpairRateKernel(t *testing.T) {
	im := &vmconfig.Impairment{Rate: 100_000_000}
	w, _ := impairedWorld(t, im, im)
	mbit := w.iperf(t)
	t.Logf("iperf3 TCP through --rate 100mbit: %.1f Mbit/s", mbit)
	if mbit < 20 || mbit > 105 {
		t.Errorf("%.1f Mbit/s through --rate 100mbit, want 20-105", mbit)
	}
}

// TestImpairDelayThroughputKernel: a delay does not hold up the
// forwarding loop (GNS3's ubridge sleeps inline, and a 1 ms delay takes
// its iperf3 from 2 Gbit/s to 5 Mbit/s): with --delay 5ms both ways TCP
// still carries at least 50 Mbit/s. A loop that waited out each frame's
// delay would carry one frame per 5 ms (2.4 Mbit/s); the floor sits far
// above that and far below what an idle machine reaches (1-3 Gbit/s), as
// a loaded one gave 538 (the floor was 200 then; 50 leaves room for a
// machine at load 20 and still is 20 times the inline loop's rate).
func TestImpairDelayThroughputKernel(t *testing.T) {
	im := &vmconfig.Impairment{Delay: 5 * time.Millisecond}
	w, l := impairedWorld(t, im, im)
	mbit := w.iperf(t)
	t.Logf("iperf3 TCP through --delay 5ms both ways: %.0f Mbit/s; link: %+v", mbit, l.Stats().AtoB.Impaired)
	if mbit < 50 {
		t.Errorf("%.0f Mbit/s through a 5 ms delay each way, want at least 50", mbit)
	}
}

// TestImpairSetKernel: impairments change while the link runs; a
// direction started without any refuses, and nothing changes.
func TestImpairSetKernel(t *testing.T) {
	w, l := impairedWorld(t, &vmconfig.Impairment{}, nil)
	p := w.probes(6005)
	if got := len(p.oneWay(200, quiet)); got != 200 {
		t.Fatalf("%d of 200 probes arrived through a delay 0 stage", got)
	}
	if err := l.SetImpairment(&vmconfig.Impairment{Loss: 100}, nil); err != nil {
		t.Fatal(err)
	}
	if got := len(p.oneWay(200, quiet)); got != 0 {
		t.Errorf("%d of 200 probes arrived after loss was set to 100%%", got)
	}
	if s := l.Stats(); s.AtoB.Impairment != "loss 100%" {
		t.Errorf("stats show %q", s.AtoB.Impairment)
	}
	err := l.SetImpairment(&vmconfig.Impairment{}, &vmconfig.Impairment{Loss: 5})
	if err == nil || !strings.Contains(err.Error(), "started without impairments") {
		t.Errorf("setting the plain direction: %v", err)
	}
	if s := l.Stats(); s.AtoB.Impairment != "loss 100%" || s.BtoA.Impairment != "" {
		t.Errorf("a refused change changed %q / %q", s.AtoB.Impairment, s.BtoA.Impairment)
	}
}
