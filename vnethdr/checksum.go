package vnethdr

import (
	"encoding/binary"
	"math/bits"
)

// The sums below work on little-endian 16-bit words ("LE domain"): the
// ones-complement sum is byte-order independent up to a final byte swap, and
// loading native words lets the loop add 8 bytes per instruction. A value in
// the LE domain, stored little endian, gives the bytes the wire expects.

// Checksum returns the Internet checksum (RFC 1071) sum of b added to initial,
// folded to 16 bits but not complemented, in network (big-endian) value order.
// Use ^Checksum(...) as the value of a checksum field.
func Checksum(b []byte, initial uint16) uint16 {
	s := sumLE(b) + uint64(bits.ReverseBytes16(initial))
	return bits.ReverseBytes16(fold(s))
}

// PseudoHeaderChecksum returns the sum of the TCP/UDP pseudo header for the
// given protocol, addresses (both 4 or both 16 bytes) and L4 length, folded but
// not complemented, in network value order. It is the initial value for
// Checksum over the L4 header and payload, and the value a partial checksum
// field (NEEDS_CSUM) holds.
func PseudoHeaderChecksum(proto uint8, src, dst []byte, l4len int) uint16 {
	s := sumLE(src) + sumLE(dst) + uint64(proto)<<8 + lenLE(l4len)
	return bits.ReverseBytes16(fold(s))
}

// lenLE returns a length as an LE-domain value; lengths above 16 bits are
// summed as 32-bit quantities, as IPv6 pseudo headers do.
func lenLE(n int) uint64 {
	return uint64(bits.ReverseBytes16(uint16(n))) + uint64(bits.ReverseBytes16(uint16(n>>16)))
}

// fold reduces a 64-bit ones-complement accumulator to 16 bits.
func fold(s uint64) uint16 {
	s = (s >> 32) + (s & 0xffffffff)
	s = (s >> 32) + (s & 0xffffffff)
	s = (s >> 16) + (s & 0xffff)
	s = (s >> 16) + (s & 0xffff)
	s = (s >> 16) + (s & 0xffff)
	return uint16(s)
}

// sumLE returns an unfolded ones-complement sum of b in the LE domain. An odd
// trailing byte counts as the high byte of a big-endian word, i.e. as the low
// byte in the LE domain. The result never exceeds 2^64-1 because every add
// carries around.
func sumLE(b []byte) uint64 {
	return sumFast(b)
}

// sumGeneric is the reference implementation: 64-bit adds with end-around carry.
func sumGeneric(b []byte) uint64 {
	var s, c uint64
	for len(b) >= 64 {
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[0:8]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[8:16]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[16:24]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[24:32]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[32:40]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[40:48]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[48:56]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[56:64]), c)
		b = b[64:]
	}
	for len(b) >= 8 {
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b), c)
		b = b[8:]
	}
	if len(b) >= 4 {
		s, c = bits.Add64(s, uint64(binary.LittleEndian.Uint32(b)), c)
		b = b[4:]
	}
	if len(b) >= 2 {
		s, c = bits.Add64(s, uint64(binary.LittleEndian.Uint16(b)), c)
		b = b[2:]
	}
	if len(b) == 1 {
		s, c = bits.Add64(s, uint64(b[0]), c)
	}
	s, c = bits.Add64(s, 0, c)
	return s + c
}

// sumAddrs returns the LE-domain sum of the source and destination
// addresses of a parsed packet (8 or 32 bytes), in a few loads.
func sumAddrs(pkt []byte, h *headers) uint64 {
	if h.ipv6 {
		a := pkt[h.l3+ipv6SrcAddr : h.l3+ipv6FixedSize]
		s, c := bits.Add64(binary.LittleEndian.Uint64(a[0:8]), binary.LittleEndian.Uint64(a[8:16]), 0)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(a[16:24]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(a[24:32]), c)
		return s + c
	}
	a := pkt[h.l3+ipv4SrcAddr : h.l3+ipv4AddrsEnd]
	return uint64(binary.LittleEndian.Uint32(a[0:4])) + uint64(binary.LittleEndian.Uint32(a[4:8]))
}

// ipv4HeaderValid reports whether a 20-byte IPv4 header's checksum verifies.
func ipv4HeaderValid(ip []byte) bool {
	ip = ip[:ipv4MinSize]
	s := uint64(binary.LittleEndian.Uint32(ip[0:4])) + uint64(binary.LittleEndian.Uint32(ip[4:8])) +
		uint64(binary.LittleEndian.Uint32(ip[8:12])) + uint64(binary.LittleEndian.Uint32(ip[12:16])) +
		uint64(binary.LittleEndian.Uint32(ip[16:20]))
	return fold(s) == 0xffff
}

// eqShort compares two slices of equal length, with two word loads when
// they are 8 to 16 bytes long (Ethernet headers, TCP options), which is most
// of what the coalescer compares for every packet.
func eqShort(a, b []byte) bool {
	n := len(a)
	if n >= 8 && n <= 16 && len(b) == n {
		return binary.LittleEndian.Uint64(a) == binary.LittleEndian.Uint64(b) &&
			binary.LittleEndian.Uint64(a[n-8:]) == binary.LittleEndian.Uint64(b[n-8:])
	}
	return string(a) == string(b)
}

// add adds two LE-domain accumulators with end-around carry.
func add(a, b uint64) uint64 {
	s, c := bits.Add64(a, b, 0)
	return s + c
}

// csumLE turns an LE-domain accumulator into checksum field bytes at b[0:2]:
// the complement of the folded sum. A result of 0 is sent as 0xffff when
// zeroIsFFFF (UDP, and the kernel's skb_checksum_help for everything).
func putCsum(b []byte, s uint64, zeroIsFFFF bool) {
	v := ^fold(s)
	if v == 0 && zeroIsFFFF {
		v = 0xffff
	}
	binary.LittleEndian.PutUint16(b, v)
}
