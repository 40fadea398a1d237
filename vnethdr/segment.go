package vnethdr

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// Packet is a validated vnet header and frame, ready to be split. Parse makes
// one; it holds offsets into Data and allocates nothing.
type Packet struct {
	hdr  Hdr
	data []byte
	opt  Options
	h    headers
	gso  uint8 // gso type without ECN; GSONone when the packet passes whole
	mss  int   // payload bytes per segment (fragment data bytes for UFO)
	segs int
	// IPv6 UFO fragment id, when the caller set one (SetFragmentID).
	fragID    uint32
	fragIDSet bool
}

// Validate reports whether the kernel would accept hdr and pkt from a tap or
// tun device, and whether they can be segmented.
func Validate(hdr Hdr, pkt []byte, opt Options) error {
	_, err := Parse(hdr, pkt, opt)
	return err
}

// Parse applies the kernel's rules (virtio_net_hdr_to_skb, tun_get_user) to
// hdr and pkt, then, for GSO packets, parses the headers the way the kernel's
// GSO code does. hdr.HdrLen is only checked against the packet length; the
// real header length comes from the packet. For GSO packets CsumStart is
// checked like the kernel does but the L4 offset is derived from the IP header.
// A GSO packet no longer than gso_size (counted as the kernel does) passes
// whole, with only its checksum completed, as in the kernel.
//
// Parse and Segment trust nothing in hdr or pkt: hostile input gets an *Error
// naming the rule, never a panic or a write outside the caller's buffers.
func Parse(hdr Hdr, pkt []byte, opt Options) (Packet, error) {
	p := Packet{hdr: hdr, data: pkt, opt: opt}
	gso := hdr.GSOType &^ GSOECN
	thlen, nhMin := 0, 20
	if hdr.GSOType != GSONone {
		switch gso {
		case GSOTCPv4:
			thlen = 20
		case GSOTCPv6:
			thlen, nhMin = 20, 40
		case GSOUDP, GSOUDPL4:
			thlen = 8
		default:
			return p, fail(RuleGSOType, "gso_type %#x", hdr.GSOType)
		}
		if hdr.GSOSize == 0 {
			return p, fail(RuleGSOSize, "gso_type %#x", hdr.GSOType)
		}
	}
	n := len(pkt)
	if int(hdr.HdrLen) > n {
		return p, fail(RuleHdrLen, "hdr_len %d, packet %d bytes", hdr.HdrLen, n)
	}
	// tun_get_user on a tap: a frame shorter than an Ethernet header, or a
	// non-zero hdr_len that does not even cover one, is refused.
	if opt.Link == LinkEthernet {
		if n < 14 {
			return p, fail(RuleLink, "frame of %d bytes is shorter than an Ethernet header", n)
		}
		if hdr.HdrLen != 0 && hdr.HdrLen < 14 {
			return p, fail(RuleHdrLen, "hdr_len %d is shorter than an Ethernet header", hdr.HdrLen)
		}
	}
	pOff := 0
	partial := hdr.Flags&FlagNeedsCsum != 0
	if partial {
		start, off := int(hdr.CsumStart), int(hdr.CsumOffset)
		if start+max(thlen, off+2) > n {
			return p, fail(RuleCsumBounds, "csum_start %d csum_offset %d, packet %d bytes", start, off, n)
		}
		if start < nhMin {
			return p, fail(RuleTransportOffset, "csum_start %d, minimum %d", start, nhMin)
		}
		pOff = start + thlen
	}
	if hdr.GSOType == GSONone {
		p.segs = 1
		return p, nil
	}
	switch gso {
	case GSOUDPL4:
		if !partial {
			return p, fail(RuleUDPL4NoCsum, "")
		}
		if hdr.CsumOffset != 6 {
			return p, fail(RuleUDPL4CsumOffset, "csum_offset %d", hdr.CsumOffset)
		}
		// The kernel counts from csum_start+8 here; the derived check below
		// counts from the real payload, which is the same for valid packets.
		maxSegs := opt.UDPMaxSegments
		if maxSegs <= 0 {
			maxSegs = 128
		}
		if n-pOff > int(hdr.GSOSize)*maxSegs {
			return p, fail(RuleTooManySegments, "%d payload bytes at gso_size %d exceed %d segments", n-pOff, hdr.GSOSize, maxSegs)
		}
		if hdr.GSOType&GSOECN != 0 {
			return p, fail(RuleUDPL4ECN, "gso_type %#x", hdr.GSOType)
		}
	case GSOTCPv4, GSOTCPv6:
		if partial && hdr.CsumOffset != 16 {
			return p, fail(RuleTCPCsumOffset, "csum_offset %d", hdr.CsumOffset)
		}
	}
	if hdr.GSOSize == 0xffff {
		return p, fail(RuleGSOByFrags, "")
	}
	// "Too small packets are not really GSO ones": the kernel measures from
	// csum_start plus the minimal L4 header (UFO: from csum_start) and, below
	// gso_size, only completes the checksum, without looking at the headers.
	nhOff := pOff
	if gso == GSOUDP {
		nhOff -= thlen
	}
	if partial && n-nhOff <= int(hdr.GSOSize) {
		p.segs = 1
		return p, nil
	}

	// What the kernel's flow dissector and GSO code check when they walk
	// the headers.
	h, err := parseHeaders(pkt, opt.Link)
	if err != nil {
		return p, err
	}
	switch gso {
	case GSOTCPv4:
		if h.ipv6 {
			return p, fail(RuleNetwork, "gso_type TCPV4 on an IPv6 packet")
		}
	case GSOTCPv6:
		if !h.ipv6 {
			return p, fail(RuleNetwork, "gso_type TCPV6 on an IPv4 packet")
		}
	}
	wantProto := uint8(protoTCP)
	if gso == GSOUDP || gso == GSOUDPL4 {
		wantProto = protoUDP
	}
	if h.proto != wantProto {
		return p, fail(RuleTransport, "gso_type %#x on IP protocol %d", hdr.GSOType, h.proto)
	}
	if err := parseL4(pkt, &h); err != nil {
		return p, err
	}
	if !partial {
		nhOff = h.l4
		if gso != GSOUDP {
			nhOff += thlen
		}
		if n-nhOff <= int(hdr.GSOSize) {
			p.segs = 1
			return p, nil
		}
	}
	p.h = h
	p.gso = gso
	p.mss = int(hdr.GSOSize)
	hdrLen := h.pay
	data := n - h.pay
	if gso == GSOUDP {
		p.mss &^= 7 // fragment offsets count in 8-byte units
		if p.mss == 0 {
			return p, fail(RuleGSOSize, "UFO gso_size %d is below one 8-byte fragment unit", hdr.GSOSize)
		}
		hdrLen = h.l4
		if h.ipv6 {
			hdrLen = h.fragAt + 8
			data = n - h.fragAt
		} else {
			data = n - h.l4
		}
	}
	p.segs = max(1, (data+p.mss-1)/p.mss)
	if gso == GSOUDPL4 && p.segs > 1 {
		maxSegs := opt.UDPMaxSegments
		if maxSegs <= 0 {
			maxSegs = 128
		}
		if p.segs > maxSegs {
			return p, fail(RuleTooManySegments, "%d segments, maximum %d", p.segs, maxSegs)
		}
	}
	if l := hdrLen + min(p.mss, data) - h.l3; l > 0xffff+boolInt(h.ipv6)*40 {
		return p, fail(RuleNetwork, "segment of %d IP bytes overflows the IP length field", l)
	}
	return p, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Hdr returns the vnet header the packet came with.
func (p *Packet) Hdr() Hdr { return p.hdr }

// Data returns the frame the packet was parsed from.
func (p *Packet) Data() []byte { return p.data }

// Segments returns how many frames Segment writes.
func (p *Packet) Segments() int { return p.segs }

// IsGSO reports whether the packet is split (or fragmented) at all.
func (p *Packet) IsGSO() bool { return p.gso != GSONone }

// HeaderLen returns the length of the headers copied in front of every
// segment: link, IP (and IPv6 fragment header for UFO) and, except for UFO, L4.
// It is 0 for packets that pass whole.
func (p *Packet) HeaderLen() int {
	switch p.gso {
	case GSONone:
		return 0
	case GSOUDP:
		if p.h.ipv6 {
			return p.h.fragAt + 8
		}
		return p.h.l4
	}
	return p.h.pay
}

// MaxSegmentLen returns the size of the largest frame Segment writes: the
// headers plus gso_size, or the whole packet when it passes whole.
func (p *Packet) MaxSegmentLen() int {
	if p.gso == GSONone {
		return len(p.data)
	}
	return p.HeaderLen() + min(p.mss, len(p.data)-p.dataStart())
}

func (p *Packet) dataStart() int {
	if p.gso == GSOUDP {
		if p.h.ipv6 {
			return p.h.fragAt
		}
		return p.h.l4
	}
	return p.h.pay
}

// SegmentHdr returns the vnet header to send with every frame Segment or
// SegmentIov produced, towards a device with IFF_VNET_HDR. Without
// Options.PartialCsum it is all zeros: checksums are complete.
func (p *Packet) SegmentHdr() Hdr {
	if !p.opt.PartialCsum {
		return Hdr{}
	}
	switch p.gso {
	case GSONone:
		if p.hdr.Flags&FlagNeedsCsum != 0 {
			return Hdr{Flags: FlagNeedsCsum, HdrLen: p.hdr.HdrLen, CsumStart: p.hdr.CsumStart, CsumOffset: p.hdr.CsumOffset}
		}
		return Hdr{}
	case GSOTCPv4, GSOTCPv6:
		return Hdr{Flags: FlagNeedsCsum, HdrLen: uint16(p.h.pay), CsumStart: uint16(p.h.l4), CsumOffset: 16}
	case GSOUDPL4:
		return Hdr{Flags: FlagNeedsCsum, HdrLen: uint16(p.h.pay), CsumStart: uint16(p.h.l4), CsumOffset: 6}
	}
	return Hdr{}
}

func (p *Packet) checkBatch(nOut, nSizes int) error {
	if nOut < p.segs || nSizes < p.segs {
		return fail(RuleShortBatch, "%d segments, %d buffers and %d sizes", p.segs, nOut, nSizes)
	}
	return nil
}

// Segment writes the segments into out[0:n], frame i being out[i][:sizes[i]],
// and returns n. Every frame carries complete IP and L4 checksums unless
// Options.PartialCsum was given. Nothing is written if out, sizes or one of
// the buffers is too small.
func (p *Packet) Segment(out [][]byte, sizes []int) (int, error) {
	if err := p.checkBatch(len(out), len(sizes)); err != nil {
		return 0, err
	}
	if p.gso == GSONone {
		n := len(p.data)
		if len(out[0]) < n {
			return 0, fail(RuleShortBatch, "buffer of %d bytes for a %d-byte frame", len(out[0]), n)
		}
		copy(out[0], p.data)
		sizes[0] = n
		if p.hdr.Flags&FlagNeedsCsum != 0 && !p.opt.PartialCsum {
			completeCsum(out[0][:n], int(p.hdr.CsumStart), int(p.hdr.CsumOffset))
		}
		return 1, nil
	}
	hl, start := p.HeaderLen(), p.dataStart()
	data := len(p.data) - start
	full, last := hl+p.mss, hl+data-(p.segs-1)*p.mss
	for i, o := range out[:p.segs] {
		want := full
		if i == p.segs-1 {
			want = last
		}
		if len(o) < want {
			return 0, fail(RuleShortBatch, "buffer %d has %d bytes for a %d-byte segment", i, len(o), want)
		}
	}
	if p.gso == GSOUDP {
		return p.fragment(out, sizes), nil
	}
	ctx := p.newSegCtx()
	pkt, mss, partial := p.data, p.mss, p.opt.PartialCsum
	hdr := pkt[:hl]
	sizes = sizes[:p.segs]
	for i, dst := range out[:p.segs] {
		off := start + i*mss
		pay := pkt[off:min(off+mss, len(pkt))]
		n := hl + len(pay)
		dst = dst[:n]
		copy(dst, hdr)
		var ps uint64
		if partial {
			copy(dst[hl:], pay)
		} else {
			ps = copySum(dst[hl:], pay)
		}
		ctx.fix(dst, n, i, ps)
		sizes[i] = n
	}
	return p.segs, nil
}

// SegmentIov splits without copying the payload: segment i is heads[i][:headLens[i]]
// (headers written into the caller's buffer) followed by payloads[i], a slice
// of p.data, ready for writev or sendmmsg. UFO packets are not supported here
// (their fragments cut through the UDP header); use Segment.
func (p *Packet) SegmentIov(heads [][]byte, headLens []int, payloads [][]byte) (int, error) {
	if err := p.checkBatch(min(len(heads), len(payloads)), len(headLens)); err != nil {
		return 0, err
	}
	switch p.gso {
	case GSOUDP:
		return 0, fmt.Errorf("UFO super-frames cannot be split in place: they need IP fragmentation, which only the copying segmenter does")
	case GSONone:
		if p.hdr.Flags&FlagNeedsCsum == 0 || p.opt.PartialCsum {
			headLens[0] = 0
			payloads[0] = p.data
			return 1, nil
		}
		// The checksum field lies inside the packet: copy up to and including it.
		end := int(p.hdr.CsumStart) + int(p.hdr.CsumOffset) + 2
		if len(heads[0]) < end {
			return 0, fail(RuleShortBatch, "head buffer of %d bytes, need %d", len(heads[0]), end)
		}
		copy(heads[0], p.data[:end])
		start, off := int(p.hdr.CsumStart), int(p.hdr.CsumOffset)
		// The field keeps the pseudo-header seed, which is part of the sum.
		s := add(sumLE(heads[0][start:end]), sumAt(p.data[end:], end-start))
		putCsum(heads[0][start+off:], s, true)
		headLens[0] = end
		payloads[0] = p.data[end:]
		return 1, nil
	}
	hl := p.h.pay
	for i := 0; i < p.segs; i++ {
		if len(heads[i]) < hl {
			return 0, fail(RuleShortBatch, "head buffer %d has %d bytes, need %d", i, len(heads[i]), hl)
		}
	}
	ctx := p.newSegCtx()
	hdr := p.data[:hl]
	for i := 0; i < p.segs; i++ {
		off := hl + i*p.mss
		end := min(off+p.mss, len(p.data))
		pl := p.data[off:end]
		var ps uint64
		if !p.opt.PartialCsum {
			ps = sumLE(pl)
		}
		copy(heads[i], hdr)
		ctx.fix(heads[i], hl+len(pl), i, ps)
		headLens[i] = hl
		payloads[i] = pl
	}
	return p.segs, nil
}

// sumAt sums b as if it started at offset off of the checksummed range:
// an odd offset swaps the bytes of every word.
func sumAt(b []byte, off int) uint64 {
	s := sumLE(b)
	if off&1 == 1 {
		f := fold(s)
		return uint64(f>>8 | f<<8)
	}
	return s
}

// segCtx holds what every segment's header fix-up needs. The IP and L4
// header sums are taken once with the per-segment fields zeroed; each
// segment adds its own values instead of summing its headers again. Offsets
// are copied out of the Packet so that the per-segment code reads one struct.
type segCtx struct {
	l3, l4, pay int
	mss, last   int // payload per segment; index of the last segment
	ipv6, tcp   bool
	partial     bool
	pseudo      uint64 // LE-domain sum of addresses and protocol
	ipBase      uint64 // IPv4 header without total length, id and checksum, folded
	l4Base      uint64 // L4 header without seq/flags/length and checksum
	id0         uint16
	seq0        uint32
	flags       uint8
	doff        uint8
}

// le is the LE-domain value of a 16-bit field stored big endian.
func le(v uint16) uint64 { return uint64(bits.ReverseBytes16(v)) }

func (p *Packet) newSegCtx() segCtx {
	c := segCtx{
		l3: p.h.l3, l4: p.h.l4, pay: p.h.pay, mss: p.mss, last: p.segs - 1,
		ipv6: p.h.ipv6, tcp: p.h.proto == protoTCP, partial: p.opt.PartialCsum,
	}
	b := p.data
	l3, l4, pay := p.h.l3, p.h.l4, p.h.pay
	if p.h.ipv6 {
		c.pseudo = sumLE(IPv6(b[l3 : l3+ipv6FixedSize]).Addresses())
	} else {
		ip := IPv4(b[l3:l4])
		c.pseudo = sumLE(ip.Addresses())
		c.id0 = ip.ID()
		// Everything but total length, id and checksum: version/IHL/TOS,
		// flags/fragment offset, TTL/protocol, the addresses and any
		// options.
		c.ipBase = uint64(fold(add(sumLE(ip[:ipv4TotalLen]), add(sumLE(ip[ipv4Flags:ipv4Checksum]), sumLE(ip[ipv4SrcAddr:])))))
	}
	c.pseudo += uint64(p.h.proto) << 8
	if c.tcp {
		th := TCP(b[l4:pay])
		c.seq0 = th.SequenceNumber()
		c.doff, c.flags = th[tcpDataOff], th.Flags()
		// Ports, ack, window, urgent pointer, options.
		c.l4Base = add(sumLE(th.Ports()), add(sumLE(th[tcpAckNum:tcpDataOff]), add(sumLE(th.Window()), sumLE(th.UrgentAndOptions()))))
	} else {
		c.l4Base = sumLE(UDP(b[l4 : l4+udpSize]).Ports())
	}
	return c
}

// fold32 folds a sum below 2^32 to 16 bits: two rounds suffice, since the
// first leaves at most 0x1fffe.
func fold32(s uint64) uint16 {
	s = (s >> 16) + (s & 0xffff)
	return uint16((s >> 16) + (s & 0xffff))
}

// fix rewrites the headers at dst[:pay] for segment i of n bytes whose payload
// sums to paySum (LE domain). The views are cut at their fixed sizes, so the
// compiler checks each slice once instead of every field.
func (c *segCtx) fix(dst []byte, n, i int, paySum uint64) {
	l3, l4 := c.l3, c.l4
	if c.ipv6 {
		IPv6(dst[l3 : l3+ipv6FixedSize]).SetPayloadLength(uint16(n - l3 - ipv6FixedSize))
	} else {
		ip := IPv4(dst[l3 : l3+ipv4MinSize])
		tot, id := uint16(n-l3), c.id0+uint16(i)
		ip.SetTotalLength(tot)
		ip.SetID(id)
		// ipBase is folded: the sum of three 16-bit values stays below 2^18.
		binary.LittleEndian.PutUint16(ip[ipv4Checksum:], ^fold32(c.ipBase+le(tot)+le(id)))
	}
	l4len := n - l4
	ph := c.pseudo + lenLE(l4len)
	var field []byte
	s := c.l4Base
	if c.tcp {
		th := TCP(dst[l4 : l4+tcpMinSize])
		seq := c.seq0 + uint32(i*c.mss)
		th.SetSequenceNumber(seq)
		f := c.flags
		if i != c.last {
			f &^= tcpFIN | tcpPSH
		}
		if i > 0 {
			f &^= tcpCWR
		}
		th.SetFlags(f)
		field = th[tcpChecksum : tcpChecksum+2]
		s += le(uint16(seq>>16)) + le(uint16(seq)) + le(uint16(c.doff)<<8|uint16(f))
	} else {
		uh := UDP(dst[l4 : l4+udpSize])
		uh.SetLength(uint16(l4len))
		field = uh[udpChecksum : udpChecksum+2]
		s += le(uint16(l4len))
	}
	if c.partial {
		binary.LittleEndian.PutUint16(field, fold(ph))
		return
	}
	putCsum(field, add(ph, add(s, paySum)), !c.tcp)
}

// CompleteChecksum completes a partial checksum (NEEDS_CSUM) in place, as the
// kernel's skb_checksum_help does: the sum from CsumStart to the end of pkt,
// which includes the pseudo-header seed already in the field, is stored at
// CsumStart+CsumOffset. It does nothing without NEEDS_CSUM.
func CompleteChecksum(hdr Hdr, pkt []byte) error {
	if hdr.Flags&FlagNeedsCsum == 0 {
		return nil
	}
	start, off := int(hdr.CsumStart), int(hdr.CsumOffset)
	if start+off+2 > len(pkt) {
		return fail(RuleCsumBounds, "csum_start %d csum_offset %d, packet %d bytes", start, off, len(pkt))
	}
	completeCsum(pkt, start, off)
	return nil
}

func completeCsum(pkt []byte, start, off int) {
	putCsum(pkt[start+off:], sumLE(pkt[start:]), true)
}
