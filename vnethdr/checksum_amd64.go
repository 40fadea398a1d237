//go:build amd64 && !purego

package vnethdr

import (
	"math/bits"
	"unsafe"

	"golang.org/x/sys/cpu"
)

var useAVX2 = cpu.X86.HasAVX2

// avx2Chunk bounds one assembly call so its 32-bit lanes cannot overflow.
const avx2Chunk = 512 << 10

// sumAVX2 returns the LE-domain sum of p[:n], n at most avx2Chunk.
//
//go:noescape
func sumAVX2(p *byte, n int) uint64

// copySumAVX2 copies src[:n] to dst and returns the sum of its first head
// bytes and, separately, the sum of the rest counted from its own start.
//
//go:noescape
func copySumAVX2(dst, src *byte, n, head int) (headSum, rest uint64)

func sumFast(b []byte) uint64 {
	if !useAVX2 || len(b) < 64 {
		return sumGeneric(b)
	}
	if len(b) <= avx2Chunk {
		return sumAVX2(&b[0], len(b))
	}
	var s uint64
	for len(b) > 0 {
		n := min(len(b), avx2Chunk)
		s = add(s, sumAVX2(&b[0], n))
		b = b[n:]
	}
	return s
}

// copySum copies src into dst (which must be at least as long) and returns
// the LE-domain sum of src, reading it once. Segment payloads land right
// after the headers, at odd places; stores that straddle cache lines cost
// more than the few bytes the assembly does one by one first, up to the next
// 32-byte boundary. Small enough to inline: it runs once per segment.
func copySum(dst, src []byte) uint64 {
	if !useAVX2 || len(src) < 64 || len(src) > avx2Chunk {
		return copySumSlow(dst, src)
	}
	_ = dst[len(src)-1]
	h := int(-uintptr(unsafe.Pointer(&dst[0]))) & 31
	hs, rs := copySumAVX2(&dst[0], &src[0], len(src), h)
	if h&1 == 1 {
		// The rest starts at an odd offset: its words pair bytes the other way.
		rs = uint64(bits.ReverseBytes16(fold(rs)))
	}
	return add(hs, rs)
}

// copySumSlow is copySum for short inputs, machines without AVX2, and
// inputs beyond the assembly's 512 KiB limit.
func copySumSlow(dst, src []byte) uint64 {
	if !useAVX2 || len(src) < 64 {
		copy(dst, src)
		return sumGeneric(src)
	}
	_ = dst[len(src)-1]
	var even, odd uint64 // sums of pieces that start at an even or odd offset of src
	off := 0
	for off < len(src) {
		n := min(len(src)-off, avx2Chunk)
		a := min(int(-uintptr(unsafe.Pointer(&dst[off])))&31, n)
		hs, rs := copySumAVX2(&dst[off], &src[off], n, a)
		if off&1 == 0 {
			even = add(even, hs)
		} else {
			odd = add(odd, hs)
		}
		if (off+a)&1 == 0 {
			even = add(even, rs)
		} else {
			odd = add(odd, rs)
		}
		off += n
	}
	if odd != 0 {
		// Pieces that start at an odd offset pair bytes the other way.
		even = add(even, uint64(bits.ReverseBytes16(fold(odd))))
	}
	return even
}
