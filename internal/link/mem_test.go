package link

import (
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/vmnet/vmnet/vmconfig"
	"github.com/vmnet/vmnet/vnethdr"
)

// memQueue stands in for a device in the userspace-only benchmarks, the
// allocation test and the fuzz target: it takes what a pump writes and
// keeps the last batch. Everything that involves a kernel is tested in
// link_test.go against real devices.
type memQueue struct {
	frames int
	bytes  int
	last   [][]byte
	keep   bool
}

func (m *memQueue) read([][]byte, int, []int) (int, error) { panic("memQueue is write-only") }
func (m *memQueue) setDeadline(time.Time) error            { return nil }
func (m *memQueue) write(bufs [][]byte, off int) (int, error) {
	for _, b := range bufs {
		m.frames++
		m.bytes += len(b) - off
		if m.keep {
			m.last = append(m.last, append([]byte(nil), b[off:]...))
		}
	}
	return len(bufs), nil
}

// memEndpoint is an endpoint with the given header size, MTU and GSO
// acceptance, backed by a memQueue.
func memEndpoint(name string, hdr int, mtu int, gso bool) (*Endpoint, *memQueue) {
	q := &memQueue{}
	e := &Endpoint{spec: name, hdr: vnethdr.Format{Size: hdr}, maxFrame: mtu + ethOverhead, gso: gso && hdr > 0,
		gsoMax: MaxFrame, segCheck: true, queues: []queueIO{q}}
	if name == "udp" {
		e.maxFrame, e.gsoMax, e.segCheck = MaxUDPFrame, MaxUDPFrame, false
	}
	return e, q
}

func memPump(src, dst *Endpoint, pcap string) *pump {
	l := &Link{a: src, b: dst, batch: 1}
	if pcap != "" {
		c, err := newCapture(pcap)
		if err != nil {
			panic(err)
		}
		l.capture = c
	}
	return newPump(l, src, dst, 0, &l.ab)
}

// tcpSuperFrame builds an IPv4 TCP super-frame with payload bytes and a
// partial checksum, as a tap with TSO hands it out, and its vnet header.
func tcpSuperFrame(tb testing.TB, payload int) (vnethdr.Hdr, []byte) {
	data := make([]byte, payload)
	for i := range data {
		data[i] = byte(i)
	}
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Flags: layers.IPv4DontFragment, Protocol: layers.IPProtocolTCP,
		SrcIP: net.IPv4(10, 0, 0, 1), DstIP: net.IPv4(10, 0, 0, 2), Id: 1}
	tcp := &layers.TCP{SrcPort: 1, DstPort: 2, Seq: 1, ACK: true, PSH: true, Window: 1000}
	tcp.SetNetworkLayerForChecksum(ip)
	b := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(b, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp, gopacket.Payload(data)); err != nil {
		tb.Fatal(err)
	}
	f := b.Bytes()
	binary.BigEndian.PutUint16(f[34+16:], vnethdr.PseudoHeaderChecksum(6, f[26:30], f[30:34], len(f)-34))
	return vnethdr.Hdr{Flags: vnethdr.FlagNeedsCsum, GSOType: vnethdr.GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}, f
}

// load puts hdr and frame into the pump's first read buffer the way the
// source endpoint reads them and returns the read size.
func load(p *pump, hdr vnethdr.Hdr, frame []byte) int {
	h := p.src.hdr.Size
	if h > 0 {
		p.src.hdr.Encode(p.rbufs[0][Headroom-h:], hdr)
	}
	copy(p.rbufs[0][Headroom:], frame)
	return h + len(frame)
}

// BenchmarkForward measures the userspace part of forwarding one 64 KB
// super-frame: pass through, segment for a device without vnet_hdr, cut
// for a tunnel, and with a capture. No syscalls: see tests/bench-link.sh
// for throughput through the kernel.
func BenchmarkForward(b *testing.B) {
	for _, bc := range []struct {
		name    string
		dst     func() (*Endpoint, *memQueue)
		payload int
		pcap    bool
		delay0  bool // a "delay 0" impairment stage on the direction
	}{
		{"passthrough", func() (*Endpoint, *memQueue) { return memEndpoint("tap", 10, 1500, true) }, 45 * 1448, false, false},
		{"segment", func() (*Endpoint, *memQueue) { return memEndpoint("tap", 0, 1500, false) }, 45 * 1448, false, false},
		{"tunnel-cut", func() (*Endpoint, *memQueue) { return memEndpoint("udp", 10, 0, true) }, 65535 - 40, false, false},
		{"passthrough-pcap", func() (*Endpoint, *memQueue) { return memEndpoint("tap", 10, 1500, true) }, 45 * 1448, true, false},
		// The same two with a "delay 0" stage: the ratio to the plain
		// ones is the cost of a configured, idle impairment.
		{"passthrough-delay0", func() (*Endpoint, *memQueue) { return memEndpoint("tap", 10, 1500, true) }, 45 * 1448, false, true},
		{"segment-delay0", func() (*Endpoint, *memQueue) { return memEndpoint("tap", 0, 1500, false) }, 45 * 1448, false, true},
		{"small", func() (*Endpoint, *memQueue) { return memEndpoint("tap", 10, 1500, true) }, 1000, false, false},
		{"small-delay0", func() (*Endpoint, *memQueue) { return memEndpoint("tap", 10, 1500, true) }, 1000, false, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			src, _ := memEndpoint("tap", 10, 1500, true)
			dst, q := bc.dst()
			pcap := ""
			if bc.pcap {
				pcap = b.TempDir() + "/b.pcap"
			}
			p := memPump(src, dst, pcap)
			if bc.delay0 {
				p.l.ab.imp = new(impairCounters)
				p.st = newStage(vmconfig.Impairment{Delay: 0}, Headroom-dst.hdr.Size, p.l.ab.imp, monoClock(), 1)
			}
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
			}
			b.StopTimer()
			if q.frames < b.N {
				b.Fatalf("%d frames written for %d super-frames", q.frames, b.N)
			}
			if p.local.Drops.Total() != 0 {
				b.Fatalf("drops: %+v", p.local.Drops)
			}
			if bc.delay0 && p.l.ab.imp.delayed.Load() != 0 {
				b.Fatal("a delay 0 stage queued frames")
			}
		})
	}
}

// TestForwardAllocs: forwarding allocates nothing per frame once the
// pump's buffers exist (the segment pool is made on first use).
func TestForwardAllocs(t *testing.T) {
	for _, tc := range []struct {
		name string
		hdr  int
		gso  bool
		udp  bool
		pcap bool
	}{{"passthrough", 10, true, false, false}, {"segment", 0, false, false, false}, {"tunnel-cut", 10, true, true, false}, {"capture", 10, true, false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			src, _ := memEndpoint("tap", 10, 1500, true)
			name := "tap"
			if tc.udp {
				name = "udp"
			}
			dst, q := memEndpoint(name, tc.hdr, 1500, tc.gso)
			pcap := ""
			if tc.pcap {
				pcap = t.TempDir() + "/a.pcap"
			}
			p := memPump(src, dst, pcap)
			hdr, frame := tcpSuperFrame(t, 65535-40)
			size := load(p, hdr, frame)
			p.handleNow(p.rbufs[0], size) // warm up: the segment pool
			p.flush()
			if a := testing.AllocsPerRun(50, func() {
				p.handleNow(p.rbufs[0], size)
				p.flush()
			}); a != 0 {
				t.Errorf("%.1f allocations per super-frame", a)
			}
			if q.frames == 0 || p.local.Drops.Total() != 0 {
				t.Errorf("wrote %d frames, drops %+v", q.frames, p.local.Drops)
			}
		})
	}
}

// handleNow is handle for tests that reuse one read buffer frame after
// frame: the frame goes out (GRO included) before the buffer is reused,
// as at the end of a read batch.
func (p *pump) handleNow(buf []byte, size int) {
	p.handle(buf, size)
	p.groFlush()
}
