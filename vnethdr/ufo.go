package vnethdr

import "encoding/binary"

// SetFragmentID sets the identification the IPv6 fragment headers of a UFO
// packet carry (IPv4 fragments keep the packet's own id). A caller that
// splits many datagrams should number them, a counter per link or flow:
// the id must not repeat between the same addresses while a receiver
// may still hold fragments of the earlier datagram. Without it the id is
// derived from the datagram: its addresses, ports, length and 32-bit
// payload sum, so two datagrams share an id only if they are almost
// certainly the same datagram (whose fragments are interchangeable).
func (p *Packet) SetFragmentID(id uint32) {
	p.fragID, p.fragIDSet = id, true
}

// fragment writes the IP fragments of a UFO datagram, as the kernel's
// udp4_ufo_fragment/udp6_ufo_fragment and inet/ipv6_gso_segment do: the UDP
// checksum is completed over the whole datagram, then the bytes after the
// unfragmentable headers are cut into gso_size (rounded down to 8) pieces.
// The caller checked the buffers.
func (p *Packet) fragment(out [][]byte, sizes []int) int {
	b := p.data
	l3, l4 := p.h.l3, p.h.l4
	hl, start := p.HeaderLen(), p.dataStart()

	var udpb [udpSize]byte
	udp := UDP(udpb[:])
	copy(udp, b[l4:l4+udpSize])
	ulen := len(b) - l4
	udp.SetLength(uint16(ulen))
	keepZero := !p.h.ipv6 && p.hdr.Flags&FlagNeedsCsum == 0 && udp.NoChecksum()
	var s uint64
	if !keepZero {
		f := udp.ChecksumField()
		f[0], f[1] = 0, 0
		var ph uint64
		if p.h.ipv6 {
			ph = sumLE(IPv6(b[l3:]).Addresses())
		} else {
			ph = sumLE(IPv4(b[l3:l4]).Addresses())
		}
		ph += uint64(protoUDP)<<8 + lenLE(ulen)
		s = add(ph, add(sumLE(udp), sumLE(b[l4+udpSize:])))
		putCsum(f, s, true)
	}

	var id uint32
	if p.h.ipv6 {
		id = p.fragID
		if !p.fragIDSet {
			// s covers addresses, ports, length and payload; mix its
			// 64 bits (the payload sum alone would repeat for permuted
			// words) with the length.
			x := s ^ uint64(ulen)<<48
			x *= 0x9e3779b97f4a7c15
			id = uint32(x >> 32)
		}
	}
	for i := 0; i < p.segs; i++ {
		a := start + i*p.mss
		e := min(a+p.mss, len(b))
		dst := out[i]
		n := hl + (e - a)
		last := i == p.segs-1
		off := a - start
		if p.h.ipv6 {
			copy(dst, b[:p.h.fragAt])
			fh := dst[p.h.fragAt : p.h.fragAt+8]
			fh[0] = b[p.h.fragNext]
			fh[1] = 0
			fo := uint16(off)
			if !last {
				fo |= 1
			}
			binary.BigEndian.PutUint16(fh[2:], fo)
			binary.BigEndian.PutUint32(fh[4:], id)
			dst[p.h.fragNext] = ipv6Fragment
			IPv6(dst[l3:]).SetPayloadLength(uint16(n - l3 - ipv6FixedSize))
		} else {
			copy(dst, b[:l4])
			ip := IPv4(dst[l3:l4])
			ip.SetTotalLength(uint16(n - l3))
			fo := uint16(off >> 3)
			if !last {
				fo |= 0x2000 // more fragments
			}
			ip.SetFlagsFragmentOffset(fo)
			ip.ClearChecksum()
			putCsum(ip.ChecksumField(), sumLE(ip), false)
		}
		copy(dst[hl:n], b[a:e])
		// Patch the rewritten UDP header wherever it falls in this piece.
		for k := max(a, l4); k < min(e, l4+udpSize); k++ {
			dst[hl+k-a] = udp[k-l4]
		}
		sizes[i] = n
	}
	return p.segs
}
