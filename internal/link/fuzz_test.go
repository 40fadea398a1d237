package link

import (
	"testing"

	"github.com/vmnet/vmnet/vnethdr"
)

// FuzzHandle feeds arbitrary tunnel datagrams (10-byte vnet header, then
// a frame: what a remote peer controls) to the forwarding decision, towards
// a tap without vnet_hdr (segmentation), a tap with it (passthrough) and
// another tunnel (cutting). Invariants: no panic; each datagram is either
// dropped for exactly one reason or produces frames; a device without
// vnet_hdr never gets a frame over its MTU; a tunnel never gets a
// datagram over the UDP limit; a GSO frame passes whole only to a device
// that takes GSO.
func FuzzHandle(f *testing.F) {
	hdr, frame := tcpSuperFrame(f, 3*1448+100)
	hb := make([]byte, vnethdr.HdrLen)
	hdr.Encode(hb)
	f.Add(append(hb, frame...))
	f.Add(append(make([]byte, vnethdr.HdrLen), lldpFrame...))
	f.Add([]byte{1, 2, 3})
	// Pumps (and their buffers) are made once; each input resets them.
	type target struct {
		name string
		hdr  int
		p    *pump
		q    *memQueue
		dst  *Endpoint
	}
	var targets []target
	for _, dc := range []struct {
		name string
		hdr  int
		gso  bool
	}{{"tap", 0, false}, {"tap", 10, true}, {"udp", 10, true}} {
		src, _ := memEndpoint("udp", 10, 0, true)
		dst, q := memEndpoint(dc.name, dc.hdr, 1500, dc.gso)
		q.keep = true
		targets = append(targets, target{dc.name, dc.hdr, memPump(src, dst, ""), q, dst})
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > vnethdr.HdrLen+MaxFrame {
			return
		}
		for _, dc := range targets {
			p, q, dst := dc.p, dc.q, dc.dst
			p.local = DirStats{}
			q.frames, q.last = 0, q.last[:0]
			copy(p.rbufs[0][Headroom-vnethdr.HdrLen:], data)
			p.handle(p.rbufs[0], len(data))
			p.flush()
			d := p.local.Drops.Total()
			switch {
			case p.local.Frames != 1:
				t.Fatalf("%s: one datagram counted as %d frames", dc.name, p.local.Frames)
			case d > 1:
				t.Fatalf("%s: one datagram dropped %d times: %+v", dc.name, d, p.local.Drops)
			case d == 1 && q.frames != 0:
				t.Fatalf("%s: dropped (%+v) yet %d frames written", dc.name, p.local.Drops, q.frames)
			case d == 0 && q.frames == 0:
				t.Fatalf("%s: neither dropped nor forwarded", dc.name)
			}
			for _, w := range q.last {
				fl := len(w) - dc.hdr
				if dc.name == "udp" && len(w) > 65507 {
					t.Fatalf("udp: %d-byte datagram exceeds the UDP limit", len(w))
				}
				if dc.hdr == 0 && fl > dst.maxFrame {
					t.Fatalf("tap without vnet_hdr: %d-byte frame over MTU frame size %d", fl, dst.maxFrame)
				}
				if dc.hdr > 0 {
					h, _ := vnethdr.Decode(w)
					if h.GSOType != vnethdr.GSONone && !dst.gso {
						t.Fatalf("%s: GSO frame to a device without GSO", dc.name)
					}
				}
			}
		}
	})
}
