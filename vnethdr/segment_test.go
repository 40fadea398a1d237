package vnethdr

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

var segSpecs = []spec{
	{name: "tcp4_64k", payload: 65000, mss: 1448, tsOpt: true},
	{name: "tcp4_last_short", payload: 1448*3 + 100, mss: 1448},
	{name: "tcp4_exact_multiple", payload: 1448 * 4, mss: 1448},
	{name: "tcp4_one_segment_equal", payload: 1448, mss: 1448},
	{name: "tcp4_below_mss", payload: 700, mss: 1448},
	{name: "tcp4_empty", payload: 0, mss: 1448},
	{name: "tcp4_odd_mss", payload: 10001, mss: 999},
	{name: "tcp4_tiny_mss", payload: 100, mss: 1},
	{name: "tcp4_ecn_cwr", payload: 5000, mss: 1448, ecn: true, tcpFlags: tcpACK | tcpCWR | tcpECE | tcpPSH},
	{name: "tcp4_cwr_no_ecn_bit", payload: 5000, mss: 1448, tcpFlags: tcpACK | tcpCWR},
	{name: "tcp4_fin", payload: 5000, mss: 1448, tcpFlags: tcpACK | tcpFIN | tcpPSH},
	{name: "tcp4_seq_wrap", payload: 9000, mss: 1448, seq: 0xffffff00},
	{name: "tcp4_vlan1", payload: 9000, mss: 1448, vlans: 1},
	{name: "tcp4_vlan2", payload: 9000, mss: 1448, vlans: 2},
	{name: "tcp4_ip_options", payload: 9000, mss: 1444, ipv4Opts: true},
	{name: "tcp4_no_needs_csum", payload: 9000, mss: 1448, noCsum: true},
	{name: "tcp4_tun", payload: 9000, mss: 1448, link: LinkIP},
	{name: "tcp6_64k", v6: true, payload: 65000, mss: 1428, tsOpt: true},
	{name: "tcp6_last_short", v6: true, payload: 3000, mss: 1428},
	{name: "tcp6_vlan2", v6: true, payload: 3000, mss: 1428, vlans: 2},
	{name: "tcp6_hbh", v6: true, payload: 5000, mss: 1420, ext: []byte{0}},
	{name: "tcp6_dstopts", v6: true, payload: 5000, mss: 1420, ext: []byte{60}},
	{name: "tcp6_hbh_rt_dst", v6: true, payload: 5000, mss: 1404, ext: []byte{0, 43, 60}},
	{name: "tcp6_ecn", v6: true, payload: 5000, mss: 1428, ecn: true, tcpFlags: tcpACK | tcpCWR},
	{name: "tcp6_tun", v6: true, payload: 5000, mss: 1428, link: LinkIP, ext: []byte{0}},
	{name: "udp4_64k", udp: true, payload: 65000, mss: 1472},
	{name: "udp4_last_short", udp: true, payload: 3000, mss: 1472},
	{name: "udp4_exact", udp: true, payload: 1472 * 3, mss: 1472},
	{name: "udp4_one", udp: true, payload: 1000, mss: 1472},
	{name: "udp4_vlan1", udp: true, payload: 3000, mss: 1472, vlans: 1},
	{name: "udp6_64k", udp: true, v6: true, payload: 65000, mss: 1452},
	{name: "udp6_ext", udp: true, v6: true, payload: 4000, mss: 1436, ext: []byte{0, 60}},
	{name: "udp6_tun", udp: true, v6: true, payload: 4000, mss: 1452, link: LinkIP},
}

func TestSegment(t *testing.T) {
	for _, s := range segSpecs {
		for _, partial := range []bool{false, true} {
			name := s.name
			if partial {
				name += "_partialcsum"
			}
			t.Run(name, func(t *testing.T) {
				b := build(t, s)
				opt := Options{Link: s.link, PartialCsum: partial}
				p, err := Parse(b.hdr, b.frame, opt)
				if err != nil {
					t.Fatalf("Parse(%v): %v", b.hdr, err)
				}
				want := max(1, (s.payload+s.mss-1)/s.mss)
				if p.Segments() != want {
					t.Fatalf("Segments() = %d, want %d", p.Segments(), want)
				}
				out, sizes := segBuffers(want, 65536)
				n, err := p.Segment(out, sizes)
				if err != nil || n != want {
					t.Fatalf("Segment = %d, %v; want %d segments", n, err, want)
				}
				frames := make([][]byte, n)
				for i := range frames {
					frames[i] = out[i][:sizes[i]]
				}
				checkIov(t, &p, frames)
				if partial {
					sh := p.SegmentHdr()
					if sh.Flags != FlagNeedsCsum || int(sh.CsumStart) != b.l4 {
						t.Fatalf("SegmentHdr = %v", sh)
					}
					for _, f := range frames {
						if err := Validate(sh, f, opt); err != nil {
							t.Fatalf("segment header refused: %v", err)
						}
						if err := CompleteChecksum(sh, f); err != nil {
							t.Fatal(err)
						}
					}
				} else if p.SegmentHdr() != (Hdr{}) {
					t.Fatalf("SegmentHdr = %v, want zero", p.SegmentHdr())
				}
				checkSegments(t, s, b, frames)
			})
		}
	}
}

// checkIov checks that the zero-copy form produces the same bytes.
func checkIov(t *testing.T, p *Packet, frames [][]byte) {
	t.Helper()
	heads, hl := segBuffers(len(frames), 256)
	pays := make([][]byte, len(frames))
	n, err := p.SegmentIov(heads, hl, pays)
	if err != nil || n != len(frames) {
		t.Fatalf("SegmentIov = %d, %v", n, err)
	}
	for i := range frames {
		got := append(append([]byte(nil), heads[i][:hl[i]]...), pays[i]...)
		if !bytes.Equal(got, frames[i]) {
			t.Fatalf("SegmentIov segment %d differs from Segment", i)
		}
	}
}

func checkSegments(t *testing.T, s spec, b built, frames [][]byte) {
	t.Helper()
	hl := b.pay
	var payload []byte
	inFlags := b.frame[b.l4+13]
	for i, f := range frames {
		last := i == len(frames)-1
		if len(f) > hl+s.mss && len(frames) > 1 {
			t.Fatalf("segment %d: %d bytes exceeds headers %d + gso_size %d", i, len(f), hl, s.mss)
		}
		if !last && len(f) != hl+s.mss {
			t.Fatalf("segment %d of %d: %d bytes, want %d", i, len(frames), len(f), hl+s.mss)
		}
		sg := checkSeg(t, f, s.link, b.l3, b.l4)
		payload = append(payload, sg.payload...)
		if !bytes.Equal(f[:b.l3], b.frame[:b.l3]) {
			t.Fatalf("segment %d: link header changed", i)
		}
		if sg.ip4 != nil {
			if sg.ip4.Id != 0x1234+uint16(i) {
				t.Fatalf("segment %d: IPv4 id %#x, want %#x", i, sg.ip4.Id, 0x1234+i)
			}
			if sg.ip4.Flags != layers.IPv4DontFragment || sg.ip4.TTL != 64 {
				t.Fatalf("segment %d: IPv4 flags %v ttl %d", i, sg.ip4.Flags, sg.ip4.TTL)
			}
		}
		if s.v6 && !bytes.Equal(f[b.l3+6:b.l4], b.frame[b.l3+6:b.l4]) {
			t.Fatalf("segment %d: IPv6 addresses or extension headers changed", i)
		}
		if sg.tcp != nil {
			if want := s.seq + uint32(i*s.mss); sg.tcp.Seq != want {
				t.Fatalf("segment %d: seq %d, want %d", i, sg.tcp.Seq, want)
			}
			fl := f[b.l4+13]
			want := inFlags
			if !last {
				want &^= tcpFIN | tcpPSH
			}
			if i > 0 {
				want &^= tcpCWR
			}
			if fl != want {
				t.Fatalf("segment %d: TCP flags %#x, want %#x", i, fl, want)
			}
			if !bytes.Equal(f[b.l4+20:b.pay], b.frame[b.l4+20:b.pay]) {
				t.Fatalf("segment %d: TCP options changed", i)
			}
		}
	}
	if !bytes.Equal(payload, b.payload) {
		t.Fatalf("concatenated payload (%d bytes) differs from input (%d bytes)", len(payload), len(b.payload))
	}
}

var ufoSpecs = []spec{
	{name: "ufo4", udp: true, ufo: true, payload: 8000, mss: 1480},
	{name: "ufo4_zero_csum", udp: true, ufo: true, zeroUDP: true, payload: 8000, mss: 1480},
	{name: "ufo4_no_needs_csum", udp: true, ufo: true, noCsum: true, payload: 8000, mss: 1480},
	{name: "ufo4_mss_not_8", udp: true, ufo: true, payload: 5000, mss: 1483},
	{name: "ufo4_vlan2", udp: true, ufo: true, payload: 5000, mss: 1480, vlans: 2},
	{name: "ufo6", udp: true, ufo: true, v6: true, payload: 8000, mss: 1448},
	{name: "ufo6_hbh_rt_dst", udp: true, ufo: true, v6: true, payload: 8000, mss: 1424, ext: []byte{0, 43, 60}},
	{name: "ufo6_tun", udp: true, ufo: true, v6: true, payload: 3000, mss: 1448, link: LinkIP},
}

// TestSegmentUFO reassembles the fragments with gopacket's views of each
// fragment and checks the datagram gopacket rebuilds.
func TestSegmentUFO(t *testing.T) {
	for _, s := range ufoSpecs {
		t.Run(s.name, func(t *testing.T) {
			b := build(t, s)
			p, err := Parse(b.hdr, b.frame, Options{Link: s.link})
			if err != nil {
				t.Fatal(err)
			}
			out, sizes := segBuffers(p.Segments(), 65536)
			n, err := p.Segment(out, sizes)
			if err != nil {
				t.Fatal(err)
			}
			var datagram []byte
			var id uint32
			var netl gopacket.NetworkLayer
			for i := 0; i < n; i++ {
				f := out[i][:sizes[i]]
				if len(f) > p.MaxSegmentLen() || len(f)-p.HeaderLen() > s.mss {
					t.Fatalf("fragment %d: %d bytes, max %d", i, len(f), p.MaxSegmentLen())
				}
				pk := decode(t, f, s.link)
				checkIP(t, pk, f, b.l3)
				var off int
				var more bool
				var data []byte
				if ip, ok := pk.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
					off, more, data = int(ip.FragOffset)*8, ip.Flags&layers.IPv4MoreFragments != 0, ip.Payload
					if ip.Id != 0x1234 {
						t.Fatalf("fragment %d: id %#x", i, ip.Id)
					}
					netl = &layers.IPv4{Version: 4, SrcIP: ip.SrcIP, DstIP: ip.DstIP, Protocol: layers.IPProtocolUDP}
				} else {
					ip := pk.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
					fr, ok := pk.Layer(layers.LayerTypeIPv6Fragment).(*layers.IPv6Fragment)
					if !ok {
						t.Fatalf("fragment %d: no IPv6 fragment header:\n%s", i, pk.Dump())
					}
					if i == 0 {
						id = fr.Identification
					} else if fr.Identification != id {
						t.Fatalf("fragment %d: id %#x, first had %#x", i, fr.Identification, id)
					}
					off, more, data = int(fr.FragmentOffset)*8, fr.MoreFragments, fr.Payload
					netl = &layers.IPv6{Version: 6, SrcIP: ip.SrcIP, DstIP: ip.DstIP, NextHeader: layers.IPProtocolUDP}
				}
				if off != len(datagram) {
					t.Fatalf("fragment %d at offset %d, expected %d", i, off, len(datagram))
				}
				if more != (i < n-1) {
					t.Fatalf("fragment %d of %d: more fragments = %v", i, n, more)
				}
				if more && len(data)%8 != 0 {
					t.Fatalf("fragment %d: %d data bytes, not a multiple of 8", i, len(data))
				}
				datagram = append(datagram, data...)
			}
			// The fragmentable part may start with destination options.
			skip := b.l4 - (p.HeaderLen() - 8*boolInt(s.v6))
			udpb := datagram[skip:]
			pk := gopacket.NewPacket(udpb, layers.LayerTypeUDP, gopacket.Default)
			udp, ok := pk.Layer(layers.LayerTypeUDP).(*layers.UDP)
			if !ok {
				t.Fatalf("reassembled datagram is not UDP")
			}
			if int(udp.Length) != len(udpb) {
				t.Fatalf("UDP length %d, datagram %d", udp.Length, len(udpb))
			}
			if s.zeroUDP {
				if udp.Checksum != 0 {
					t.Fatalf("zero UDP checksum became %#x", udp.Checksum)
				}
			} else {
				c := *udp
				c.SetNetworkLayerForChecksum(netl)
				reserialize(t, "UDP", udpb, &c, gopacket.Payload(udp.Payload))
			}
			if !bytes.Equal(udp.Payload, b.payload) {
				t.Fatalf("reassembled payload differs")
			}
		})
	}
}

func TestNeedsCsumNoGSO(t *testing.T) {
	for _, s := range []spec{
		{name: "tcp4", payload: 1000, mss: 1448},
		{name: "tcp6_ext", v6: true, payload: 999, mss: 1448, ext: []byte{0, 60}},
		{name: "udp4", udp: true, payload: 1001, mss: 1472},
		{name: "udp6_tun", udp: true, v6: true, payload: 3, mss: 1472, link: LinkIP},
	} {
		t.Run(s.name, func(t *testing.T) {
			b := build(t, s)
			b.hdr.GSOType, b.hdr.GSOSize = GSONone, 0
			p, err := Parse(b.hdr, b.frame, Options{Link: s.link})
			if err != nil {
				t.Fatal(err)
			}
			out, sizes := segBuffers(1, 65536)
			if n, err := p.Segment(out, sizes); n != 1 || err != nil {
				t.Fatalf("Segment = %d, %v", n, err)
			}
			f := out[0][:sizes[0]]
			checkIov(t, &p, [][]byte{f})
			checkSeg(t, f, s.link, b.l3, b.l4)
			inPlace := append([]byte(nil), b.frame...)
			if err := CompleteChecksum(b.hdr, inPlace); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(inPlace, f) {
				t.Fatal("CompleteChecksum in place differs from Segment")
			}
		})
	}
}

func TestValidateRejects(t *testing.T) {
	tcp4 := spec{payload: 5000, mss: 1448}
	tcp6 := spec{v6: true, payload: 5000, mss: 1428}
	udp4 := spec{udp: true, payload: 5000, mss: 1472}
	cases := []struct {
		name string
		s    spec
		mod  func(b *built)
		want error
	}{
		{"unknown_gso_type", tcp4, func(b *built) { b.hdr.GSOType = 2 }, ErrGSOType},
		{"gso_type_6", tcp4, func(b *built) { b.hdr.GSOType = 6 }, ErrGSOType},
		{"none_with_ecn", tcp4, func(b *built) { b.hdr.GSOType = GSOECN }, ErrGSOType},
		{"gso_size_0", tcp4, func(b *built) { b.hdr.GSOSize = 0 }, ErrGSOSize},
		{"gso_by_frags", tcp4, func(b *built) { b.hdr.GSOSize = 0xffff }, ErrGSOByFrags},
		{"hdr_len_beyond", tcp4, func(b *built) { b.hdr.HdrLen = uint16(len(b.frame) + 1) }, ErrHdrLen},
		{"csum_start_past_end", tcp4, func(b *built) { b.hdr.CsumStart = uint16(len(b.frame)) }, ErrCsumBounds},
		{"csum_start_max", tcp4, func(b *built) { b.hdr.CsumStart = 0xffff; b.hdr.CsumOffset = 0xffff }, ErrCsumBounds},
		{"csum_offset_past_end", tcp4, func(b *built) { b.hdr.GSOType = GSONone; b.hdr.CsumOffset = uint16(len(b.frame)) }, ErrCsumBounds},
		{"csum_start_tcp_header_cut", tcp4, func(b *built) { b.frame = b.frame[:b.l4+19]; b.hdr.HdrLen = 0 }, ErrCsumBounds},
		{"transport_offset_below_20", tcp4, func(b *built) { b.hdr.CsumStart = 19 }, ErrTransportOffset},
		{"tcp6_transport_offset_below_40", tcp6, func(b *built) { b.hdr.CsumStart = 39 }, ErrTransportOffset},
		{"tcp_csum_offset", tcp4, func(b *built) { b.hdr.CsumOffset = 6 }, ErrTCPCsumOffset},
		{"udp_l4_no_needs_csum", udp4, func(b *built) { b.hdr.Flags = 0 }, ErrUDPL4NoCsum},
		{"udp_l4_csum_offset", udp4, func(b *built) { b.hdr.CsumOffset = 16 }, ErrUDPL4CsumOffset},
		{"udp_l4_ecn", udp4, func(b *built) { b.hdr.GSOType |= GSOECN }, ErrUDPL4ECN},
		{"udp_l4_too_many_segments", udp4, func(b *built) { b.hdr.GSOSize = 39 }, ErrTooManySegments},
		{"tcpv4_on_ipv6", tcp6, func(b *built) { b.hdr.GSOType = GSOTCPv4 }, ErrNetwork},
		{"tcpv6_on_ipv4_csum_start", tcp4, func(b *built) { b.hdr.GSOType = GSOTCPv6 }, ErrTransportOffset},
		{"tcpv6_on_ipv4", tcp4, func(b *built) { b.hdr.GSOType = GSOTCPv6; b.hdr.Flags = 0 }, ErrNetwork},
		{"udp_l4_on_tcp", tcp4, func(b *built) { b.hdr.GSOType = GSOUDPL4; b.hdr.CsumOffset = 6 }, ErrTransport},
		{"tcp_on_udp", udp4, func(b *built) { b.hdr.GSOType = GSOTCPv4; b.hdr.CsumOffset = 16 }, ErrTransport},
		{"ethertype_arp", tcp4, func(b *built) { b.frame[12], b.frame[13] = 0x08, 0x06 }, ErrLink},
		{"three_vlan_tags", spec{payload: 5000, mss: 1448, vlans: 2}, func(b *built) {
			f := append([]byte(nil), b.frame[:12]...)
			f = append(f, 0x81, 0, 0, 7)
			b.frame = append(f, b.frame[12:]...)
			b.hdr.CsumStart += 4
		}, ErrLink},
		{"truncated_ethernet", tcp4, func(b *built) { b.frame = b.frame[:13]; b.hdr = Hdr{GSOType: GSOTCPv4, GSOSize: 100} }, ErrLink},
		{"short_frame_no_gso", tcp4, func(b *built) { b.frame = b.frame[:13]; b.hdr = Hdr{} }, ErrLink},
		{"ethertype_truncated_gso", tcp4, func(b *built) {
			b.frame = b.frame[:14]
			b.frame[12] = 0x81
			b.hdr = Hdr{GSOType: GSOTCPv4, GSOSize: 100}
		}, ErrLink},
		{"hdr_len_below_ethernet", tcp4, func(b *built) { b.hdr.HdrLen = 13 }, ErrHdrLen},
		{"truncated_ipv4", tcp4, func(b *built) { b.frame = b.frame[:b.l3+19]; b.hdr = Hdr{GSOType: GSOTCPv4, GSOSize: 100} }, ErrNetwork},
		{"ipv4_ihl_4", tcp4, func(b *built) { b.frame[b.l3] = 0x44 }, ErrNetwork},
		{"ipv4_version_6", tcp4, func(b *built) { b.frame[b.l3] = 0x65 }, ErrNetwork},
		{"ipv4_fragment", tcp4, func(b *built) { b.frame[b.l3+6] |= 0x20 }, ErrNetwork},
		{"truncated_ipv6", tcp6, func(b *built) { b.frame = b.frame[:b.l3+39]; b.hdr = Hdr{GSOType: GSOTCPv6, GSOSize: 100} }, ErrNetwork},
		{"ipv6_fragment_header", tcp6, func(b *built) { b.frame[b.l3+6] = 44 }, ErrNetwork},
		{"truncated_tcp_no_csum", tcp4, func(b *built) { b.frame = b.frame[:b.l4+19]; b.hdr = Hdr{GSOType: GSOTCPv4, GSOSize: 100} }, ErrTransport},
		{"tcp_doff_4", tcp4, func(b *built) { b.frame[b.l4+12] = 0x40 }, ErrTransport},
		{"tcp_doff_past_end", tcp4, func(b *built) {
			b.frame = b.frame[:b.l4+24]
			b.frame[b.l4+12] = 0xf0
			b.hdr.HdrLen, b.hdr.GSOSize = 0, 1
		}, ErrTransport},
		{"ufo_gso_size_below_8", spec{udp: true, ufo: true, payload: 100, mss: 7}, func(b *built) {}, ErrGSOSize},
		{"short_vnet_header", tcp4, nil, ErrShortHeader},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := build(t, c.s)
			var err error
			if c.mod == nil {
				_, err = Decode(make([]byte, 9))
			} else {
				c.mod(&b)
				_, err = Parse(b.hdr, b.frame, Options{})
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

func TestUDPMaxSegments(t *testing.T) {
	b := build(t, spec{udp: true, payload: 64 * 100, mss: 100})
	if _, err := Parse(b.hdr, b.frame, Options{UDPMaxSegments: 64}); err != nil {
		t.Fatalf("64 segments refused: %v", err)
	}
	b = build(t, spec{udp: true, payload: 64*100 + 1, mss: 100})
	if _, err := Parse(b.hdr, b.frame, Options{UDPMaxSegments: 64}); !errors.Is(err, ErrTooManySegments) {
		t.Fatalf("65 segments: %v", err)
	}
	if _, err := Parse(b.hdr, b.frame, Options{}); err != nil {
		t.Fatalf("65 segments with the default 128: %v", err)
	}
}

func TestShortBatch(t *testing.T) {
	b := build(t, spec{payload: 1448 * 3, mss: 1448})
	p, err := Parse(b.hdr, b.frame, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Exactly full batch works; one buffer fewer or one byte short fails cleanly.
	out, sizes := segBuffers(3, b.pay+1448)
	if n, err := p.Segment(out, sizes); n != 3 || err != nil {
		t.Fatalf("exact batch: %d, %v", n, err)
	}
	if _, err := p.Segment(out[:2], sizes); !errors.Is(err, ErrShortBatch) {
		t.Fatalf("2 buffers for 3 segments: %v", err)
	}
	out[2] = out[2][:b.pay+1447]
	clear(sizes)
	if _, err := p.Segment(out, sizes); !errors.Is(err, ErrShortBatch) {
		t.Fatalf("short buffer: %v", err)
	}
	if sizes[0] != 0 {
		t.Fatal("a failed Segment wrote a segment")
	}
}

func TestHdrEncoding(t *testing.T) {
	h := Hdr{Flags: FlagNeedsCsum, GSOType: GSOTCPv4 | GSOECN, HdrLen: 66, GSOSize: 1448, CsumStart: 34, CsumOffset: 16, NumBuffers: 3}
	for _, f := range []Format{Legacy, V1, {Size: 12, BigEndian: true}, {Size: 20}} {
		buf := make([]byte, f.Size)
		for i := range buf {
			buf[i] = 0xee
		}
		if n, err := f.Encode(buf, h); err != nil || n != f.Size {
			t.Fatalf("%+v: Encode = %d, %v", f, n, err)
		}
		got, err := f.Decode(buf)
		if err != nil {
			t.Fatal(err)
		}
		want := h
		if f.Size < HdrLenV1 {
			want.NumBuffers = 0
		}
		if got != want {
			t.Fatalf("%+v: round trip %v, want %v", f, got, want)
		}
		bo := binary.ByteOrder(binary.LittleEndian)
		if f.BigEndian {
			bo = binary.BigEndian
		}
		if bo.Uint16(buf[4:]) != 1448 || bo.Uint16(buf[6:]) != 34 || buf[1] != 0x81 {
			t.Fatalf("%+v: wrong layout % x", f, buf)
		}
		for _, c := range buf[min(HdrLenV1, len(buf)):] {
			if c != 0 {
				t.Fatalf("%+v: bytes past 12 not zeroed", f)
			}
		}
	}
	if _, err := V1.Decode(make([]byte, 11)); !errors.Is(err, ErrShortHeader) {
		t.Fatalf("short V1 header: %v", err)
	}
	if _, err := (Format{Size: 8}).Decode(make([]byte, 12)); err == nil {
		t.Fatal("8-byte format accepted")
	}
}

// TestNotReallyGSO: below gso_size the kernel only completes the checksum and
// never looks at the headers, so neither does Parse.
func TestNotReallyGSO(t *testing.T) {
	b := build(t, spec{payload: 500, mss: 1448})
	b.frame[b.l3+6] |= 0x20 // a "fragment" would be refused if it were segmented
	p, err := Parse(b.hdr, b.frame, Options{})
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if p.IsGSO() || p.Segments() != 1 {
		t.Fatalf("IsGSO %v, %d segments", p.IsGSO(), p.Segments())
	}
	out, sizes := segBuffers(1, len(b.frame))
	if _, err := p.Segment(out, sizes); err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), b.frame...)
	if err := CompleteChecksum(b.hdr, want); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out[0][:sizes[0]], want) {
		t.Fatal("not-really-GSO packet changed beyond its checksum")
	}
	// One byte more than gso_size (counted from csum_start+20) is GSO.
	b = build(t, spec{payload: 1449, mss: 1448})
	if p, err := Parse(b.hdr, b.frame, Options{}); err != nil || !p.IsGSO() || p.Segments() != 2 {
		t.Fatalf("1449 bytes: IsGSO %v, %d segments, %v", p.IsGSO(), p.Segments(), err)
	}
}
