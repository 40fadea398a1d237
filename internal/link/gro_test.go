package link

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/vnethdr"
)

// TestGROTransfer: frames that reach the link one by one (tA has no
// vnet_hdr, so A's kernel segments before handing them over) go into tB,
// which takes super-frames, merged by software GRO. The real kernel
// judges what vmnet wrote: tB's write path (virtio_net_hdr_to_skb) must
// take every super-frame, B's sockets must get every byte in order, and
// B's checksum and length error counters must not move. The counters
// must show merged super-frames: fewer frames written than read.
func TestGROTransfer(t *testing.T) {
	w := newWorld(t, true)
	l, err := New(w.open("tap:tA,vnet_hdr=off"), w.open("tap:tB"), Options{Datapath: DatapathUserspace})
	w.must(err)
	w.plug("tA", "brA")
	w.plug("tB", "brB")
	w.run(l)
	w.tcpTransfer(transferSize)
	s := l.Stats()
	t.Logf("after TCP:\n%s", s)
	if s.AtoB.Coalesced == 0 || s.AtoB.Merged <= s.AtoB.Coalesced {
		t.Errorf("A->B from a tap without vnet_hdr into one with it: %d frames merged into %d super-frames; want GRO", s.AtoB.Merged, s.AtoB.Coalesced)
	}
	if s.AtoB.TxFrames >= s.AtoB.Frames {
		t.Errorf("A->B: read %d frames and wrote %d; GRO should write fewer", s.AtoB.Frames, s.AtoB.TxFrames)
	}
	if s.AtoB.SuperFrames != 0 {
		t.Errorf("A->B: %d super-frames read from a tap without vnet_hdr", s.AtoB.SuperFrames)
	}
	// B->A goes into a tap without vnet_hdr: no GRO there.
	if s.BtoA.Coalesced != 0 {
		t.Errorf("B->A into a tap without vnet_hdr: %d super-frames coalesced", s.BtoA.Coalesced)
	}

	w.udpEcho()
	w.udpBurst(t, 1400, 40, 25)
	s2 := l.Stats()
	t.Logf("after UDP:\n%s", s2)
	if l.b.uso {
		if s2.AtoB.Coalesced == s.AtoB.Coalesced {
			t.Errorf("A->B: no UDP datagrams merged (USO) during the UDP burst")
		}
	} else {
		t.Logf("tB does not take USO on this kernel: UDP is not merged")
	}
	if d := s2.AtoB.Drops.Total() + s2.BtoA.Drops.Total(); d != 0 {
		t.Errorf("%d drops", d)
	}
	testenv.NoSNMPErrors(t, w.B, "B")
}

// TestGROTunnel: MTU-sized frames cross a UDP tunnel as they came (the
// sending link does not merge towards a tunnel, so datagrams stay within
// the path MTU) and the receiving link merges them for its tap, which
// takes GSO. The kernel judges as in TestGROTransfer.
func TestGROTunnel(t *testing.T) {
	w := newWorld(t, true)
	l1, err := New(w.open("tap:tA,vnet_hdr=off"), w.open("udp:127.0.0.1:7011,remote=127.0.0.1:7012"), Options{})
	w.must(err)
	l2, err := New(w.open("udp:127.0.0.1:7012,remote=127.0.0.1:7011"), w.open("tap:tB"), Options{})
	w.must(err)
	w.plug("tA", "brA")
	w.plug("tB", "brB")
	w.run(l1)
	w.run(l2)
	w.tcpTransfer(transferSize)
	s1, s2 := l1.Stats(), l2.Stats()
	t.Logf("stats:\n%s\n%s", s1, s2)
	if s1.AtoB.Coalesced != 0 || s1.AtoB.TxFrames != s1.AtoB.Frames {
		t.Errorf("into the tunnel: %d super-frames merged, %d frames read, %d sent; want MTU-sized frames sent as read", s1.AtoB.Coalesced, s1.AtoB.Frames, s1.AtoB.TxFrames)
	}
	if s2.AtoB.Coalesced == 0 || s2.AtoB.TxFrames >= s2.AtoB.Frames {
		t.Errorf("out of the tunnel into a tap with vnet_hdr: %d frames read, merged into %d super-frames, %d written; want GRO", s2.AtoB.Frames, s2.AtoB.Coalesced, s2.AtoB.TxFrames)
	}
	if d := s2.AtoB.Drops.Total(); d != 0 {
		t.Errorf("%d drops out of the tunnel", d)
	}
	testenv.NoSNMPErrors(t, w.B, "B")
}

// udpBurst sends rounds UDP_SEGMENT sends of segs datagrams of size bytes
// each from A to B (A's kernel hands them to the link's tap back to back,
// so a read batch holds many of one flow) and checks that each datagram
// arrives whole, with its own content; a few may be lost.
func (w *world) udpBurst(t *testing.T, size, segs, rounds int) {
	t.Helper()
	var srv, cli *net.UDPConn
	testenv.Do(t, w.B, func() (err error) {
		srv, err = net.ListenUDP("udp4", &net.UDPAddr{IP: w.ipB, Port: 5003})
		return err
	})
	defer srv.Close()
	srv.SetReadBuffer(8 << 20)
	testenv.Do(t, w.A, func() (err error) {
		cli, err = net.ListenUDP("udp4", &net.UDPAddr{IP: w.ipA})
		return err
	})
	defer cli.Close()
	rc, _ := cli.SyscallConn()
	var serr error
	rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, size) })
	if serr != nil {
		t.Fatalf("UDP_SEGMENT: %v", serr)
	}
	datagram := func(seq int) []byte {
		d := make([]byte, size)
		binary.BigEndian.PutUint32(d, uint32(seq))
		for j := 4; j < size; j++ {
			d[j] = byte(seq*7 + j)
		}
		return d
	}
	to := &net.UDPAddr{IP: w.ipB, Port: 5003}
	got := 0
	buf := make([]byte, 65536)
	for r := 0; r < rounds; r++ {
		var msg []byte
		for k := 0; k < segs; k++ {
			msg = append(msg, datagram(r*segs+k)...)
		}
		if _, err := cli.WriteToUDP(msg, to); err != nil {
			t.Fatalf("udp send of %d datagrams: %v", segs, err)
		}
		srv.SetReadDeadline(time.Now().Add(2 * time.Second))
		for k := 0; k < segs; k++ {
			n, _, err := srv.ReadFromUDP(buf)
			if err != nil {
				break
			}
			seq := int(binary.BigEndian.Uint32(buf))
			if n != size || !bytes.Equal(buf[:n], datagram(seq)) {
				t.Fatalf("udp datagram of %d bytes (seq %d) arrived damaged", n, seq)
			}
			got++
			if seq == r*segs+segs-1 {
				break
			}
		}
	}
	if got < rounds*segs*9/10 {
		t.Errorf("udp burst: %d of %d datagrams arrived", got, rounds*segs)
	}
	t.Logf("udp burst: %d of %d datagrams of %d bytes arrived intact", got, rounds*segs, size)
}

// TestGROAllocs: merging a batch of MTU-sized frames and writing the
// super-frame allocates nothing once the pump's buffers exist.
func TestGROAllocs(t *testing.T) {
	src, _ := memEndpoint("tap", 0, 1500, false)
	dst, q := memEndpoint("tap", 10, 1500, true)
	l := &Link{a: src, b: dst, batch: 32}
	p := newPump(l, src, dst, 0, &l.ab)
	frames := groFrames(t, 32, 1448)
	sizes := make([]int, len(frames))
	for i, f := range frames {
		sizes[i] = copy(p.rbufs[i][Headroom:], f)
	}
	batch := func() {
		for i := range frames {
			p.handle(p.rbufs[i], sizes[i])
		}
		p.groFlush()
		p.flush()
	}
	batch() // warm up: the segment pool
	if a := testing.AllocsPerRun(50, batch); a != 0 {
		t.Errorf("%.1f allocations per batch of %d frames", a, len(frames))
	}
	if q.frames == 0 || p.local.Coalesced == 0 || p.local.Drops.Total() != 0 {
		t.Errorf("wrote %d frames, coalesced %d, drops %+v", q.frames, p.local.Coalesced, p.local.Drops)
	}
	if p.local.TxFrames != p.local.Coalesced {
		t.Errorf("%d frames written for %d super-frames: want one each", p.local.TxFrames, p.local.Coalesced)
	}
}

// groFrames segments a TCP super-frame into n frames of mss payload bytes with
// complete checksums, as a tap without vnet_hdr hands them out.
func groFrames(tb testing.TB, n, mss int) [][]byte {
	hdr, frame := tcpSuperFrame(tb, n*mss)
	hdr.GSOSize = uint16(mss)
	pkt, err := vnethdr.Parse(hdr, frame, vnethdr.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	out := make([][]byte, pkt.Segments())
	for i := range out {
		out[i] = make([]byte, 1514)
	}
	sizes := make([]int, len(out))
	k, err := pkt.Segment(out, sizes)
	if err != nil || k != n {
		tb.Fatalf("segment: %d of %d, %v", k, n, err)
	}
	for i := range out {
		out[i] = out[i][:sizes[i]]
	}
	return out
}

// BenchmarkGRO measures the userspace part of forwarding a batch of 32
// MTU-sized frames of one TCP flow into a destination that takes
// super-frames, with GRO (one 46 KB super-frame) and without (32 frames).
func BenchmarkGRO(b *testing.B) {
	for _, bc := range []struct {
		name  string
		noGRO bool
	}{{"gro", false}, {"nogro", true}} {
		b.Run(bc.name, func(b *testing.B) {
			src, _ := memEndpoint("tap", 0, 1500, false)
			dst, _ := memEndpoint("tap", 10, 1500, true)
			l := &Link{a: src, b: dst, batch: 32, noGRO: bc.noGRO}
			p := newPump(l, src, dst, 0, &l.ab)
			frames := groFrames(b, 32, 1448)
			sizes := make([]int, len(frames))
			total := 0
			for i, f := range frames {
				sizes[i] = copy(p.rbufs[i][Headroom:], f)
				total += sizes[i]
			}
			b.SetBytes(int64(total))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for j := range frames {
					p.handle(p.rbufs[j], sizes[j])
				}
				p.groFlush()
				p.flush()
			}
		})
	}
}

// FuzzGROBatch: a read batch (2-byte length + frame, repeated) from a tap
// without vnet_hdr, or from one with it (each frame then starts with its
// 10-byte vnet header), goes through a pump with GRO into a tap that takes
// GSO and into a tunnel-like endpoint (which cuts what is longer than a
// datagram).
// Invariants: no panic; every frame read is dropped once or forwarded;
// every frame written passes the kernel's rules (vnethdr.Parse) and the
// frames written split into exactly as many segments as were forwarded
// (for sources without GSO).
func FuzzGROBatch(f *testing.F) {
	// Small segments: the fuzzer is slow with large inputs.
	var seed, seedHdr []byte
	for _, fr := range groFrames(f, 6, 40) {
		seed = binary.BigEndian.AppendUint16(seed, uint16(len(fr)))
		seed = append(seed, fr...)
	}
	// The same with partial checksums and NEEDS_CSUM headers.
	hdr, frame := tcpSuperFrame(f, 6*40)
	hdr.GSOSize = 40
	pkt, err := vnethdr.Parse(hdr, frame, vnethdr.Options{PartialCsum: true})
	if err != nil {
		f.Fatal(err)
	}
	segs, sizes := make([][]byte, pkt.Segments()), make([]int, pkt.Segments())
	for i := range segs {
		segs[i] = make([]byte, 200)
	}
	pkt.Segment(segs, sizes)
	hb := make([]byte, vnethdr.HdrLen)
	pkt.SegmentHdr().Encode(hb)
	for i := range segs {
		seedHdr = binary.BigEndian.AppendUint16(seedHdr, uint16(10+sizes[i]))
		seedHdr = append(append(seedHdr, hb...), segs[i][:sizes[i]]...)
	}
	f.Add(seed)
	f.Add(seed[:len(seed)/2])
	f.Add(seedHdr)
	f.Add([]byte{0, 3, 1, 2, 3})
	type target struct {
		p *pump
		q *memQueue
	}
	var targets []target
	for _, hdrSize := range []int{0, 10} {
		for _, name := range []string{"tap", "udp"} {
			src, _ := memEndpoint("tap", hdrSize, 1500, hdrSize > 0)
			dst, q := memEndpoint(name, 10, 1500, true)
			dst.uso = true
			q.keep = true
			l := &Link{a: src, b: dst, batch: 32}
			targets = append(targets, target{newPump(l, src, dst, 0, &l.ab), q})
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, tg := range targets {
			p, q := tg.p, tg.q
			h := p.src.hdr.Size
			p.local = DirStats{}
			q.frames, q.last = 0, q.last[:0]
			d := data
			n := 0
			for len(d) >= 2 && n < len(p.rbufs) {
				k := min(int(binary.BigEndian.Uint16(d)), len(d)-2, h+MaxFrame)
				p.sizes[n] = copy(p.rbufs[n][Headroom-h:], d[2:2+k])
				d = d[2+k:]
				n++
			}
			for i := 0; i < n; i++ {
				p.handle(p.rbufs[i], p.sizes[i])
			}
			p.groFlush()
			p.flush()
			if p.local.Frames != uint64(n) {
				t.Fatalf("%s: %d frames read, %d counted", p.dst, n, p.local.Frames)
			}
			segs := 0
			for _, w := range q.last {
				h, err := vnethdr.Decode(w)
				if err != nil {
					t.Fatal(err)
				}
				if len(w) > 10+MaxFrame || (p.dst.String() == "udp" && len(w) > 65507) {
					t.Fatalf("%s: %d-byte frame written", p.dst, len(w))
				}
				pkt, err := vnethdr.Parse(h, w[10:], vnethdr.Options{})
				if err != nil {
					t.Fatalf("%s: wrote a frame the kernel refuses (%+v): %v", p.dst, h, err)
				}
				segs += pkt.Segments()
			}
			if fwd := n - int(p.local.Drops.Total()); p.local.SuperFrames == 0 && segs != fwd {
				t.Fatalf("%s: %d frames forwarded, the %d written split into %d (stats %+v)", p.dst, fwd, len(q.last), segs, p.local)
			}
		}
	})
}

// TestGROKeepsDataValid: a frame GRO passes through keeps the header it
// was read with (DATA_VALID spares the destination kernel a checksum
// pass); a merged one gets the header that describes it.
func TestGROKeepsDataValid(t *testing.T) {
	src, _ := memEndpoint("tap", 10, 1500, true)
	dst, q := memEndpoint("tap", 10, 1500, true)
	q.keep = true
	l := &Link{a: src, b: dst, batch: 4}
	p := newPump(l, src, dst, 0, &l.ab)
	frames := groFrames(t, 2, 1448)
	for i, f := range append([][]byte{lldpFrame}, frames...) {
		src.hdr.Encode(p.rbufs[i][Headroom-10:], vnethdr.Hdr{Flags: vnethdr.FlagDataValid})
		p.sizes[i] = 10 + copy(p.rbufs[i][Headroom:], f)
		p.handle(p.rbufs[i], p.sizes[i])
	}
	p.groFlush()
	p.flush()
	if len(q.last) != 2 {
		t.Fatalf("%d frames written, want the LLDP frame and one merged", len(q.last))
	}
	if h, _ := vnethdr.Decode(q.last[0]); h.Flags != vnethdr.FlagDataValid || !bytes.Equal(q.last[0][10:], lldpFrame) {
		t.Errorf("passed frame: header %+v, frame changed %v", h, !bytes.Equal(q.last[0][10:], lldpFrame))
	}
	if h, _ := vnethdr.Decode(q.last[1]); h.GSOType != vnethdr.GSOTCPv4 || h.Flags != vnethdr.FlagNeedsCsum {
		t.Errorf("merged frame: header %+v", h)
	}
}

// TestGROPartialCsum: MTU-sized frames with partial checksums (NEEDS_CSUM,
// from a device with checksum offload but no TSO) are merged too: their
// checksums are completed first. Splitting the super-frame again gives
// frames with valid checksums.
func TestGROPartialCsum(t *testing.T) {
	src, _ := memEndpoint("tap", 10, 1500, true)
	dst, q := memEndpoint("tap", 10, 1500, true)
	q.keep = true
	l := &Link{a: src, b: dst, batch: 8}
	p := newPump(l, src, dst, 0, &l.ab)
	hdr, frame := tcpSuperFrame(t, 8*1448)
	pkt, err := vnethdr.Parse(hdr, frame, vnethdr.Options{PartialCsum: true})
	if err != nil {
		t.Fatal(err)
	}
	segs, sizes := make([][]byte, pkt.Segments()), make([]int, pkt.Segments())
	for i := range segs {
		segs[i] = p.rbufs[i][Headroom:]
	}
	n, err := pkt.Segment(segs, sizes)
	if err != nil || n != 8 {
		t.Fatalf("segment: %d, %v", n, err)
	}
	sh := pkt.SegmentHdr()
	if sh.Flags != vnethdr.FlagNeedsCsum {
		t.Fatalf("segments without NEEDS_CSUM: %+v", sh)
	}
	for i := 0; i < n; i++ {
		src.hdr.Encode(p.rbufs[i][Headroom-10:], sh)
		p.handle(p.rbufs[i], 10+sizes[i])
	}
	p.groFlush()
	p.flush()
	if len(q.last) != 1 || p.local.Merged != 8 {
		t.Fatalf("%d frames written, %d merged; want the 8 in one super-frame", len(q.last), p.local.Merged)
	}
	h, _ := vnethdr.Decode(q.last[0])
	back, err := vnethdr.Parse(h, q.last[0][10:], vnethdr.Options{})
	if err != nil {
		t.Fatal(err)
	}
	out, outSizes := make([][]byte, back.Segments()), make([]int, back.Segments())
	for i := range out {
		out[i] = make([]byte, 1514)
	}
	if _, err := back.Segment(out, outSizes); err != nil {
		t.Fatal(err)
	}
	whole := groFrames(t, 8, 1448) // the same segments with complete checksums
	for i := range out {
		if !bytes.Equal(out[i][:outSizes[i]], whole[i]) {
			t.Fatalf("segment %d of the merged frame differs from the original with its checksum completed", i)
		}
	}
}

// TestGROPacketSource: an AF_PACKET endpoint on a device whose peer sends
// without TSO/GSO gets MTU-sized frames, with partial checksums (the veth
// offloads checksums); the link completes and merges them for tB, and the
// real kernel takes the result (the stream arrives intact, no error
// counter moves in B).
func TestGROPacketSource(t *testing.T) {
	testenv.RequireProgram(t, "ethtool")
	w := newWorld(t, true)
	testenv.Do(t, w.A, func() error { return exec1("ethtool", "-K", "eth0", "tso", "off", "gso", "off") })
	l, err := New(w.open("packet:vA"), w.open("tap:tB"), Options{Datapath: DatapathUserspace})
	w.must(err)
	w.plug("tB", "brB")
	w.run(l)
	w.tcpTransfer(transferSize)
	s := l.Stats()
	t.Logf("stats:\n%s", s)
	if s.AtoB.SuperFrames != 0 {
		t.Errorf("A->B: %d super-frames read although A sends without TSO/GSO", s.AtoB.SuperFrames)
	}
	if s.AtoB.Coalesced == 0 || s.AtoB.TxFrames >= s.AtoB.Frames {
		t.Errorf("A->B from AF_PACKET into a tap with vnet_hdr: %d frames read, merged into %d super-frames, %d written; want GRO", s.AtoB.Frames, s.AtoB.Coalesced, s.AtoB.TxFrames)
	}
	if d := s.AtoB.Drops.Total(); d != 0 {
		t.Errorf("A->B: %d drops", d)
	}
	testenv.NoSNMPErrors(t, w.B, "B")
}
