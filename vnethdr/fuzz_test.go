package vnethdr

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecode: decoding never panics and encoding gives the bytes back.
func FuzzDecode(f *testing.F) {
	f.Add([]byte{1, 0x81, 66, 0, 0xa8, 5, 34, 0, 16, 0, 1, 0}, false, true)
	f.Add([]byte{1, 5, 0, 42, 5, 0xc0, 0, 34, 0, 6, 0, 1}, true, true)
	f.Add([]byte{0, 0, 0}, false, false)
	f.Fuzz(func(t *testing.T, b []byte, be, v1 bool) {
		fm := Format{Size: HdrLen, BigEndian: be}
		if v1 {
			fm.Size = HdrLenV1
		}
		h, err := fm.Decode(b)
		if err != nil {
			if len(b) >= fm.Size {
				t.Fatalf("Decode refused %d bytes: %v", len(b), err)
			}
			return
		}
		out := make([]byte, fm.Size)
		if _, err := fm.Encode(out, h); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, b[:fm.Size]) {
			t.Fatalf("round trip: % x -> %v -> % x", b[:fm.Size], h, out)
		}
	})
}

// FuzzSegment feeds a vnet header and frame to Parse and Segment. Invariants:
// no panic; nothing written outside the buffers; every frame within headers
// plus gso_size; the zero-copy form equal to the copying form; payload bytes
// preserved in order; IP header and L4 checksums valid by a naive reference.
func FuzzSegment(f *testing.F) {
	for _, s := range append(append([]spec{}, segSpecs...), ufoSpecs...) {
		if s.payload > 6000 {
			s.payload = 6000
		}
		b := build(f, s)
		var hb [HdrLen]byte
		b.hdr.Encode(hb[:])
		f.Add(append(hb[:], b.frame...), uint8(s.link))
	}
	f.Fuzz(func(t *testing.T, in []byte, mode uint8) {
		hdr, err := Decode(in)
		if err != nil {
			return
		}
		frame := in[HdrLen:]
		opt := Options{Link: Link(mode & 1), PartialCsum: mode&2 != 0}
		orig := append([]byte(nil), frame...)
		p, err := Parse(hdr, frame, opt)
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		if p.Segments() > 1<<16 {
			t.Fatalf("%d segments", p.Segments())
		}
		max := p.MaxSegmentLen()
		if p.IsGSO() && max > p.HeaderLen()+int(hdr.GSOSize) {
			t.Fatalf("MaxSegmentLen %d above headers %d + gso_size %d", max, p.HeaderLen(), hdr.GSOSize)
		}
		const guard = 16
		backing := make([][]byte, p.Segments())
		out := make([][]byte, p.Segments())
		for i := range out {
			backing[i] = bytes.Repeat([]byte{0xa5}, max+guard)
			out[i] = backing[i][:max:max]
		}
		sizes := make([]int, len(out))
		n, err := p.Segment(out, sizes)
		if err != nil {
			t.Fatalf("Segment after a successful Parse: %v", err)
		}
		if !bytes.Equal(frame, orig) {
			t.Fatal("Segment modified its input")
		}
		for i := 0; i < n; i++ {
			if !bytes.Equal(backing[i][max:], bytes.Repeat([]byte{0xa5}, guard)) {
				t.Fatalf("segment %d: write past the buffer", i)
			}
			if sizes[i] > max {
				t.Fatalf("segment %d: %d bytes, max %d", i, sizes[i], max)
			}
		}
		frames := make([][]byte, n)
		for i := range frames {
			frames[i] = out[i][:sizes[i]]
		}
		checkFuzzSegments(t, &p, frames)
	})
}

func checkFuzzSegments(t *testing.T, p *Packet, frames [][]byte) {
	t.Helper()
	switch p.gso {
	case GSONone:
		want := p.data
		if p.hdr.Flags&FlagNeedsCsum != 0 && !p.opt.PartialCsum {
			want = append([]byte(nil), p.data...)
			at := int(p.hdr.CsumStart) + int(p.hdr.CsumOffset)
			c := ^refFoldOdd(p.data[p.hdr.CsumStart:])
			if c == 0 {
				c = 0xffff
			}
			binary.BigEndian.PutUint16(want[at:], c)
		}
		if len(frames) != 1 || !bytes.Equal(frames[0], want) {
			t.Fatalf("non-GSO packet: got % x\nwant % x", head(frames[0]), head(want))
		}
		return
	case GSOUDP:
		var data []byte
		for _, f := range frames {
			data = append(data, f[p.HeaderLen():]...)
			if !p.h.ipv6 && refFold(refSum(f[p.h.l3:p.h.l4], 0)) != 0xffff {
				t.Fatal("fragment with a bad IPv4 header checksum")
			}
		}
		st := p.dataStart()
		rest := p.h.l4 + 8 - st // bytes up to the end of the UDP header
		if !bytes.Equal(data[rest:], p.data[st+rest:]) || !bytes.Equal(data[:p.h.l4-st], p.data[st:p.h.l4]) {
			t.Fatal("fragments do not carry the datagram")
		}
		return
	}
	heads, hl := segBuffers(len(frames), p.HeaderLen())
	pays := make([][]byte, len(frames))
	if n, err := p.SegmentIov(heads, hl, pays); err != nil || n != len(frames) {
		t.Fatalf("SegmentIov = %d, %v", n, err)
	}
	var payload []byte
	for i, f := range frames {
		if !bytes.Equal(append(append([]byte(nil), heads[i][:hl[i]]...), pays[i]...), f) {
			t.Fatalf("SegmentIov segment %d differs", i)
		}
		if i < len(frames)-1 && len(f) != p.HeaderLen()+p.mss {
			t.Fatalf("segment %d of %d has %d bytes", i, len(frames), len(f))
		}
		payload = append(payload, f[p.HeaderLen():]...)
		l3, l4 := p.h.l3, p.h.l4
		var ph uint32
		if p.h.ipv6 {
			ph = refSum(f[l3+8:l3+40], 0)
			if int(binary.BigEndian.Uint16(f[l3+4:])) != len(f)-l3-40 {
				t.Fatalf("segment %d: IPv6 payload length", i)
			}
		} else {
			ph = refSum(f[l3+12:l3+20], 0)
			if refFold(refSum(f[l3:l4], 0)) != 0xffff || int(binary.BigEndian.Uint16(f[l3+2:])) != len(f)-l3 {
				t.Fatalf("segment %d: bad IPv4 header", i)
			}
		}
		ph += uint32(p.h.proto) + uint32(len(f)-l4)
		if p.opt.PartialCsum {
			co := 16
			if p.h.proto == protoUDP {
				co = 6
			}
			if got := binary.BigEndian.Uint16(f[l4+co:]); got != refFold(ph) {
				t.Fatalf("segment %d: partial checksum %#x, want %#x", i, got, refFold(ph))
			}
		} else if refFold(refSum(f[l4:], ph)) != 0xffff {
			t.Fatalf("segment %d: bad L4 checksum", i)
		}
	}
	if !bytes.Equal(payload, p.data[p.HeaderLen():]) {
		t.Fatal("payload not preserved")
	}
}

// refFoldOdd is the naive folded sum of b.
func refFoldOdd(b []byte) uint16 { return refFold(refSum(b, 0)) }

// TestWriteFuzzCorpus regenerates the checked-in seed corpus when
// VNETHDR_WRITE_CORPUS=1; otherwise it checks the corpus exists.
func TestWriteFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz")
	if os.Getenv("VNETHDR_WRITE_CORPUS") != "1" {
		for _, name := range []string{"FuzzSegment", "FuzzDecode", "FuzzCoalesce"} {
			if ents, err := os.ReadDir(filepath.Join(dir, name)); err != nil || len(ents) == 0 {
				t.Fatalf("seed corpus %s missing (regenerate with VNETHDR_WRITE_CORPUS=1): %v", name, err)
			}
		}
		return
	}
	write := func(target, name string, args ...any) {
		var buf bytes.Buffer
		buf.WriteString("go test fuzz v1\n")
		for _, a := range args {
			switch v := a.(type) {
			case []byte:
				fmt.Fprintf(&buf, "[]byte(%q)\n", v)
			case uint8:
				fmt.Fprintf(&buf, "byte(%q)\n", v)
			case bool:
				fmt.Fprintf(&buf, "bool(%v)\n", v)
			}
		}
		d := filepath.Join(dir, target)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, name), buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range append(append([]spec{}, segSpecs...), ufoSpecs...) {
		s.payload = min(s.payload, 3000)
		b := build(t, s)
		var hb [HdrLen]byte
		b.hdr.Encode(hb[:])
		write("FuzzSegment", s.name, append(hb[:], b.frame...), uint8(s.link))
		write("FuzzSegment", s.name+"_partial", append(hb[:], b.frame...), uint8(s.link)|2)
		write("FuzzDecode", s.name, hb[:], false, false)
	}
	for _, c := range coalesceSeeds(t) {
		write("FuzzCoalesce", c.name, c.data, c.mode)
	}
}
