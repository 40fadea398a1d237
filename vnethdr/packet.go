package vnethdr

import "encoding/binary"

// Link says what a packet starts with.
type Link uint8

const (
	// LinkEthernet: an Ethernet frame, with 0, 1 or 2 VLAN tags (tap devices).
	LinkEthernet Link = iota
	// LinkIP: an IPv4 or IPv6 packet (tun devices with IFF_NO_PI).
	LinkIP
)

// Options tune how packets are parsed and split. The zero value means
// Ethernet frames and complete checksums.
type Options struct {
	Link Link
	// PartialCsum leaves each segment's TCP/UDP checksum partial (the pseudo
	// header sum, as NEEDS_CSUM expects) instead of completing it, which spares
	// a pass over the payload. Use it only towards a peer that accepts
	// NEEDS_CSUM (a tap with TUN_F_CSUM but not TSO): send each segment with
	// Packet.SegmentHdr.
	PartialCsum bool
	// UDPMaxSegments is the kernel's UDP_MAX_SEGMENTS: 0 means 128 (Linux >= 6.13);
	// set 64 to be as strict as older kernels.
	UDPMaxSegments int
}

const (
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd
	etherTypeVLAN = 0x8100
	etherTypeQinQ = 0x88a8

	protoTCP = 6
	protoUDP = 17

	ipv6HopByHop = 0
	ipv6Routing  = 43
	ipv6Fragment = 44
	ipv6DestOpts = 60

	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
	tcpURG = 0x20
	tcpECE = 0x40
	tcpCWR = 0x80

	maxVLANTags = 2
)

// headers holds the offsets of a parsed frame.
type headers struct {
	l3    int   // start of the IP header
	l4    int   // start of the TCP/UDP header
	pay   int   // start of the L4 payload
	ipv6  bool  // IP version
	proto uint8 // L4 protocol
	// ipv6 fragmentable part starts here (after hop-by-hop/routing/dest opts
	// that precede a routing header); UFO inserts its fragment header there.
	fragAt   int
	fragNext int // offset of the next-header byte that must point to the fragment header
}

// parseL3 finds the IP header after the link layer.
func parseL3(b []byte, link Link) (l3 int, ipv6 bool, err error) {
	if link == LinkIP {
		if len(b) < 1 {
			return 0, false, fail(RuleNetwork, "empty packet")
		}
		switch b[0] >> 4 {
		case 4:
			return 0, false, nil
		case 6:
			return 0, true, nil
		}
		return 0, false, fail(RuleNetwork, "IP version %d", b[0]>>4)
	}
	off := 12
	for tags := 0; ; tags++ {
		if len(b) < off+2 {
			return 0, false, fail(RuleLink, "Ethernet header truncated at %d bytes", len(b))
		}
		et := binary.BigEndian.Uint16(b[off:])
		switch et {
		case etherTypeIPv4:
			return off + 2, false, nil
		case etherTypeIPv6:
			return off + 2, true, nil
		case etherTypeVLAN, etherTypeQinQ:
			if tags == maxVLANTags {
				return 0, false, fail(RuleLink, "more than %d VLAN tags", maxVLANTags)
			}
			off += 4
		default:
			return 0, false, fail(RuleLink, "ethertype %#04x is neither IPv4 nor IPv6", et)
		}
	}
}

// parseHeaders parses link, IP and L4 headers. It refuses IPv4 fragments and
// IPv6 fragment headers: a fragment cannot be segmented.
func parseHeaders(b []byte, link Link) (h headers, err error) {
	if h.l3, h.ipv6, err = parseL3(b, link); err != nil {
		return h, err
	}
	ip := b[h.l3:]
	if !h.ipv6 {
		if len(ip) < 20 {
			return h, fail(RuleNetwork, "IPv4 header truncated: %d bytes", len(ip))
		}
		if ip[0]>>4 != 4 {
			return h, fail(RuleNetwork, "IPv4 ethertype with IP version %d", ip[0]>>4)
		}
		ihl := int(ip[0]&0xf) * 4
		if ihl < 20 || len(ip) < ihl {
			return h, fail(RuleNetwork, "IPv4 header length %d with %d bytes", ihl, len(ip))
		}
		if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
			return h, fail(RuleNetwork, "IPv4 fragment")
		}
		h.proto = ip[9]
		h.l4 = h.l3 + ihl
		return h, nil
	}
	if len(ip) < 40 {
		return h, fail(RuleNetwork, "IPv6 header truncated: %d bytes", len(ip))
	}
	if ip[0]>>4 != 6 {
		return h, fail(RuleNetwork, "IPv6 ethertype with IP version %d", ip[0]>>4)
	}
	next := ip[6]
	off := h.l3 + 40
	h.fragAt, h.fragNext = off, h.l3+6
	for {
		switch next {
		case ipv6HopByHop, ipv6Routing, ipv6DestOpts:
			if len(b) < off+8 {
				return h, fail(RuleNetwork, "IPv6 extension header %d truncated", next)
			}
			n := (int(b[off+1]) + 1) * 8
			if len(b) < off+n {
				return h, fail(RuleNetwork, "IPv6 extension header %d of %d bytes truncated", next, n)
			}
			// RFC 8200 4.5: the unfragmentable part ends after hop-by-hop and
			// routing headers (and destination options before a routing header).
			if next == ipv6HopByHop || next == ipv6Routing {
				h.fragAt, h.fragNext = off+n, off
			}
			next = b[off]
			off += n
		case ipv6Fragment:
			return h, fail(RuleNetwork, "IPv6 fragment header")
		default:
			h.proto = next
			h.l4 = off
			return h, nil
		}
	}
}

// parseL4 checks the transport header at h.l4 and sets h.pay.
func parseL4(b []byte, h *headers) error {
	switch h.proto {
	case protoTCP:
		if len(b) < h.l4+20 {
			return fail(RuleTransport, "TCP header truncated: %d bytes", len(b)-h.l4)
		}
		n := int(b[h.l4+12]>>4) * 4
		if n < 20 || len(b) < h.l4+n {
			return fail(RuleTransport, "TCP header length %d with %d bytes", n, len(b)-h.l4)
		}
		h.pay = h.l4 + n
	case protoUDP:
		if len(b) < h.l4+8 {
			return fail(RuleTransport, "UDP header truncated: %d bytes", len(b)-h.l4)
		}
		h.pay = h.l4 + 8
	default:
		return fail(RuleTransport, "IP protocol %d is neither TCP nor UDP", h.proto)
	}
	return nil
}
