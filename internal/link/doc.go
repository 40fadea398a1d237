// Package link is vmnet's userspace link data plane: it joins two endpoints
// (taps, AF_PACKET sockets, UDP tunnels) and moves every frame between them,
// keeping GSO super-frames whole where the far side takes them.
//
// A Link carries everything a wire would (LLDP, LACP, STP: nothing is
// filtered), so labs get point-to-point links that a Linux bridge would not
// give them, links that span hosts, and a capture on any link.
//
// Usage (see Example for a whole program):
//
//	ep, _ := vmconfig.ParseEndpoint("tap:lab0,queues=2")
//	a, err := link.Open(ctx, ep, link.OpenOptions{}) // error names the endpoint; nothing left behind
//	... b likewise, closing a if it fails ...
//	l, err := link.New(a, b, link.Options{PCAP: "lab0.pcap"}) // owns a and b from here on
//	defer l.Close()                                          // closes both, removes taps Open created
//	err = l.Run(ctx)                                         // until ctx is done or an endpoint is gone
//	s := l.Stats()                                           // any time, from any goroutine; JSON-friendly
//
// # Frames inside the link
//
// Every endpoint reads into buffers that keep Headroom bytes free in front
// of the Ethernet frame, with the endpoint's own virtio-net header right
// before the frame. Forwarding re-encodes the header in that headroom for
// the destination, so a frame that passes unchanged is never copied.
//
// A tap's header size is whatever the device has: the kernel accepts any
// size from 10 bytes up, and QEMU sets 10, 12 or 20 (hash reporting) as
// its guest negotiates, at any time, also while a link runs. A link
// handles sizes up to MaxVnetHdr and refuses a tap with a larger one when
// the endpoint opens. It asks the kernel for the size again after a read,
// at most once a millisecond (the question takes the kernel's RTNL lock):
// a batch read while the size changed is dropped (TCP resends it), and
// while the size is out of range every frame is dropped; both count as
// vnet_hdr_size drops. Frames read or written between a change and the
// next question (at most a millisecond's worth) are garbled: shifted by
// the difference, which the far side mostly drops as invalid. The kernel
// has no way to read or write with an expected size, so no check closes
// that window; what it guarantees is that nothing panics and a link
// recovers by itself. A GSO frame is passed on when the destination accepts GSO (a tap
// with vnet_hdr, an AF_PACKET socket, a UDP tunnel); otherwise vnethdr
// splits it into MTU-sized frames with complete checksums. The other way
// round, frames that arrive one by one (from a tap without vnet_hdr, an
// AF_PACKET socket on an interface without offloads, tunnel datagrams)
// towards a tap or AF_PACKET socket that takes GSO (not a tunnel, whose
// UDP_SEGMENT runs keep datagrams within the path MTU; the far end
// merges) are merged by software GRO
// (vnethdr.Coalescer, the kernel's tcp_gro_receive rules; UDP datagrams
// into USO super-frames only for a tap whose kernel takes USO). A read
// batch is merged and written before the next read: no frame waits for
// more of its flow, so GRO adds no latency. A frame without
// GSO that is longer than the destination's MTU (plus Ethernet header and
// one VLAN tag) is dropped and counted, as a switch would.
//
// # UDP tunnel wire format
//
// Without a key, the tunnel is unauthenticated cleartext: its socket is
// connected to the remote address, so the kernel drops datagrams from other
// sources, but anyone who can forge that source injects frames, and anyone
// on the path reads them. With key=FILE, each datagram below is sealed
// with XChaCha20-Poly1305 under a pre-shared key and checked against a
// replay window; crypt.go documents that format and what it protects.
//
// One UDP datagram carries one Ethernet frame, preceded by a 10-byte
// virtio_net_hdr in little-endian byte order (the legacy layout of
// include/uapi/linux/virtio_net.h: flags, gso_type, hdr_len, gso_size,
// csum_start, csum_offset). A datagram without offloads has an all-zero
// header and a frame with complete checksums, so another implementation
// can interoperate by prepending ten zero bytes. With offloads, the frame
// may be a TCP or UDP (USO) super-frame whose gso_size says how to split
// it, with a partial checksum (NEEDS_CSUM) as the kernel would hand it to a
// virtio-net device; the receiver validates the header with the kernel's
// rules (vnethdr.Parse) and segments it only if its own destination cannot
// take GSO. A datagram holds at most 65507 bytes (IPv4), so a super-frame
// longer than MaxUDPFrame is cut into shorter super-frames that are each a
// whole multiple of gso_size (TCP sequence numbers, flags and lengths fixed
// up; the IPv4 ID of later pieces restarts one above the previous piece's,
// which matters to no receiver because TCP super-frames are sent with DF).
// Datagrams larger than the path MTU are fragmented by IP; on a lossy path
// between hosts, a lost fragment loses the whole super-frame.
//
// Sends and receives are batched (sendmmsg, recvmmsg). Where the kernel
// has them, a run of equal-sized datagrams (MTU-sized frames from a device
// without offloads) goes out as one UDP_SEGMENT message and comes in as
// one UDP_GRO buffer; both ends accept either form, so peers with and
// without them interoperate. Runs are built only while one datagram fits
// the path MTU, and UDP_SEGMENT is dropped for good if the route refuses it.
package link
