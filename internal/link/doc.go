// Package link is vmnet's link data plane: it joins two endpoints (taps,
// AF_PACKET sockets, UDP tunnels) and moves every frame between them,
// keeping GSO super-frames whole where the far side takes them. Between
// two local interfaces, while nothing needs userspace, the kernel moves
// them (tc redirects, kernel.go); otherwise the link's own pumps do.
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
// # Writing frames one by one
//
// A destination without offloads (a tap without vnet_hdr) takes nothing
// larger than its MTU, so the link writes a 64 KB super-frame as some 45
// frames, and each write carries its frame through the bridge and the
// receiving TCP stack. A tap the link creates without vnet_hdr therefore
// gets IFF_NAPI and a 200 µs gro_flush_timeout (tap.Config.NAPI,
// GROFlushTimeout): the kernel's GRO merges the written frames again, and
// the bridge and the receiver see one skb per up to 64 KB. The kernel
// judges this in TestNAPITransfer (5,810 frames written arrive as about
// 170 packets, data intact, no error counter moved). A tap the link did
// not create keeps its flags. Measured with tests/bench-link.sh against
// the previous plain tap in the same runs (see napiGROFlush and README):
// IFF_NAPI alone does nothing (the kernel flushes GRO after every write),
// IFF_NAPI_FRAGS is slower, a 200 µs hold gains 1.2-1.8x. Two other ways
// measured no gain end to end and were not kept: writing merged frames
// from their pieces (writev; see groFlush) and handing batches of writes
// to an io_uring (history: "Revert io_uring writes"). More writer threads
// are the multi-queue design already: one pump per source queue.
package link
