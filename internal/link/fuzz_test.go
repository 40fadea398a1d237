package link

import (
	"bytes"
	"encoding/binary"
	"fmt"
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
			p.handleNow(p.rbufs[0], len(data))
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

// FuzzReplayWindow drives the replay window with counters made from the
// input (each pair of bytes a step forward or back from the newest) and
// compares every verdict with a plain model: a counter is accepted when it
// was never accepted and is above the newest one or less than replayLimit
// behind it.
func FuzzReplayWindow(f *testing.F) {
	f.Add([]byte{0, 1, 0, 1, 0, 1})
	f.Add([]byte{0x7f, 0xff, 0x80, 0x10, 0x80, 0x10, 0x00, 0x40, 0xff, 0xff})
	f.Add([]byte{0x0f, 0xc0, 0x8f, 0xc0, 0x8f, 0xbf, 0x0f, 0xc1, 0x8f, 0xc1}) // around replayLimit
	f.Add(bytes.Repeat([]byte{0x00, 0x41}, 200))
	f.Fuzz(func(t *testing.T, data []byte) {
		var w replayWindow
		seen := map[uint64]bool{}
		var last uint64
		for i := 0; i+1 < len(data); i += 2 {
			step := uint64(binary.BigEndian.Uint16(data[i:]) & 0x7fff)
			n := last + step
			if data[i]&0x80 != 0 {
				n = last - min(step, last)
			}
			want := !seen[n] && (n > last || last-n < replayLimit)
			if got := w.check(n); got != want {
				t.Fatalf("counter %d with newest %d: check %v, model %v", n, last, got, want)
			}
			if want {
				w.accept(n)
				seen[n] = true
				last = max(last, n)
			}
		}
	})
}

// FuzzOpen feeds arbitrary datagrams to an encrypted tunnel receiver that
// follows a session. Invariants: no panic; nothing but the genuine
// datagrams opens (a forgery would need the key), each of them once, to
// exactly what was sealed; a mangled datagram leaves the receiver able to
// open the genuine ones that it has not seen.
func FuzzOpen(f *testing.F) {
	var key [KeySize]byte
	for i := range key {
		key[i] = byte(i*7 + 1)
	}
	s := &sealer{session: sessionID{0, 0, 0, 0, 0, 0, 0, 1, 'f', 'u', 'z', 'z'}}
	s.aead, _ = sessionAEAD(&key, s.session)
	var genuine [][]byte
	var plain []string
	for i := range 3 {
		p := fmt.Sprintf("\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00frame %d of the fuzz session", i)
		b := make([]byte, sealHdrLen+len(p), sealHdrLen+len(p)+sealTagLen)
		copy(b[sealHdrLen:], p)
		genuine = append(genuine, s.seal(b))
		plain = append(plain, p)
	}
	for _, g := range genuine {
		f.Add(g, uint8(0))
	}
	f.Add(genuine[1][:sealHdrLen+3], uint8(1))
	f.Add([]byte(sealMagic), uint8(2))
	f.Add(append([]byte(sealMagic), make([]byte, 60)...), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, before uint8) {
		o, err := newOpener(&key, sessionID{9})
		if err != nil {
			t.Fatal(err)
		}
		open := func(d []byte) (int, string) {
			c := append([]byte(nil), d...)
			n := o.open(c)
			if n < 0 {
				return n, ""
			}
			return n, string(c[sealHdrLen : sealHdrLen+n])
		}
		// Let the receiver follow the session first, or not.
		used := map[int]bool{}
		if g := int(before % 4); g < len(genuine) {
			if _, got := open(genuine[g]); got != plain[g] {
				t.Fatalf("genuine datagram %d opened as %q", g, got)
			}
			used[g] = true
		}
		n, got := open(data)
		if n >= 0 {
			g := -1
			for i := range genuine {
				if bytes.Equal(data, genuine[i]) {
					g = i
				}
			}
			switch {
			case g < 0:
				t.Fatalf("a datagram that is not genuine opened, to %q", got)
			case used[g]:
				t.Fatalf("genuine datagram %d opened twice", g)
			case got != plain[g]:
				t.Fatalf("genuine datagram %d opened as %q", g, got)
			}
			used[g] = true
		} else if n != sizeAuthFailed && n != sizeReplayed {
			t.Fatalf("open returned %d", n)
		}
		for i := range genuine {
			if _, got := open(genuine[i]); !used[i] && got != plain[i] {
				t.Fatalf("after %x, genuine datagram %d no longer opens", data, i)
			} else if used[i] && got != "" {
				t.Fatalf("genuine datagram %d opened again", i)
			}
		}
	})
}
