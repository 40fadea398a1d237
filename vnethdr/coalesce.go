package vnethdr

import (
	"encoding/binary"
	"fmt"
)

// CoalesceOptions tune a Coalescer.
type CoalesceOptions struct {
	Link Link
	// UDP merges UDP datagrams of one flow into UDP_L4 (USO) super-packets.
	// Only for a destination that accepts USO (TUN_F_USO4|TUN_F_USO6).
	UDP bool
}

const (
	maxGROLen     = 0xffff // IP length field limit, as the kernel's legacy GRO limit
	maxUDPGROSegs = 64     // the kernel's UDP_GRO_CNT_MAX
)

// Coalescer is software GRO: it merges the MTU-sized TCP (and, optionally, UDP)
// packets of each flow in a batch into super-packets with the vnet header that
// describes them, following the kernel's tcp_gro_receive and
// udp_gro_receive_segment rules: same flow and link header, same TOS/TTL/DF
// (IPv4, with incrementing ids, or fixed ones under DF) or traffic class/flow label/hop
// limit (IPv6), no IPv4 options or IPv6 extension headers, equal TCP options,
// ack, window and urgent pointer, consecutive sequence numbers, only ACK with PSH on the last
// segment (CWR only on the first), no segment larger than the first, nothing
// after a shorter one, checksums verified first, at most 64 KB. Everything
// else passes through unchanged, in order within its flow. A batch is flushed
// when Coalesce returns; nothing is carried to the next batch.
//
// A Coalescer is not safe for concurrent use. It allocates only while its
// internal tables grow to the largest batch seen.
type Coalescer struct {
	opt    CoalesceOptions
	pkts   [][]byte
	info   []pktInfo
	groups []group
	open   []int32 // indices of groups that may still grow
	iov    [][]byte
	iovAt  []int32 // groups[i]'s iovecs are iov[iovAt[i]:iovAt[i+1]]
	heads  []byte  // rewritten headers of merged groups
	recent int32   // the group the previous packet went to, or -1
	// The fast path's view of group fastGroup (-1: none): which header
	// bytes a packet must share with the group's first one.
	fastGroup int32
	fastMask  [maxFastHdr]byte
	fastPH    uint64 // pseudo-header sum without the length
	noFast    bool   // tests: the full path only, to compare against
}

// maxFastHdr bounds the headers (link, IP, TCP) the fast path compares.
const maxFastHdr = 128

type pktInfo struct {
	h    headers
	next int32
}

type group struct {
	hash    uint32
	first   int32
	last    int32
	count   int32
	mss     int // payload of the first packet
	size    int // IP length of the merged packet (from l3)
	nextSeq uint32
	nextID  uint16
	idMode  int8 // IPv4 ids seen so far: 1 incrementing, -1 fixed, 0 not known yet
	closed  bool
}

// NewCoalescer returns a Coalescer for packets of the given link type.
func NewCoalescer(opt CoalesceOptions) *Coalescer { return &Coalescer{opt: opt} }

// Coalesce merges the batch pkts, each a whole frame with complete
// checksums, and returns the number of output packets. Output i is
// described by Out(i). The inputs are not modified: a merged packet is its
// rewritten headers (held by the Coalescer) followed by the payloads of its
// segments, which point into pkts; outputs stay valid until pkts is reused
// or Coalesce is called again.
func (c *Coalescer) Coalesce(pkts [][]byte) int {
	c.pkts = pkts
	c.info = c.info[:0]
	c.groups = c.groups[:0]
	c.open = c.open[:0]
	c.recent, c.fastGroup = -1, -1
	for i, pkt := range pkts {
		c.info = append(c.info, pktInfo{next: -1})
		c.add(int32(i), pkt)
	}
	// Headers of merged groups are rewritten into c.heads, so the inputs stay
	// untouched; size it first so that the slices handed out stay valid.
	need := 0
	for gi := range c.groups {
		if g := &c.groups[gi]; g.count > 1 {
			need += c.info[g.first].h.pay
		}
	}
	if cap(c.heads) < need {
		c.heads = make([]byte, need)
	}
	heads := c.heads[:need]
	c.iov = c.iov[:0]
	c.iovAt = c.iovAt[:0]
	for gi := range c.groups {
		g := &c.groups[gi]
		c.iovAt = append(c.iovAt, int32(len(c.iov)))
		if g.count == 1 {
			c.iov = append(c.iov, pkts[g.first])
			continue
		}
		pay := c.info[g.first].h.pay
		head := heads[:pay:pay]
		heads = heads[pay:]
		c.finish(g, head)
		c.iov = append(c.iov, head)
		for p := g.first; p >= 0; p = c.info[p].next {
			c.iov = append(c.iov, pkts[p][c.info[p].h.pay:])
		}
	}
	c.iovAt = append(c.iovAt, int32(len(c.iov)))
	return len(c.groups)
}

// Out returns the vnet header and the pieces (iovecs) of output i: their
// concatenation is the frame. A packet passed through has a zero header.
func (c *Coalescer) Out(i int) (Hdr, [][]byte) {
	g := &c.groups[i]
	iov := c.iov[c.iovAt[i]:c.iovAt[i+1]]
	if g.count == 1 {
		return Hdr{}, iov
	}
	h := c.info[g.first].h
	hdr := Hdr{
		Flags:     FlagNeedsCsum,
		HdrLen:    uint16(h.pay),
		GSOSize:   uint16(g.mss),
		CsumStart: uint16(h.l4),
	}
	switch {
	case h.proto == protoUDP:
		hdr.GSOType, hdr.CsumOffset = GSOUDPL4, 6
	case h.ipv6:
		hdr.GSOType, hdr.CsumOffset = GSOTCPv6, 16
	default:
		hdr.GSOType, hdr.CsumOffset = GSOTCPv4, 16
	}
	if h.proto == protoTCP && TCP(c.pkts[g.first][h.l4:]).Flags()&tcpCWR != 0 {
		hdr.GSOType |= GSOECN
	}
	return hdr, iov
}

// Inputs returns the index in the batch of the first packet of output i and
// how many packets it holds: 1 for a packet passed through unchanged (Out's
// only piece is then that packet itself), more for a merged one. A caller
// that keeps per-packet state (the buffer a packet was read into) finds it
// by this index.
func (c *Coalescer) Inputs(i int) (first, count int) {
	g := &c.groups[i]
	return int(g.first), int(g.count)
}

// CopyOut copies output i into dst and returns its length.
func (c *Coalescer) CopyOut(i int, dst []byte) (int, error) {
	_, iov := c.Out(i)
	n := 0
	for _, v := range iov {
		n += len(v)
	}
	if len(dst) < n {
		return 0, fmt.Errorf("vnethdr: buffer of %d bytes for a %d-byte coalesced frame", len(dst), n)
	}
	n = 0
	for _, v := range iov {
		n += copy(dst[n:], v)
	}
	return n, nil
}

// add classifies packet i and either merges it, starts a group, or passes it.
func (c *Coalescer) add(i int32, pkt []byte) {
	if c.recent >= 0 && !c.noFast && c.appendFast(c.recent, i, pkt) {
		return
	}
	h, ok := c.candidate(pkt)
	c.info[i].h = h
	var hash uint32
	if h.l4 != 0 {
		// Bulk flows come in runs: the group the previous packet went to is
		// tried before hashing. A flow has at most one open group, so this
		// finds the same group lookup would.
		gi := c.recent
		if gi >= 0 && !c.groups[gi].closed && c.sameFlow(gi, pkt, &h) {
			hash = c.groups[gi].hash
		} else {
			hash = flowHash(pkt, &h)
			gi = c.lookup(hash, pkt, &h)
		}
		if gi >= 0 {
			if ok && c.merge(gi, i, pkt, &h) {
				c.recent = gi
				return
			}
			c.close(gi)
		}
	}
	c.recent = int32(len(c.groups))
	c.groups = append(c.groups, group{hash: hash, first: i, last: i, count: 1, closed: !ok})
	if !ok {
		return
	}
	g := &c.groups[len(c.groups)-1]
	g.mss = len(pkt) - h.pay
	g.size = len(pkt) - h.l3
	if h.proto == protoTCP {
		th := TCP(pkt[h.l4:])
		g.nextSeq = th.SequenceNumber() + uint32(g.mss)
		if th.Flags()&tcpPSH != 0 {
			g.closed = true
			return
		}
	}
	if !h.ipv6 {
		g.nextID = IPv4(pkt[h.l3:h.l3+ipv4MinSize]).ID() + 1
	}
	c.open = append(c.open, int32(len(c.groups)-1))
}

// candidate parses pkt. h.l4 is non-zero when the flow could be identified;
// ok says whether the packet may be merged at all.
func (c *Coalescer) candidate(pkt []byte) (h headers, ok bool) {
	var err error
	if h, err = parseHeaders(pkt, c.opt.Link); err != nil {
		return headers{}, false
	}
	if h.proto != protoTCP && !(h.proto == protoUDP && c.opt.UDP) {
		return headers{}, false
	}
	if parseL4(pkt, &h) != nil {
		return headers{}, false
	}
	n := len(pkt)
	var ph uint64
	if h.ipv6 {
		ip := IPv6(pkt[h.l3 : h.l3+ipv6FixedSize])
		if h.l4 != h.l3+ipv6FixedSize || int(ip.PayloadLength()) != n-h.l3-ipv6FixedSize {
			return h, false
		}
	} else {
		ip := IPv4(pkt[h.l3 : h.l3+ipv4MinSize])
		if h.l4 != h.l3+ipv4MinSize || int(ip.TotalLength()) != n-h.l3 || !ipv4HeaderValid(ip) {
			return h, false
		}
	}
	ph = sumAddrs(pkt, &h)
	if n == h.pay {
		return h, false
	}
	l4 := pkt[h.l4:]
	if h.proto == protoTCP {
		if TCP(l4).Flags()&^(tcpPSH|tcpECE|tcpCWR) != tcpACK {
			return h, false
		}
	} else if uh := UDP(l4); int(uh.Length()) != n-h.l4 || uh.NoChecksum() {
		return h, false
	}
	ph += uint64(h.proto)<<8 + lenLE(n-h.l4)
	if fold(add(ph, sumLE(l4))) != 0xffff {
		return h, false
	}
	return h, true
}

func flowHash(pkt []byte, h *headers) uint32 {
	x := binary.LittleEndian.Uint32(pkt[h.l4:]) ^ uint32(h.proto)
	// The folded address sum is as good a mix as hashing every word.
	return (x ^ uint32(fold(sumAddrs(pkt, h)))) * 0x9e3779b1
}

// addresses returns the source and destination addresses of a parsed
// packet, as bytes.
func addresses(pkt []byte, h *headers) []byte {
	if h.ipv6 {
		return IPv6(pkt[h.l3 : h.l3+ipv6FixedSize]).Addresses()
	}
	return IPv4(pkt[h.l3 : h.l3+ipv4MinSize]).Addresses()
}

// lookup returns the open group of pkt's flow, or -1.
func (c *Coalescer) lookup(hash uint32, pkt []byte, h *headers) int32 {
	for _, gi := range c.open {
		if c.groups[gi].hash == hash && c.sameFlow(gi, pkt, h) {
			return gi
		}
	}
	return -1
}

// sameFlow reports whether pkt belongs to group gi's flow: same link
// header, IP version, protocol, addresses and ports.
func (c *Coalescer) sameFlow(gi int32, pkt []byte, h *headers) bool {
	first := c.groups[gi].first
	fh := &c.info[first].h
	f := c.pkts[first]
	return fh.l3 == h.l3 && fh.ipv6 == h.ipv6 && fh.proto == h.proto && eqShort(f[:h.l3], pkt[:h.l3]) &&
		eqShort(addresses(f, fh), addresses(pkt, h)) &&
		binary.LittleEndian.Uint32(f[fh.l4:]) == binary.LittleEndian.Uint32(pkt[h.l4:]) // ports
}

func (c *Coalescer) close(gi int32) {
	c.groups[gi].closed = true
	for k, o := range c.open {
		if o == gi {
			c.open[k] = c.open[len(c.open)-1]
			c.open = c.open[:len(c.open)-1]
			return
		}
	}
}

// merge appends packet i to group gi if the kernel's rules allow it.
func (c *Coalescer) merge(gi, i int32, pkt []byte, h *headers) bool {
	g := &c.groups[gi]
	f := c.pkts[g.first]
	fh := &c.info[g.first].h
	l3, l4 := h.l3, h.l4
	pay := len(pkt) - h.pay
	if pay > g.mss || g.size+pay > maxGROLen {
		return false
	}
	if h.ipv6 {
		fi, ip := IPv6(f[l3:l3+ipv6FixedSize]), IPv6(pkt[l3:l3+ipv6FixedSize])
		if binary.LittleEndian.Uint32(fi.VersionClassFlow()) != binary.LittleEndian.Uint32(ip.VersionClassFlow()) || fi.HopLimit() != ip.HopLimit() {
			return false
		}
	} else {
		fi, ip := IPv4(f[l3:l3+ipv4MinSize]), IPv4(pkt[l3:l3+ipv4MinSize])
		df := ip.DontFragment()
		if fi.TOS() != ip.TOS() || fi.TTL() != ip.TTL() || fi.DontFragment() != df {
			return false
		}
		// Ids must increment; with DF the kernel also takes a fixed id
		// (SKB_GSO_TCP_FIXEDID), but not a mix of both.
		id := ip.ID()
		switch {
		case id == g.nextID && g.idMode >= 0:
			g.idMode = 1
		case df && id == g.nextID-uint16(g.count) && g.idMode <= 0:
			g.idMode = -1
		default:
			return false
		}
	}
	closeAfter := pay < g.mss
	if h.proto == protoTCP {
		th, fth := TCP(pkt[l4:h.pay]), TCP(f[fh.l4:fh.pay])
		// (The length test only proves the fixed fields in bounds.)
		if len(th) < tcpMinSize || len(th) != len(fth) || th.SequenceNumber() != g.nextSeq {
			return false
		}
		fl := th.Flags()
		if fl&tcpCWR != 0 {
			return false
		}
		// Ack, data offset, flags other than PSH/CWR, window, urgent
		// pointer, options. The kernel ignores the urgent pointer when URG
		// is clear, but segmentation copies the first header's to every
		// segment: merging differing ones would not give back the frames
		// that came in.
		// One word covers ack, data offset, flags (byte 5 of it, where PSH
		// and CWR may differ) and window.
		const sameMask = ^(uint64(tcpPSH|tcpCWR) << 40)
		if (binary.LittleEndian.Uint64(th[tcpAckNum:])^binary.LittleEndian.Uint64(fth[tcpAckNum:]))&sameMask != 0 ||
			!eqShort(th.UrgentAndOptions(), fth.UrgentAndOptions()) {
			return false
		}
		if fl&tcpPSH != 0 {
			closeAfter = true
		}
		g.nextSeq += uint32(pay)
	} else if g.count >= maxUDPGROSegs {
		return false
	}
	c.info[g.last].next = i
	g.last = i
	g.count++
	g.size += pay
	g.nextID++
	if closeAfter || (h.proto == protoUDP && g.count >= maxUDPGROSegs) {
		c.close(gi)
	}
	return true
}

// finish rewrites the first packet's headers to describe the merged packet:
// IP length (and IPv4 header checksum), PSH from the last segment, UDP length,
// and the pseudo-header seed NEEDS_CSUM expects in the L4 checksum field.
func (c *Coalescer) finish(g *group, f []byte) {
	h := &c.info[g.first].h
	copy(f, c.pkts[g.first][:h.pay])
	l3, l4 := h.l3, h.l4
	n := l3 + g.size
	var ph uint64
	if h.ipv6 {
		ip := IPv6(f[l3:])
		ip.SetPayloadLength(uint16(g.size - ipv6FixedSize))
		ph = sumLE(ip.Addresses())
	} else {
		ip := IPv4(f[l3:l4])
		ip.SetTotalLength(uint16(g.size))
		ip.ClearChecksum()
		putCsum(ip.ChecksumField(), sumLE(ip), false)
		ph = sumLE(ip.Addresses())
	}
	ph += uint64(h.proto)<<8 + lenLE(n-l4)
	var field []byte
	if h.proto == protoUDP {
		uh := UDP(f[l4:])
		uh.SetLength(uint16(n - l4))
		field = uh.ChecksumField()
	} else {
		th := TCP(f[l4:])
		th.SetFlags(th.Flags() | TCP(c.pkts[g.last][c.info[g.last].h.l4:]).Flags()&tcpPSH)
		field = th.ChecksumField()
	}
	binary.LittleEndian.PutUint16(field, fold(ph))
}

// appendFast merges packet i into TCP group gi when it is the next segment
// of that flow, without parsing it: its headers must equal the group's
// first packet's byte for byte, except IP length, IPv4 id and checksum, TCP
// sequence number, PSH and CWR, and TCP checksum. Equal headers parse to the
// same offsets and pass the same header rules (candidate, sameFlow and merge
// checked them on the first packet); what is left is checked here: lengths,
// both checksums, the sequence number, the IPv4 id, no CWR. Anything else
// returns false before changing anything, and the full path decides.
func (c *Coalescer) appendFast(gi, i int32, pkt []byte) bool {
	g := &c.groups[gi]
	if g.closed {
		return false
	}
	fh := &c.info[g.first].h
	if fh.proto != protoTCP || fh.pay > maxFastHdr {
		return false
	}
	n := len(pkt)
	pay := n - fh.pay
	if pay <= 0 || pay > g.mss || g.size+pay > maxGROLen {
		return false
	}
	f := c.pkts[g.first]
	if c.fastGroup != gi {
		c.fastSetup(gi, f, fh)
	}
	if !maskedEqual(pkt, f, c.fastMask[:fh.pay]) {
		return false
	}
	l3, l4 := fh.l3, fh.l4
	idMode := g.idMode
	if fh.ipv6 {
		if int(IPv6(pkt[l3:l3+ipv6FixedSize]).PayloadLength()) != n-l3-ipv6FixedSize {
			return false
		}
	} else {
		ip := IPv4(pkt[l3 : l3+ipv4MinSize])
		if int(ip.TotalLength()) != n-l3 || !ipv4HeaderValid(ip) {
			return false
		}
		// As merge: incrementing ids, or fixed ones under DF, not a mix.
		switch id := ip.ID(); {
		case id == g.nextID && idMode >= 0:
			idMode = 1
		case ip.DontFragment() && id == g.nextID-uint16(g.count) && idMode <= 0:
			idMode = -1
		default:
			return false
		}
	}
	th := TCP(pkt[l4 : l4+tcpMinSize])
	fl := th.Flags()
	if fl&tcpCWR != 0 || th.SequenceNumber() != g.nextSeq {
		return false
	}
	if fold(add(c.fastPH+lenLE(n-l4), sumLE(pkt[l4:]))) != 0xffff {
		return false
	}
	c.info[i].h = *fh
	g.idMode = idMode
	g.nextSeq += uint32(pay)
	c.info[g.last].next = i
	g.last = i
	g.count++
	g.size += pay
	g.nextID++
	if pay < g.mss || fl&tcpPSH != 0 {
		c.close(gi)
	}
	return true
}

// fastSetup prepares appendFast for group gi, whose first packet is f.
func (c *Coalescer) fastSetup(gi int32, f []byte, fh *headers) {
	m := c.fastMask[:fh.pay]
	for k := range m {
		m[k] = 0xff
	}
	l3, l4 := fh.l3, fh.l4
	if fh.ipv6 {
		m[l3+ipv6PayloadLen], m[l3+ipv6PayloadLen+1] = 0, 0
	} else {
		for _, o := range []int{ipv4TotalLen, ipv4ID, ipv4Checksum} {
			m[l3+o], m[l3+o+1] = 0, 0
		}
	}
	for k := range 4 {
		m[l4+tcpSeqNum+k] = 0
	}
	m[l4+tcpFlags] = ^uint8(tcpPSH | tcpCWR)
	m[l4+tcpChecksum], m[l4+tcpChecksum+1] = 0, 0
	c.fastPH = sumAddrs(f, fh) + uint64(protoTCP)<<8
	c.fastGroup = gi
}

// maskedEqual reports whether a and b agree on every bit set in m; both are
// at least as long as m, which is at least 8 bytes long.
func maskedEqual(a, b, m []byte) bool {
	n := len(m)
	a, b = a[:n], b[:n]
	k := 0
	for ; k+8 <= n; k += 8 {
		if (binary.LittleEndian.Uint64(a[k:])^binary.LittleEndian.Uint64(b[k:]))&binary.LittleEndian.Uint64(m[k:]) != 0 {
			return false
		}
	}
	if k < n {
		k = n - 8 // the last word again, overlapping
		if (binary.LittleEndian.Uint64(a[k:])^binary.LittleEndian.Uint64(b[k:]))&binary.LittleEndian.Uint64(m[k:]) != 0 {
			return false
		}
	}
	return true
}
