package vnethdr

import (
	"encoding/binary"
	"sync/atomic"
	"time"
)

// ipv6FragID numbers the IPv6 fragment headers UFO creates; the kernel picks a
// hashed per-destination id, any id unique for a while per flow will do.
var ipv6FragID atomic.Uint32

func init() { ipv6FragID.Store(uint32(time.Now().UnixNano())) }

// fragment writes the IP fragments of a UFO datagram, as the kernel's
// udp4_ufo_fragment/udp6_ufo_fragment and inet/ipv6_gso_segment do: the UDP
// checksum is completed over the whole datagram, then the bytes after the
// unfragmentable headers are cut into gso_size (rounded down to 8) pieces.
// The caller checked the buffers.
func (p *Packet) fragment(out [][]byte, sizes []int) int {
	b := p.data
	l3, l4 := p.h.l3, p.h.l4
	hl, start := p.HeaderLen(), p.dataStart()

	var udp [8]byte
	copy(udp[:], b[l4:l4+8])
	ulen := len(b) - l4
	binary.BigEndian.PutUint16(udp[4:], uint16(ulen))
	keepZero := !p.h.ipv6 && p.hdr.Flags&FlagNeedsCsum == 0 && udp[6] == 0 && udp[7] == 0
	if !keepZero {
		udp[6], udp[7] = 0, 0
		var ph uint64
		if p.h.ipv6 {
			ph = sumLE(b[l3+8 : l3+40])
		} else {
			ph = sumLE(b[l3+12 : l3+20])
		}
		ph += uint64(protoUDP)<<8 + lenLE(ulen)
		s := add(ph, add(sumLE(udp[:]), sumLE(b[l4+8:])))
		putCsum(udp[6:], s, true)
	}

	var id uint32
	if p.h.ipv6 {
		id = ipv6FragID.Add(1)
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
			binary.BigEndian.PutUint16(dst[l3+4:], uint16(n-l3-40))
		} else {
			copy(dst, b[:l4])
			ip := dst[l3:l4]
			binary.BigEndian.PutUint16(ip[2:], uint16(n-l3))
			fo := uint16(off >> 3)
			if !last {
				fo |= 0x2000
			}
			binary.BigEndian.PutUint16(ip[6:], fo)
			ip[10], ip[11] = 0, 0
			putCsum(ip[10:], sumLE(ip), false)
		}
		copy(dst[hl:n], b[a:e])
		// Patch the rewritten UDP header wherever it falls in this piece.
		for k := max(a, l4); k < min(e, l4+8); k++ {
			dst[hl+k-a] = udp[k-l4]
		}
		sizes[i] = n
	}
	return p.segs
}
