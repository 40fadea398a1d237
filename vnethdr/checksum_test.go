package vnethdr

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"strconv"
	"testing"
)

// TestChecksumReference checks the fast sum against the generic one and both
// against the naive big-endian reference, on random lengths and alignments.
func TestChecksumReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 70000)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	lengths := []int{0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1500, 65536}
	for i := 0; i < 2000; i++ {
		lengths = append(lengths, rng.IntN(len(buf)-64))
	}
	for _, n := range lengths {
		for _, align := range []int{0, 1, 3, 8, 31} {
			b := buf[align : align+n]
			want := refFold(refSumWide(b))
			if got := fold(sumGeneric(b)); got != bswap(want) && !(got == 0xffff && want == 0xffff) && !(got == 0 && want == 0xffff) && !(got == 0xffff && want == 0) {
				t.Fatalf("generic n=%d align=%d: %#x want %#x", n, align, bswap(got), want)
			}
			if fold(sumFast(b)) != fold(sumGeneric(b)) {
				t.Fatalf("fast n=%d align=%d: %#x, generic %#x", n, align, fold(sumFast(b)), fold(sumGeneric(b)))
			}
			if c := Checksum(b, 0x1234); c != refFold(refSumWide(b)+0x1234) && !onesEq(c, refFold(refSumWide(b)+0x1234)) {
				t.Fatalf("Checksum n=%d: %#x", n, c)
			}
		}
	}
	// All-ones data drives every carry path.
	ff := make([]byte, 65536)
	for i := range ff {
		ff[i] = 0xff
	}
	for _, n := range []int{1, 2, 63, 64, 65, 4096, 65536} {
		if !onesEq(fold(sumFast(ff[:n])), bswap(refFold(refSumWide(ff[:n])))) {
			t.Fatalf("all-ones n=%d", n)
		}
	}
	// The widest lanes: the assembly's 32-bit word sums wrap, its half-word
	// sums must not, up to its 512 KiB limit and past it. 0xff bytes with
	// a 0xfe in every other word make each word's halves differ.
	big := make([]byte, 3<<19+37)
	for i := range big {
		big[i] = 0xff
		if i%8 == 5 {
			big[i] = 0xfe
		}
	}
	dst := make([]byte, len(big)+1)
	for _, n := range []int{1 << 19, 1<<19 + 1, 1<<19 - 1, len(big)} {
		for _, off := range []int{0, 1} {
			want := fold(sumGeneric(big[off : off+n-1]))
			if got := fold(sumFast(big[off : off+n-1])); !onesEq(got, want) {
				t.Fatalf("dense n=%d off=%d: fast %#x, generic %#x", n-1, off, got, want)
			}
			if got := fold(copySum(dst[1-off:], big[off:off+n-1])); !onesEq(got, want) || !bytes.Equal(dst[1-off:1-off+n-1], big[off:off+n-1]) {
				t.Fatalf("dense copy n=%d off=%d: %#x, generic %#x", n-1, off, got, want)
			}
		}
	}
}

// onesEq compares ones-complement values, where 0 and 0xffff are both zero.
func onesEq(a, b uint16) bool {
	return a == b || (a == 0 || a == 0xffff) && (b == 0 || b == 0xffff)
}

func bswap(v uint16) uint16 { return v>>8 | v<<8 }

func refSumWide(b []byte) uint32 {
	var s uint64
	for i := 0; i+1 < len(b); i += 2 {
		s += uint64(b[i])<<8 | uint64(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint64(b[len(b)-1]) << 8
	}
	for s > 0xffffffff {
		s = s>>32 + s&0xffffffff
	}
	return uint32(refFold(uint32(s>>16) + uint32(s&0xffff)))
}

func TestPseudoHeaderChecksum(t *testing.T) {
	src, dst := []byte{10, 0, 0, 1}, []byte{10, 0, 0, 2}
	want := refFold(refSum(src, 0) + refSum(dst, 0) + 6 + 1500)
	if got := PseudoHeaderChecksum(6, src, dst, 1500); got != want {
		t.Fatalf("IPv4: %#x, want %#x", got, want)
	}
	s6, d6 := make([]byte, 16), make([]byte, 16)
	s6[0], d6[15] = 0xfd, 2
	want = refFold(refSum(s6, 0) + refSum(d6, 0) + 17 + 1 + 0x2345)
	if got := PseudoHeaderChecksum(17, s6, d6, 0x12345); got != want {
		t.Fatalf("IPv6 >64k: %#x, want %#x", got, want)
	}
	var f [2]byte
	putCsum(f[:], 0, true)
	if binary.LittleEndian.Uint16(f[:]) != 0xffff {
		t.Fatal("putCsum of an all-zero sum")
	}
}

func BenchmarkChecksum(b *testing.B) {
	for _, n := range []int{64, 1500, 9000, 65536} {
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = byte(i * 7)
		}
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			b.SetBytes(int64(n))
			b.ReportAllocs()
			var s uint16
			loop(b, func() { s += Checksum(buf, 0) })
			sink16 = s
		})
	}
}

var sink16 uint16

func TestCopySum(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	src := make([]byte, 600000)
	for i := range src {
		src[i] = byte(rng.Uint32())
	}
	for i := 0; i < 500; i++ {
		n := rng.IntN(4000)
		if i%50 == 0 {
			n = rng.IntN(len(src) - 64)
		}
		a, d := rng.IntN(32), rng.IntN(32)
		dst := make([]byte, n+d+16)
		for k := range dst {
			dst[k] = 0xa5
		}
		s := copySum(dst[d:d+n], src[a:a+n])
		if fold(s) != fold(sumGeneric(src[a:a+n])) {
			t.Fatalf("n=%d: sum %#x, generic %#x", n, fold(s), fold(sumGeneric(src[a:a+n])))
		}
		if !bytes.Equal(dst[d:d+n], src[a:a+n]) {
			t.Fatalf("n=%d: copy differs", n)
		}
		for _, c := range append(dst[:d:d], dst[d+n:]...) {
			if c != 0xa5 {
				t.Fatalf("n=%d: write outside dst", n)
			}
		}
	}
}
