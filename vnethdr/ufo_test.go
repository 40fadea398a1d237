package vnethdr

import (
	"encoding/binary"
	"testing"
)

// ipv6FragIDs splits an IPv6 UFO packet and returns the id of each
// fragment's fragment header.
func ipv6FragIDs(t *testing.T, b built, set func(*Packet)) []uint32 {
	t.Helper()
	p, err := Parse(b.hdr, b.frame, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if set != nil {
		set(&p)
	}
	out, sizes := segBuffers(p.Segments(), 65536)
	n, err := p.Segment(out, sizes)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]uint32, n)
	for i := range ids {
		ids[i] = binary.BigEndian.Uint32(out[i][p.h.fragAt+4:])
	}
	return ids
}

// TestUFOFragmentID: the IPv6 fragment id is the caller's (SetFragmentID)
// on every fragment; without one it is derived from the datagram, so the
// same datagram gets the same id (no package state carries over between
// calls) and a different one a different id.
func TestUFOFragmentID(t *testing.T) {
	s := spec{name: "ufo6", udp: true, ufo: true, v6: true, payload: 8000, mss: 1448}
	b := build(t, s)
	for _, id := range ipv6FragIDs(t, b, func(p *Packet) { p.SetFragmentID(0xdeadbeef) }) {
		if id != 0xdeadbeef {
			t.Fatalf("fragment id %#x, set 0xdeadbeef", id)
		}
	}
	a1, a2 := ipv6FragIDs(t, b, nil), ipv6FragIDs(t, b, nil)
	for i := range a1 {
		if a1[i] != a1[0] || a2[i] != a1[0] {
			t.Fatalf("fragment ids of one datagram differ: %#x %#x", a1, a2)
		}
	}
	seen := map[uint32]int{a1[0]: 0}
	for k := 1; k < 200; k++ {
		s2 := s
		if k < 100 {
			s2.payload = 8000 + k // a different length
		}
		b2 := build(t, s2)
		if k >= 100 {
			// The same length, two payload bytes changed.
			b2.frame[len(b2.frame)-1] ^= byte(k)
			b2.frame[len(b2.frame)-100] ^= byte(k >> 1)
		}
		id := ipv6FragIDs(t, b2, nil)[0]
		if j, dup := seen[id]; dup {
			t.Fatalf("datagrams %d and %d got the same fragment id %#x", j, k, id)
		}
		seen[id] = k
	}
}
