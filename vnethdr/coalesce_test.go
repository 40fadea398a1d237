package vnethdr

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"reflect"
	"testing"
)

// stream returns the MTU-sized packets of a super-packet of n full segments
// plus extra payload bytes, split by Segment (whose output the segment tests
// judge with gopacket).
func stream(t testing.TB, s spec, n, extra int) [][]byte {
	t.Helper()
	s.payload = n*s.mss + extra
	b := build(t, s)
	p, err := Parse(b.hdr, b.frame, Options{Link: s.link})
	if err != nil {
		t.Fatal(err)
	}
	out, sizes := segBuffers(p.Segments(), p.MaxSegmentLen())
	if _, err := p.Segment(out, sizes); err != nil {
		t.Fatal(err)
	}
	for i := range out {
		out[i] = out[i][:sizes[i]]
	}
	return out
}

// refix recomputes the IPv4 header and L4 checksums of a hand-edited packet
// with the naive reference sum.
func refix(t testing.TB, pkt []byte, link Link) {
	t.Helper()
	h, err := parseHeaders(pkt, link)
	if err != nil {
		t.Fatal(err)
	}
	if err := parseL4(pkt, &h); err != nil {
		t.Fatal(err)
	}
	var ph uint32
	if h.ipv6 {
		ph = refSum(pkt[h.l3+8:h.l3+40], 0)
	} else {
		binary.BigEndian.PutUint16(pkt[h.l3+10:], 0)
		binary.BigEndian.PutUint16(pkt[h.l3+10:], ^refFold(refSum(pkt[h.l3:h.l4], 0)))
		ph = refSum(pkt[h.l3+12:h.l3+20], 0)
	}
	co := h.l4 + 16
	if h.proto == protoUDP {
		co = h.l4 + 6
	}
	binary.BigEndian.PutUint16(pkt[co:], 0)
	c := ^refFold(refSum(pkt[h.l4:], ph+uint32(h.proto)+uint32(len(pkt)-h.l4)))
	if c == 0 && h.proto == protoUDP {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(pkt[co:], c)
}

func joinIov(iov [][]byte) []byte {
	var b []byte
	for _, v := range iov {
		b = append(b, v...)
	}
	return b
}

func clonePkts(pkts [][]byte) [][]byte {
	out := make([][]byte, len(pkts))
	for i, p := range pkts {
		out[i] = append([]byte(nil), p...)
	}
	return out
}

// TestCoalesceRoundTrip merges a stream and checks the super-packet with
// gopacket, then splits it again and expects the original packets back.
func TestCoalesceRoundTrip(t *testing.T) {
	cases := []struct {
		name     string
		s        spec
		n, extra int
		udp      bool
	}{
		{"tcp4_45x1448", spec{mss: 1448, tsOpt: true}, 45, 0, false},
		{"tcp4_last_short", spec{mss: 1448}, 10, 77, false},
		{"tcp4_vlan2", spec{mss: 1448, vlans: 2}, 5, 0, false},
		{"tcp4_tun", spec{mss: 1448, link: LinkIP}, 5, 1, false},
		{"tcp4_ecn", spec{mss: 1448, ecn: true, tcpFlags: tcpACK | tcpCWR | tcpECE}, 5, 0, false},
		{"tcp4_psh_last", spec{mss: 1448, tcpFlags: tcpACK | tcpPSH}, 5, 0, false},
		{"tcp6_45x1428", spec{v6: true, mss: 1428, tsOpt: true}, 45, 0, false},
		{"tcp6_tun", spec{v6: true, mss: 1428, link: LinkIP}, 4, 100, false},
		{"udp4", spec{udp: true, mss: 1472}, 20, 5, true},
		{"udp6_vlan1", spec{udp: true, v6: true, mss: 1452, vlans: 1}, 20, 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := stream(t, tc.s, tc.n, tc.extra)
			orig := clonePkts(in)
			c := NewCoalescer(CoalesceOptions{Link: tc.s.link, UDP: tc.udp})
			if got := c.Coalesce(in); got != 1 {
				t.Fatalf("Coalesce = %d outputs, want 1", got)
			}
			if !reflect.DeepEqual(in, orig) {
				t.Fatal("Coalesce modified its input")
			}
			hdr, iov := c.Out(0)
			frame := joinIov(iov)
			buf := make([]byte, 70000)
			if n, err := c.CopyOut(0, buf); err != nil || !bytes.Equal(buf[:n], frame) {
				t.Fatalf("CopyOut = %d, %v", n, err)
			}
			b := build(t, spec{v6: tc.s.v6, udp: tc.s.udp, vlans: tc.s.vlans, link: tc.s.link, tsOpt: tc.s.tsOpt})
			want := Hdr{Flags: FlagNeedsCsum, HdrLen: uint16(b.pay), GSOSize: uint16(tc.s.mss), CsumStart: uint16(b.l4)}
			switch {
			case tc.udp:
				want.GSOType, want.CsumOffset = GSOUDPL4, 6
			case tc.s.v6:
				want.GSOType, want.CsumOffset = GSOTCPv6, 16
			default:
				want.GSOType, want.CsumOffset = GSOTCPv4, 16
			}
			if tc.s.ecn {
				want.GSOType |= GSOECN
			}
			if hdr != want {
				t.Fatalf("header %v, want %v", hdr, want)
			}
			// The super-packet is what a guest would send: valid for the kernel's rules...
			p, err := Parse(hdr, frame, Options{Link: tc.s.link})
			if err != nil {
				t.Fatalf("coalesced packet refused: %v", err)
			}
			// ...and, checksum completed, a well-formed packet to gopacket.
			full := append([]byte(nil), frame...)
			if err := CompleteChecksum(hdr, full); err != nil {
				t.Fatal(err)
			}
			sg := checkSeg(t, full, tc.s.link, b.l3, b.l4)
			if sg.tcp != nil && sg.tcp.PSH != (orig[len(orig)-1][b.l4+13]&tcpPSH != 0) {
				t.Fatalf("PSH = %v", sg.tcp.PSH)
			}
			// Splitting it again gives back the input packets, byte for byte.
			out, sizes := segBuffers(p.Segments(), p.MaxSegmentLen())
			n, err := p.Segment(out, sizes)
			if err != nil || n != len(orig) {
				t.Fatalf("re-Segment = %d, %v; want %d", n, err, len(orig))
			}
			for i := range orig {
				if !bytes.Equal(out[i][:sizes[i]], orig[i]) {
					t.Fatalf("segment %d differs after the round trip", i)
				}
			}
		})
	}
}

type coalesceCase struct {
	name   string
	s      spec
	n      int
	udp    bool
	mutate func(t *testing.T, pkts [][]byte) [][]byte
	want   []int // packets per output, in output order
}

var tcp4 = spec{mss: 1000}

func setTCPFlags(i int, f uint8) func(t *testing.T, p [][]byte) [][]byte {
	return func(t *testing.T, p [][]byte) [][]byte {
		p[i][14+20+13] = f
		refix(t, p[i], LinkEthernet)
		return p
	}
}

func coalesceCases() []coalesceCase {
	return []coalesceCase{
		{"all_merge", tcp4, 6, false, nil, []int{6}},
		{"psh_in_middle", tcp4, 6, false, setTCPFlags(2, tcpACK|tcpPSH), []int{3, 3}},
		{"fin_passes", tcp4, 4, false, setTCPFlags(3, tcpACK|tcpFIN), []int{3, 1}},
		{"syn_passes", tcp4, 4, false, setTCPFlags(1, tcpSYN|tcpACK), []int{1, 1, 2}},
		{"rst_passes", tcp4, 4, false, setTCPFlags(0, tcpRST|tcpACK), []int{1, 3}},
		{"urg_passes", tcp4, 4, false, setTCPFlags(2, tcpURG|tcpACK), []int{2, 1, 1}},
		{"cwr_starts_new", tcp4, 4, false, setTCPFlags(2, tcpCWR|tcpACK), []int{2, 2}},
		{"ece_differs", tcp4, 4, false, setTCPFlags(2, tcpECE|tcpACK), []int{2, 1, 1}},
		{"bad_l4_checksum", tcp4, 5, false, func(t *testing.T, p [][]byte) [][]byte {
			p[2][len(p[2])-1] ^= 0xff
			return p
		}, []int{2, 1, 2}},
		{"bad_ip_checksum", tcp4, 5, false, func(t *testing.T, p [][]byte) [][]byte {
			p[2][14+10] ^= 0xff
			return p
		}, []int{2, 1, 2}},
		{"seq_gap", tcp4, 4, false, func(t *testing.T, p [][]byte) [][]byte { return append(p[:2], p[3:]...) }, []int{2, 1}},
		{"reordered", tcp4, 4, false, func(t *testing.T, p [][]byte) [][]byte {
			p[1], p[2] = p[2], p[1]
			return p
		}, []int{1, 1, 1, 1}},
		{"ack_differs", tcp4, 4, false, func(t *testing.T, p [][]byte) [][]byte {
			p[2][14+20+11]++
			refix(t, p[2], LinkEthernet)
			return p
		}, []int{2, 1, 1}},
		{"window_differs", tcp4, 4, false, func(t *testing.T, p [][]byte) [][]byte {
			p[2][14+20+15]++
			refix(t, p[2], LinkEthernet)
			return p
		}, []int{2, 1, 1}},
		{"timestamp_differs", spec{mss: 1000, tsOpt: true}, 4, false, func(t *testing.T, p [][]byte) [][]byte {
			p[2][14+20+20+7]++
			refix(t, p[2], LinkEthernet)
			return p
		}, []int{2, 1, 1}},
		{"ttl_differs", tcp4, 4, false, func(t *testing.T, p [][]byte) [][]byte {
			p[1][14+8]--
			refix(t, p[1], LinkEthernet)
			return p
		}, []int{1, 1, 2}},
		{"tos_differs", tcp4, 4, false, func(t *testing.T, p [][]byte) [][]byte {
			p[3][14+1] = 0x10
			refix(t, p[3], LinkEthernet)
			return p
		}, []int{3, 1}},
		{"df_differs", tcp4, 4, false, func(t *testing.T, p [][]byte) [][]byte {
			p[3][14+6] = 0
			refix(t, p[3], LinkEthernet)
			return p
		}, []int{3, 1}},
		{"no_df_id_not_incrementing", tcp4, 4, false, func(t *testing.T, p [][]byte) [][]byte {
			for i := range p {
				p[i][14+6] = 0
				if i == 2 {
					p[i][14+5] += 5
				}
				refix(t, p[i], LinkEthernet)
			}
			return p
		}, []int{2, 1, 1}},
		{"df_id_fixed_ok", tcp4, 4, false, func(t *testing.T, p [][]byte) [][]byte {
			for i := range p {
				binary.BigEndian.PutUint16(p[i][14+4:], 7)
				refix(t, p[i], LinkEthernet)
			}
			return p
		}, []int{4}},
		{"df_id_random", tcp4, 4, false, func(t *testing.T, p [][]byte) [][]byte {
			for i, id := range []uint16{7, 100, 3, 9} {
				binary.BigEndian.PutUint16(p[i][14+4:], id)
				refix(t, p[i], LinkEthernet)
			}
			return p
		}, []int{1, 1, 1, 1}},
		{"df_id_fixed_then_incrementing", tcp4, 4, false, func(t *testing.T, p [][]byte) [][]byte {
			for i, id := range []uint16{7, 7, 8, 9} {
				binary.BigEndian.PutUint16(p[i][14+4:], id)
				refix(t, p[i], LinkEthernet)
			}
			return p
		}, []int{2, 2}},
		{"ip_options", spec{mss: 996, ipv4Opts: true}, 3, false, nil, []int{1, 1, 1}},
		{"ipv6_ext_header", spec{v6: true, mss: 1000, ext: []byte{60}}, 3, false, nil, []int{1, 1, 1}},
		{"bigger_after_smaller", tcp4, 4, false, func(t *testing.T, p [][]byte) [][]byte {
			// Segment 1 is cut to 500 bytes; segment 2 then follows on from there.
			short := append([]byte(nil), p[1][:len(p[1])-500]...)
			binary.BigEndian.PutUint16(short[14+2:], uint16(len(short)-14))
			refix(t, short, LinkEthernet)
			next := append([]byte(nil), p[2]...)
			binary.BigEndian.PutUint32(next[14+20+4:], binary.BigEndian.Uint32(short[14+20+4:])+500)
			refix(t, next, LinkEthernet)
			return [][]byte{p[0], short, next}
		}, []int{2, 1}},
		{"larger_than_first", tcp4, 3, false, func(t *testing.T, p [][]byte) [][]byte {
			short := append([]byte(nil), p[0][:len(p[0])-1]...)
			binary.BigEndian.PutUint16(short[14+2:], uint16(len(short)-14))
			refix(t, short, LinkEthernet)
			next := append([]byte(nil), p[1]...)
			binary.BigEndian.PutUint32(next[14+20+4:], binary.BigEndian.Uint32(next[14+20+4:])-1)
			refix(t, next, LinkEthernet)
			return [][]byte{short, next}
		}, []int{1, 1}},
		{"pure_ack_passes", tcp4, 3, false, func(t *testing.T, p [][]byte) [][]byte {
			ack := append([]byte(nil), p[2][:14+20+20]...)
			binary.BigEndian.PutUint16(ack[14+2:], 40)
			refix(t, ack, LinkEthernet)
			return [][]byte{p[0], p[1], ack, p[2]}
		}, []int{2, 1, 1}},
		{"64k_cap", spec{mss: 1448}, 50, false, nil, []int{45, 5}},
		{"vlan_differs", spec{mss: 1000, vlans: 1}, 4, false, func(t *testing.T, p [][]byte) [][]byte {
			p[2][15]++
			return p
		}, []int{2, 1, 1}},
		{"mac_differs", tcp4, 3, false, func(t *testing.T, p [][]byte) [][]byte {
			p[1][0]++
			return p
		}, []int{1, 1, 1}},
		{"two_flows_interleaved", tcp4, 6, false, func(t *testing.T, p [][]byte) [][]byte {
			q := clonePkts(p)
			for _, x := range q {
				x[14+20+1]++ // source port
				refix(t, x, LinkEthernet)
			}
			var out [][]byte
			for i := range p {
				out = append(out, p[i], q[i])
			}
			return out
		}, []int{6, 6}},
		{"not_ip", tcp4, 3, false, func(t *testing.T, p [][]byte) [][]byte {
			arp := make([]byte, 60)
			arp[12], arp[13] = 0x08, 0x06
			return [][]byte{p[0], arp, p[1], p[2]}
		}, []int{3, 1}},
		{"truncated", tcp4, 3, false, func(t *testing.T, p [][]byte) [][]byte {
			return [][]byte{p[0], p[1][:30], p[1], p[2]}
		}, []int{3, 1}},
		{"udp_off", spec{udp: true, mss: 1000}, 3, false, nil, []int{1, 1, 1}},
		{"udp_merge", spec{udp: true, mss: 1000}, 3, true, nil, []int{3}},
		{"udp_zero_checksum", spec{udp: true, mss: 1000}, 3, true, func(t *testing.T, p [][]byte) [][]byte {
			binary.BigEndian.PutUint16(p[1][14+20+6:], 0)
			return p
		}, []int{1, 1, 1}},
		{"udp_65_segments", spec{udp: true, mss: 200}, 65, true, nil, []int{64, 1}},
		{"udp_smaller_ends", spec{udp: true, mss: 1000}, 4, true, func(t *testing.T, p [][]byte) [][]byte {
			short := append([]byte(nil), p[1][:len(p[1])-10]...)
			binary.BigEndian.PutUint16(short[14+2:], uint16(len(short)-14))
			binary.BigEndian.PutUint16(short[14+20+4:], uint16(len(short)-34))
			refix(t, short, LinkEthernet)
			return [][]byte{p[0], short, p[2], p[3]}
		}, []int{2, 2}},
	}
}

func TestCoalesceRules(t *testing.T) {
	for _, tc := range coalesceCases() {
		t.Run(tc.name, func(t *testing.T) {
			pkts := stream(t, tc.s, tc.n, 0)
			if tc.mutate != nil {
				pkts = tc.mutate(t, pkts)
			}
			orig := clonePkts(pkts)
			c := NewCoalescer(CoalesceOptions{Link: tc.s.link, UDP: tc.udp})
			n := c.Coalesce(pkts)
			var got []int
			for i := 0; i < n; i++ {
				hdr, iov := c.Out(i)
				if hdr.GSOType == GSONone {
					got = append(got, 1)
					if len(iov) != 1 {
						t.Fatalf("output %d: %d iovecs for a passed packet", i, len(iov))
					}
				} else {
					got = append(got, len(iov)-1)
					frame := joinIov(iov)
					if _, err := Parse(hdr, frame, Options{}); err != nil {
						t.Fatalf("output %d refused: %v", i, err)
					}
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("groups %v, want %v", got, tc.want)
			}
			if !reflect.DeepEqual(pkts, orig) {
				t.Fatal("input modified")
			}
			// Reusing the Coalescer gives the same result.
			if n2 := c.Coalesce(pkts); n2 != n {
				t.Fatalf("second run: %d outputs, first %d", n2, n)
			}
		})
	}
}

type corpusSeed struct {
	name string
	data []byte
	mode uint8
}

// coalesceSeeds packs batches for FuzzCoalesce: 2-byte length + packet each.
func coalesceSeeds(t testing.TB) []corpusSeed {
	var out []corpusSeed
	for _, tc := range coalesceCases() {
		if tc.n > 8 || tc.mutate == nil && tc.name != "all_merge" && tc.name != "udp_merge" {
			continue
		}
		pkts := stream(t, tc.s, min(tc.n, 8), 0)
		var b []byte
		for _, p := range pkts {
			b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
			b = append(b, p...)
		}
		mode := uint8(tc.s.link)
		if tc.udp {
			mode |= 2
		}
		out = append(out, corpusSeed{fmt.Sprintf("coalesce_%s", tc.name), b, mode})
	}
	// Whole small stream that merges.
	pkts := stream(t, spec{mss: 100, tsOpt: true}, 5, 30)
	var b []byte
	for _, p := range pkts {
		b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
		b = append(b, p...)
	}
	out = append(out, corpusSeed{"coalesce_small_stream", b, 0})
	pkts = stream(t, spec{v6: true, udp: true, mss: 100, link: LinkIP}, 5, 30)
	b = nil
	for _, p := range pkts {
		b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
		b = append(b, p...)
	}
	out = append(out, corpusSeed{"coalesce_small_udp6_tun", b, 3})
	return out
}
