package vnethdr

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// FuzzCoalesce: a batch (2-byte length + packet, repeated) is coalesced.
// Invariants: no panic; inputs untouched; every input packet in exactly one
// output, in order; merged outputs pass Parse and, split again, give back
// their packets (checksums valid, headers equal up to the checksum fields and
// the IPv4 id of DF packets).
func FuzzCoalesce(f *testing.F) {
	for _, s := range coalesceSeeds(f) {
		f.Add(s.data, s.mode)
	}
	f.Fuzz(func(t *testing.T, data []byte, mode uint8) {
		var pkts [][]byte
		for len(data) >= 2 && len(pkts) < 128 {
			n := int(binary.BigEndian.Uint16(data))
			data = data[2:]
			n = min(n, len(data))
			pkts = append(pkts, data[:n:n])
			data = data[n:]
		}
		orig := clonePkts(pkts)
		link := Link(mode & 1)
		c := NewCoalescer(CoalesceOptions{Link: link, UDP: mode&2 != 0})
		n := c.Coalesce(pkts)
		// The fast path for the next segment of a flow must decide exactly
		// as the full path does.
		full := NewCoalescer(CoalesceOptions{Link: link, UDP: mode&2 != 0})
		full.noFast = true
		if fn := full.Coalesce(pkts); fn != n {
			t.Fatalf("%d outputs, %d without the fast path", n, fn)
		}
		for i := 0; i < n; i++ {
			f1, c1 := c.Inputs(i)
			f2, c2 := full.Inputs(i)
			h1, iov1 := c.Out(i)
			h2, iov2 := full.Out(i)
			if f1 != f2 || c1 != c2 || h1 != h2 || !bytes.Equal(joinIov(iov1), joinIov(iov2)) {
				t.Fatalf("output %d: packets %d+%d %v, without the fast path %d+%d %v", i, f1, c1, h1, f2, c2, h2)
			}
		}
		for i := range pkts {
			if !bytes.Equal(pkts[i], orig[i]) {
				t.Fatalf("input %d modified", i)
			}
		}
		seen := make([]bool, len(pkts))
		total := 0
		for i := 0; i < n; i++ {
			g := &c.groups[i]
			hdr, iov := c.Out(i)
			var members []int
			for p := g.first; p >= 0; p = c.info[p].next {
				members = append(members, int(p))
			}
			for k, m := range members {
				if seen[m] {
					t.Fatalf("packet %d in two outputs", m)
				}
				seen[m] = true
				if k > 0 && m <= members[k-1] {
					t.Fatalf("output %d reorders packets %v", i, members)
				}
			}
			total += len(members)
			if hdr.GSOType == GSONone {
				if len(members) != 1 || len(iov) != 1 || !bytes.Equal(iov[0], orig[members[0]]) {
					t.Fatalf("output %d: passed packet changed", i)
				}
				continue
			}
			frame := joinIov(iov)
			p, err := Parse(hdr, frame, Options{Link: link})
			if err != nil {
				t.Fatalf("output %d (%v) refused: %v", i, hdr, err)
			}
			if p.Segments() != len(members) {
				t.Fatalf("output %d splits into %d, merged %d", i, p.Segments(), len(members))
			}
			if len(frame)-p.HeaderLen() > 0xffff {
				t.Fatalf("output %d: %d bytes", i, len(frame))
			}
			out, sizes := segBuffers(p.Segments(), p.MaxSegmentLen())
			if _, err := p.Segment(out, sizes); err != nil {
				t.Fatal(err)
			}
			for k, m := range members {
				got := out[k][:sizes[k]]
				checkValidSums(t, got, &p.h)
				if !bytes.Equal(normalize(got, &p.h), normalize(orig[m], &p.h)) {
					t.Fatalf("output %d segment %d differs from packet %d\n got % x\nwant % x", i, k, m, head(got), head(orig[m]))
				}
			}
		}
		if total != len(pkts) {
			t.Fatalf("%d packets in, %d out", len(pkts), total)
		}
	})
}

func normalize(pkt []byte, h *headers) []byte {
	b := append([]byte(nil), pkt...)
	if !h.ipv6 {
		b[h.l3+10], b[h.l3+11] = 0, 0
		if b[h.l3+6]&0x40 != 0 {
			b[h.l3+4], b[h.l3+5] = 0, 0
		}
	}
	co := h.l4 + 16
	if h.proto == protoUDP {
		co = h.l4 + 6
	}
	b[co], b[co+1] = 0, 0
	return b
}

func checkValidSums(t *testing.T, f []byte, h *headers) {
	t.Helper()
	var ph uint32
	if h.ipv6 {
		ph = refSum(f[h.l3+8:h.l3+40], 0)
	} else {
		if refFold(refSum(f[h.l3:h.l4], 0)) != 0xffff {
			t.Fatal("bad IPv4 header checksum")
		}
		ph = refSum(f[h.l3+12:h.l3+20], 0)
	}
	if refFold(refSum(f[h.l4:], ph+uint32(h.proto)+uint32(len(f)-h.l4))) != 0xffff {
		t.Fatal("bad L4 checksum")
	}
}
