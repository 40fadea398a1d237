package vnethdr

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// spec describes a super-packet for the table tests. Frames are built by hand
// (not with the code under test); outputs are judged by gopacket.
type spec struct {
	name     string
	v6, udp  bool
	ufo      bool // gso_type UDP (IP fragmentation) instead of UDP_L4
	vlans    int
	ext      []byte // IPv6 extension header types, in order (0, 43, 60)
	link     Link
	payload  int
	mss      int
	tcpFlags uint8 // 0 means ACK|PSH
	ecn      bool
	tsOpt    bool // TCP timestamp option (12 bytes)
	noCsum   bool // no NEEDS_CSUM: a complete checksum in the input instead
	zeroUDP  bool // IPv4 UDP with checksum 0 and no NEEDS_CSUM
	ipv4Opts bool // 4 bytes of IPv4 options (NOP x3 + EOL)
	seq      uint32
}

type built struct {
	frame   []byte
	hdr     Hdr
	payload []byte // the L4 payload (UDP/TCP data)
	l3, l4  int
	pay     int
}

var (
	srcMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	dstMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
	src4   = net.IP{10, 0, 0, 1}
	dst4   = net.IP{10, 0, 0, 2}
	src6   = net.ParseIP("fd00::1")
	dst6   = net.ParseIP("fd00::2")
)

// refSum is a deliberately naive big-endian ones-complement sum, used only to
// build inputs.
func refSum(b []byte, s uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func refFold(s uint32) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

func build(t testing.TB, s spec) built {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(s.payload), uint64(s.mss)))
	var f []byte
	if s.link == LinkEthernet {
		f = append(f, dstMAC...)
		f = append(f, srcMAC...)
		for i := 0; i < s.vlans; i++ {
			tpid := uint16(0x8100)
			if s.vlans == 2 && i == 0 {
				tpid = 0x88a8
			}
			f = binary.BigEndian.AppendUint16(f, tpid)
			f = binary.BigEndian.AppendUint16(f, uint16(100+i))
		}
		if s.v6 {
			f = binary.BigEndian.AppendUint16(f, 0x86dd)
		} else {
			f = binary.BigEndian.AppendUint16(f, 0x0800)
		}
	}
	b := built{l3: len(f)}
	proto := byte(6)
	if s.udp {
		proto = 17
	}
	if s.v6 {
		f = append(f, 0x60, 0, 0, 0, 0, 0, 0, 64)
		f = append(f, src6...)
		f = append(f, dst6...)
		nextAt := b.l3 + 6
		for _, e := range s.ext {
			f[nextAt] = e
			nextAt = len(f)
			switch e {
			case 43: // routing type 253 (experimental), no segments left
				f = append(f, 0, 0, 253, 0, 0, 0, 0, 0)
			default: // hop-by-hop, destination options: PadN
				f = append(f, 0, 0, 1, 4, 0, 0, 0, 0)
			}
		}
		f[nextAt] = proto
	} else {
		ihl := byte(5)
		if s.ipv4Opts {
			ihl = 6
		}
		f = append(f, 0x40|ihl, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0)
		f = append(f, src4...)
		f = append(f, dst4...)
		if s.ipv4Opts {
			f = append(f, 1, 1, 1, 0)
		}
	}
	b.l4 = len(f)
	if s.udp {
		f = append(f, 0x30, 0x39, 0x10, 0xe1, 0, 0, 0, 0)
	} else {
		fl := s.tcpFlags
		if fl == 0 {
			fl = tcpACK | tcpPSH
		}
		doff := byte(5)
		if s.tsOpt {
			doff = 8
		}
		f = binary.BigEndian.AppendUint16(f, 40000)
		f = binary.BigEndian.AppendUint16(f, 5201)
		f = binary.BigEndian.AppendUint32(f, s.seq)
		f = binary.BigEndian.AppendUint32(f, 0x11223344)
		f = append(f, doff<<4, fl, 0x01, 0xf6, 0, 0, 0, 0)
		if s.tsOpt {
			f = append(f, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2)
		}
	}
	b.pay = len(f)
	b.payload = make([]byte, s.payload)
	for i := range b.payload {
		b.payload[i] = byte(rng.Uint32())
	}
	f = append(f, b.payload...)
	n := len(f)
	// IP lengths and header checksum.
	if s.v6 {
		binary.BigEndian.PutUint16(f[b.l3+4:], uint16(n-b.l3-40))
	} else {
		binary.BigEndian.PutUint16(f[b.l3+2:], uint16(n-b.l3))
		binary.BigEndian.PutUint16(f[b.l3+10:], ^refFold(refSum(f[b.l3:b.l4], 0)))
	}
	csumOff := 16
	if s.udp {
		csumOff = 6
		binary.BigEndian.PutUint16(f[b.l4+4:], uint16(n-b.l4))
	}
	var ph uint32
	if s.v6 {
		ph = refSum(f[b.l3+8:b.l3+40], 0)
	} else {
		ph = refSum(f[b.l3+12:b.l3+20], 0)
	}
	ph += uint32(proto) + uint32(n-b.l4)
	switch {
	case s.zeroUDP:
	case s.noCsum:
		binary.BigEndian.PutUint16(f[b.l4+csumOff:], ^refFold(refSum(f[b.l4:], ph)))
	default:
		binary.BigEndian.PutUint16(f[b.l4+csumOff:], refFold(ph))
		b.hdr.Flags = FlagNeedsCsum
		b.hdr.CsumStart = uint16(b.l4)
		b.hdr.CsumOffset = uint16(csumOff)
	}
	b.frame = f
	switch {
	case s.ufo:
		b.hdr.GSOType = GSOUDP
	case s.udp:
		b.hdr.GSOType = GSOUDPL4
	case s.v6:
		b.hdr.GSOType = GSOTCPv6
	default:
		b.hdr.GSOType = GSOTCPv4
	}
	if s.ecn {
		b.hdr.GSOType |= GSOECN
	}
	b.hdr.GSOSize = uint16(s.mss)
	b.hdr.HdrLen = uint16(b.pay)
	return b
}

// decode parses a frame with gopacket and fails on any decoding error.
func decode(t testing.TB, frame []byte, link Link) gopacket.Packet {
	t.Helper()
	first := gopacket.Decoder(layers.LayerTypeEthernet)
	if link == LinkIP {
		if frame[0]>>4 == 6 {
			first = layers.LayerTypeIPv6
		} else {
			first = layers.LayerTypeIPv4
		}
	}
	p := gopacket.NewPacket(frame, first, gopacket.Default)
	if el := p.ErrorLayer(); el != nil {
		t.Fatalf("gopacket cannot decode frame: %v\n%s", el.Error(), p.Dump())
	}
	return p
}

// reserialize serializes ls with gopacket computing checksums, and compares
// with want: equal bytes mean every checksum and length in want is right.
func reserialize(t testing.TB, what string, want []byte, ls ...gopacket.SerializableLayer) {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("%s: gopacket serialize: %v", what, err)
	}
	if got := buf.Bytes(); !bytes.Equal(got, want) {
		t.Fatalf("%s: gopacket recomputes different bytes (checksum or length wrong)\n ours: % x\n gopk: % x", what, head(want), head(got))
	}
}

func head(b []byte) []byte { return b[:min(len(b), 64)] }

// netForCsum returns a fresh network layer carrying only what the pseudo
// header needs.
func netForCsum(p gopacket.Packet, proto layers.IPProtocol) gopacket.NetworkLayer {
	if ip, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		return &layers.IPv4{Version: 4, SrcIP: ip.SrcIP, DstIP: ip.DstIP, Protocol: proto}
	}
	ip := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	return &layers.IPv6{Version: 6, SrcIP: ip.SrcIP, DstIP: ip.DstIP, NextHeader: proto}
}

// checkIP verifies the IP header of frame (length and, for IPv4, checksum).
func checkIP(t testing.TB, p gopacket.Packet, frame []byte, l3 int) {
	t.Helper()
	if ip, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		if int(ip.Length) != len(frame)-l3 {
			t.Fatalf("IPv4 total length %d, frame has %d IP bytes", ip.Length, len(frame)-l3)
		}
		c := *ip
		reserialize(t, "IPv4", frame[l3:], &c, gopacket.Payload(ip.Payload))
		return
	}
	ip := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	if int(ip.Length) != len(frame)-l3-40 {
		t.Fatalf("IPv6 payload length %d, frame has %d bytes after the fixed header", ip.Length, len(frame)-l3-40)
	}
}

type seg struct {
	frame   []byte
	payload []byte
	tcp     *layers.TCP
	udp     *layers.UDP
	ip4     *layers.IPv4
}

// checkL4 verifies one segment with gopacket and returns its pieces.
func checkSeg(t testing.TB, frame []byte, link Link, l3, l4 int) seg {
	t.Helper()
	p := decode(t, frame, link)
	checkIP(t, p, frame, l3)
	s := seg{frame: frame}
	s.ip4, _ = p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if tcp, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP); ok {
		c := *tcp
		if err := c.SetNetworkLayerForChecksum(netForCsum(p, layers.IPProtocolTCP)); err != nil {
			t.Fatal(err)
		}
		reserialize(t, "TCP", frame[l4:], &c, gopacket.Payload(tcp.Payload))
		s.tcp, s.payload = tcp, tcp.Payload
		return s
	}
	udp, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if !ok {
		t.Fatalf("no TCP or UDP layer:\n%s", p.Dump())
	}
	if int(udp.Length) != len(frame)-l4 {
		t.Fatalf("UDP length %d, frame has %d UDP bytes", udp.Length, len(frame)-l4)
	}
	if udp.Checksum != 0 {
		c := *udp
		if err := c.SetNetworkLayerForChecksum(netForCsum(p, layers.IPProtocolUDP)); err != nil {
			t.Fatal(err)
		}
		reserialize(t, "UDP", frame[l4:], &c, gopacket.Payload(udp.Payload))
	}
	s.udp, s.payload = udp, udp.Payload
	return s
}

func segBuffers(n, size int) ([][]byte, []int) {
	out := make([][]byte, n)
	for i := range out {
		out[i] = make([]byte, size)
	}
	return out, make([]int, n)
}

func (s spec) String() string { return fmt.Sprintf("%+v", s.name) }
