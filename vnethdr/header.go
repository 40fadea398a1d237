package vnethdr

import "encoding/binary"

// Typed views over packet bytes, in the style of gVisor's tcpip/header: a
// view is the byte slice starting at the header, and its methods name the
// fields the segmenter and coalescer read and rewrite. They check nothing
// (the parser did): a view shorter than the field it is asked for panics
// like any slice index. All of them inline.

// IPv4 is an IPv4 header and what follows it.
type IPv4 []byte

// IPv4 field offsets.
const (
	ipv4TOS      = 1
	ipv4TotalLen = 2
	ipv4ID       = 4
	ipv4Flags    = 6 // flags and fragment offset
	ipv4TTL      = 8
	ipv4Protocol = 9
	ipv4Checksum = 10
	ipv4SrcAddr  = 12
	ipv4AddrsEnd = 20 // end of the destination address

	ipv4MinSize = 20
	ipv4FlagDF  = 0x40 // in the byte at ipv4Flags
)

// HeaderLength is the IHL in bytes.
func (b IPv4) HeaderLength() int { return int(b[0]&0xf) * 4 }

// TOS is the type of service (DSCP and ECN) byte.
func (b IPv4) TOS() uint8 { return b[ipv4TOS] }

// TotalLength is the length of header and payload.
func (b IPv4) TotalLength() uint16 { return binary.BigEndian.Uint16(b[ipv4TotalLen:]) }

// SetTotalLength sets the total length field.
func (b IPv4) SetTotalLength(v uint16) { binary.BigEndian.PutUint16(b[ipv4TotalLen:], v) }

// ID is the identification field.
func (b IPv4) ID() uint16 { return binary.BigEndian.Uint16(b[ipv4ID:]) }

// SetID sets the identification field.
func (b IPv4) SetID(v uint16) { binary.BigEndian.PutUint16(b[ipv4ID:], v) }

// DontFragment reports the DF flag.
func (b IPv4) DontFragment() bool { return b[ipv4Flags]&ipv4FlagDF != 0 }

// SetFlagsFragmentOffset sets the flags and fragment offset word.
func (b IPv4) SetFlagsFragmentOffset(v uint16) { binary.BigEndian.PutUint16(b[ipv4Flags:], v) }

// TTL is the time to live.
func (b IPv4) TTL() uint8 { return b[ipv4TTL] }

// Protocol is the transport protocol number.
func (b IPv4) Protocol() uint8 { return b[ipv4Protocol] }

// ChecksumField is the two bytes of the header checksum, for putCsum.
func (b IPv4) ChecksumField() []byte { return b[ipv4Checksum : ipv4Checksum+2] }

// ClearChecksum zeroes the header checksum before it is summed again.
func (b IPv4) ClearChecksum() { b[ipv4Checksum], b[ipv4Checksum+1] = 0, 0 }

// Addresses are the source and destination addresses, the part of the
// pseudo header the checksum sums as bytes.
func (b IPv4) Addresses() []byte { return b[ipv4SrcAddr:ipv4AddrsEnd] }

// IPv6 is an IPv6 fixed header and what follows it.
type IPv6 []byte

// IPv6 field offsets.
const (
	ipv6PayloadLen = 4
	ipv6NextHeader = 6
	ipv6HopLimit   = 7
	ipv6SrcAddr    = 8
	ipv6FixedSize  = 40 // also the end of the destination address
)

// VersionClassFlow is the first word: version, traffic class, flow label.
func (b IPv6) VersionClassFlow() []byte { return b[:4] }

// PayloadLength is the length after the fixed header (extension headers
// included).
func (b IPv6) PayloadLength() uint16 { return binary.BigEndian.Uint16(b[ipv6PayloadLen:]) }

// SetPayloadLength sets the payload length field.
func (b IPv6) SetPayloadLength(v uint16) { binary.BigEndian.PutUint16(b[ipv6PayloadLen:], v) }

// NextHeader is the protocol of the header after the fixed one.
func (b IPv6) NextHeader() uint8 { return b[ipv6NextHeader] }

// HopLimit is the hop limit.
func (b IPv6) HopLimit() uint8 { return b[ipv6HopLimit] }

// Addresses are the source and destination addresses.
func (b IPv6) Addresses() []byte { return b[ipv6SrcAddr:ipv6FixedSize] }

// TCP is a TCP header and what follows it.
type TCP []byte

// TCP field offsets.
const (
	tcpPorts    = 0
	tcpSeqNum   = 4
	tcpAckNum   = 8
	tcpDataOff  = 12
	tcpFlags    = 13
	tcpWindow   = 14
	tcpChecksum = 16
	tcpUrgent   = 18
	tcpMinSize  = 20
)

// Ports are the source and destination ports, as bytes.
func (b TCP) Ports() []byte { return b[tcpPorts : tcpPorts+4] }

// SequenceNumber is the sequence number.
func (b TCP) SequenceNumber() uint32 { return binary.BigEndian.Uint32(b[tcpSeqNum:]) }

// SetSequenceNumber sets the sequence number.
func (b TCP) SetSequenceNumber(v uint32) { binary.BigEndian.PutUint32(b[tcpSeqNum:], v) }

// DataOffset is the header length in bytes.
func (b TCP) DataOffset() int { return int(b[tcpDataOff]>>4) * 4 }

// Flags are the flag bits (tcpFIN ... tcpCWR).
func (b TCP) Flags() uint8 { return b[tcpFlags] }

// SetFlags sets the flag bits.
func (b TCP) SetFlags(f uint8) { b[tcpFlags] = f }

// AckDataOffset is acknowledgment number and data offset byte, which a
// merged segment must share with the first.
func (b TCP) AckDataOffset() []byte { return b[tcpAckNum:tcpFlags] }

// Window is the window field, as bytes.
func (b TCP) Window() []byte { return b[tcpWindow:tcpChecksum] }

// ChecksumField is the two bytes of the checksum.
func (b TCP) ChecksumField() []byte { return b[tcpChecksum : tcpChecksum+2] }

// UrgentAndOptions is the urgent pointer and the options (up to the end
// of the view, which the caller cuts at the data offset).
func (b TCP) UrgentAndOptions() []byte { return b[tcpUrgent:] }

// UDP is a UDP header and what follows it.
type UDP []byte

// UDP field offsets.
const (
	udpLength   = 4
	udpChecksum = 6
	udpSize     = 8
)

// Ports are the source and destination ports, as bytes.
func (b UDP) Ports() []byte { return b[:4] }

// Length is the length field (header and payload).
func (b UDP) Length() uint16 { return binary.BigEndian.Uint16(b[udpLength:]) }

// SetLength sets the length field.
func (b UDP) SetLength(v uint16) { binary.BigEndian.PutUint16(b[udpLength:], v) }

// ChecksumField is the two bytes of the checksum.
func (b UDP) ChecksumField() []byte { return b[udpChecksum : udpChecksum+2] }

// NoChecksum reports a zero checksum field: IPv4 UDP without checksum
// (VXLAN does this), which must stay zero.
func (b UDP) NoChecksum() bool { return b[udpChecksum]|b[udpChecksum+1] == 0 }
