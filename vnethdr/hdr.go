// Package vnethdr is vmnet's fast path: it validates virtio_net_hdr super-packets
// as strictly as the Linux kernel, splits them into MTU-sized frames for peers
// without offloads (software GSO), and merges MTU-sized frames back (software GRO).
package vnethdr

import (
	"encoding/binary"
	"fmt"
)

// Sizes of the virtio-net header forms.
const (
	// HdrLen is the size of struct virtio_net_hdr.
	HdrLen = 10
	// HdrLenV1 is the size of the virtio 1.0 / mrg_rxbuf form, which adds num_buffers.
	HdrLenV1 = 12
)

// Header flags (virtio_net_hdr.flags).
const (
	FlagNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM: checksum at CsumStart+CsumOffset is partial
	FlagDataValid = 2 // VIRTIO_NET_HDR_F_DATA_VALID: checksum already verified (receive side)
	FlagRSCInfo   = 4 // VIRTIO_NET_HDR_F_RSC_INFO: receive segment coalescing info present
)

// GSO types (virtio_net_hdr.gso_type).
const (
	GSONone  = 0    // VIRTIO_NET_HDR_GSO_NONE
	GSOTCPv4 = 1    // VIRTIO_NET_HDR_GSO_TCPV4
	GSOUDP   = 3    // VIRTIO_NET_HDR_GSO_UDP (UFO: IP fragmentation)
	GSOTCPv6 = 4    // VIRTIO_NET_HDR_GSO_TCPV6
	GSOUDPL4 = 5    // VIRTIO_NET_HDR_GSO_UDP_L4 (USO: one datagram per segment)
	GSOECN   = 0x80 // VIRTIO_NET_HDR_GSO_ECN: the TCP stream uses ECN (CWR on the first segment only)
)

// Hdr is a decoded virtio_net_hdr. NumBuffers is only carried by the 12-byte form.
type Hdr struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16 // a hint only: the real header length is derived from the packet
	GSOSize    uint16
	CsumStart  uint16
	CsumOffset uint16
	NumBuffers uint16
}

// Format says how a device lays out its vnet header: its size (TUNSETVNETHDRSZ,
// at least 10) and its byte order (big endian only after TUNSETVNETBE).
type Format struct {
	Size      int
	BigEndian bool
}

// Common formats.
var (
	Legacy = Format{Size: HdrLen}   // tap default: 10 bytes, little endian
	V1     = Format{Size: HdrLenV1} // virtio 1.0 / mrg_rxbuf: 12 bytes, little endian
)

func (f Format) order() binary.ByteOrder {
	if f.BigEndian {
		return binary.BigEndian
	}
	return binary.LittleEndian
}

// Decode reads a header of f.Size bytes from the start of b. Bytes past the
// twelfth (hash report and the like) are ignored.
func (f Format) Decode(b []byte) (Hdr, error) {
	if f.Size < HdrLen {
		return Hdr{}, fmt.Errorf("vnethdr: header size %d is below the minimum of %d", f.Size, HdrLen)
	}
	if len(b) < f.Size {
		return Hdr{}, &Error{Rule: RuleShortHeader, Detail: fmt.Sprintf("%d bytes, need %d", len(b), f.Size)}
	}
	o := f.order()
	h := Hdr{
		Flags:      b[0],
		GSOType:    b[1],
		HdrLen:     o.Uint16(b[2:]),
		GSOSize:    o.Uint16(b[4:]),
		CsumStart:  o.Uint16(b[6:]),
		CsumOffset: o.Uint16(b[8:]),
	}
	if f.Size >= HdrLenV1 {
		h.NumBuffers = o.Uint16(b[10:])
	}
	return h, nil
}

// Encode writes h as f.Size bytes at the start of b, zeroing bytes past the
// twelfth. It returns the number of bytes written.
func (f Format) Encode(b []byte, h Hdr) (int, error) {
	if f.Size < HdrLen {
		return 0, fmt.Errorf("vnethdr: header size %d is below the minimum of %d", f.Size, HdrLen)
	}
	if len(b) < f.Size {
		return 0, fmt.Errorf("vnethdr: buffer of %d bytes cannot hold a %d-byte header", len(b), f.Size)
	}
	o := f.order()
	b[0] = h.Flags
	b[1] = h.GSOType
	o.PutUint16(b[2:], h.HdrLen)
	o.PutUint16(b[4:], h.GSOSize)
	o.PutUint16(b[6:], h.CsumStart)
	o.PutUint16(b[8:], h.CsumOffset)
	if f.Size >= HdrLenV1 {
		o.PutUint16(b[10:], h.NumBuffers)
		clear(b[HdrLenV1:f.Size])
	}
	return f.Size, nil
}

// Decode reads a 10-byte little-endian header.
func Decode(b []byte) (Hdr, error) { return Legacy.Decode(b) }

// Encode writes h as a 10-byte little-endian header.
func (h Hdr) Encode(b []byte) (int, error) { return Legacy.Encode(b, h) }

func (h Hdr) String() string {
	return fmt.Sprintf("flags=%#x gso_type=%#x hdr_len=%d gso_size=%d csum_start=%d csum_offset=%d",
		h.Flags, h.GSOType, h.HdrLen, h.GSOSize, h.CsumStart, h.CsumOffset)
}
