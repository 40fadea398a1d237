//go:build amd64 && !purego

package vnethdr

import (
	"unsafe"

	"golang.org/x/sys/cpu"
)

var useAVX2 = cpu.X86.HasAVX2

// avx2Chunk bounds one assembly call so its 32-bit lanes cannot overflow.
const avx2Chunk = 512 << 10

// sumAVX2 returns the LE-domain sum of p[:n]; n is a multiple of 32 and at
// most avx2Chunk.
//
//go:noescape
func sumAVX2(p *byte, n int) uint64

// copySumAVX2 copies src[:n] to dst and returns its sum, as sumAVX2.
//
//go:noescape
func copySumAVX2(dst, src *byte, n int) uint64

func sumFast(b []byte) uint64 {
	if !useAVX2 || len(b) < 128 {
		return sumGeneric(b)
	}
	var s uint64
	for len(b) >= 32 {
		n := min(len(b)&^31, avx2Chunk)
		s += sumAVX2(&b[0], n)
		b = b[n:]
	}
	return add(s, sumGeneric(b))
}

// copySum copies src into dst (which must be at least as long) and returns
// the LE-domain sum of src, reading it once.
func copySum(dst, src []byte) uint64 {
	if !useAVX2 || len(src) < 128 {
		copy(dst, src)
		return sumGeneric(src)
	}
	_ = dst[len(src)-1]
	// Segment payloads land right after the headers, at odd places; stores
	// that straddle cache lines cost more than the few bytes done here first.
	h := int(-uintptr(unsafe.Pointer(&dst[0]))) & 31
	copy(dst[:h], src[:h])
	head := sumGeneric(src[:h])
	src, dst = src[h:], dst[h:]
	var s uint64
	for len(src) >= 32 {
		n := min(len(src)&^31, avx2Chunk)
		s += copySumAVX2(&dst[0], &src[0], n)
		src, dst = src[n:], dst[n:]
	}
	copy(dst, src)
	s = add(s, sumGeneric(src))
	if h&1 == 1 {
		// The rest started at an odd offset: its words pair bytes the other way.
		f := fold(s)
		s = uint64(f>>8 | f<<8)
	}
	return add(head, s)
}
