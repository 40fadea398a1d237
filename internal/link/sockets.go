package link

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/vmconfig"
	"github.com/vmnet/vmnet/vnethdr"
)

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// openPacket binds PacketSockets AF_PACKET sockets with PACKET_VNET_HDR to
// an existing interface and joins them in one fanout group (by flow hash,
// so a flow stays in order). The interface is put in promiscuous mode
// while the sockets are open (the kernel undoes it on close).
func openPacket(ep vmconfig.Endpoint, opts OpenOptions) (*Endpoint, error) {
	ifi, err := net.InterfaceByName(ep.Name)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w (packet endpoints attach to an existing interface in this namespace; create it first, or use tap:%s to have vmnet create a tap)", ep.Name, err, ep.Name)
	}
	var files []*os.File
	closeAll := func() error {
		var errs []error
		for _, f := range files {
			errs = append(errs, f.Close())
		}
		return errors.Join(errs...)
	}
	e := &Endpoint{
		hdr:      vnethdr.Legacy,
		maxFrame: ifi.MTU + ethOverhead,
		gso:      true,
		gsoMax:   MaxFrame,
		segCheck: true,
		closeFn:  closeAll,
	}
	fanout := 0
	for i := 0; i < opts.PacketSockets; i++ {
		fd, err := packetSocket(ifi.Index, opts.SocketBuffer, i == 0)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("interface %s: socket %d: %w", ep.Name, i, err)
		}
		if opts.PacketSockets > 1 {
			if i == 0 {
				// UNIQUEID: the kernel picks an id no other group in the
				// namespace uses, so vmnet never joins someone else's group.
				err = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_FANOUT,
					(unix.PACKET_FANOUT_HASH|unix.PACKET_FANOUT_FLAG_UNIQUEID)<<16)
				if err == nil {
					fanout, err = unix.GetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_FANOUT)
				}
			} else {
				err = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_FANOUT, fanout)
			}
			if err != nil {
				unix.Close(fd)
				closeAll()
				return nil, fmt.Errorf("interface %s: socket %d: join PACKET_FANOUT group: %w", ep.Name, i, err)
			}
		}
		name := fmt.Sprintf("packet:%s socket %d", ep.Name, i)
		f, rc, err := newSocketFile(fd, name)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("interface %s: socket %d: %w", ep.Name, i, err)
		}
		files = append(files, f)
		c := newMmsgConn(name, rc, f.SetDeadline, true)
		c.readDeadline = f.SetReadDeadline
		e.queues = append(e.queues, c)
	}
	if err := localOf(e, ep.Name, ifi.Index); err != nil {
		closeAll()
		return nil, err
	}
	return e, nil
}

func packetSocket(ifindex, bufSize int, promisc bool) (int, error) {
	// Protocol 0 until bind: no frames queue up before the options are set.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("AF_PACKET socket: %w", err)
	}
	fail := func(what string, err error) (int, error) {
		unix.Close(fd)
		return -1, fmt.Errorf("%s: %w", what, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
		return fail("PACKET_VNET_HDR", err)
	}
	// Frames the host sends out of the interface belong to whatever the
	// interface is attached to, not to the link (and this also keeps the
	// link's own frames from coming back).
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		return fail("PACKET_IGNORE_OUTGOING (needs Linux 4.20)", err)
	}
	// The receiving device has moved any 802.1Q tag out of the frame; the
	// auxiliary data gives it back.
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
		return fail("PACKET_AUXDATA", err)
	}
	setBuffers(fd, bufSize)
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}
	if err := unix.Bind(fd, sa); err != nil {
		return fail("bind", err)
	}
	if promisc {
		mr := &unix.PacketMreq{Ifindex: int32(ifindex), Type: unix.PACKET_MR_PROMISC}
		if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, mr); err != nil {
			return fail("promiscuous mode", err)
		}
	}
	return fd, nil
}

// openUDP opens a UDP socket bound to ep.Local and connected to ep.Remote:
// the kernel then drops datagrams from anyone else.
func openUDP(ep vmconfig.Endpoint, opts OpenOptions) (*Endpoint, error) {
	var key *[KeySize]byte
	if ep.Key != "" {
		// Read before the socket exists: a bad key file changes nothing.
		k, err := loadKey(ep.Key)
		if err != nil {
			return nil, err
		}
		key = &k
	}
	local, remote := net.UDPAddrFromAddrPort(ep.Local), net.UDPAddrFromAddrPort(ep.Remote)
	network := "udp4"
	if !ep.Local.Addr().Is4() {
		network = "udp6"
	}
	conn, err := net.DialUDP(network, local, remote)
	if err != nil {
		if errors.Is(err, unix.EADDRINUSE) {
			return nil, fmt.Errorf("%w (another link or program holds UDP port %d: find it with `ss -ulpn 'sport = :%d'`)", err, ep.Local.Port(), ep.Local.Port())
		}
		if errors.Is(err, unix.EADDRNOTAVAIL) {
			return nil, fmt.Errorf("%w (%s is not an address of this host)", err, ep.Local.Addr())
		}
		return nil, err
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, err
	}
	var serr error
	rc.Control(func(fd uintptr) {
		setBuffers(int(fd), opts.SocketBuffer)
		// Let IP fragment datagrams larger than the path MTU instead of
		// refusing them: tunnel datagrams are up to 64 KiB.
		if network == "udp4" {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DONT)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DONT)
		}
	})
	if serr != nil {
		conn.Close()
		return nil, fmt.Errorf("disable path MTU discovery: %w", serr)
	}
	name := "udp:" + ep.Local.String()
	var q queueIO = newUDPConn(name, rc, conn.SetDeadline, network == "udp6")
	maxFrame := MaxUDPFrame
	if key != nil {
		sc, err := newSealedConn(q.(*udpConn), key)
		if err != nil {
			conn.Close()
			return nil, err
		}
		q, maxFrame = sc, MaxUDPFrame-sealOverhead
	}
	return &Endpoint{
		hdr:      vnethdr.Legacy,
		maxFrame: maxFrame,
		gso:      true,
		gsoMax:   maxFrame,
		sealed:   key != nil,
		closeFn:  conn.Close,
		queues:   []queueIO{q},
	}, nil
}
