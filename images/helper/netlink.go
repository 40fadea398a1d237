package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"
)

// The guest is x86-64: netlink fields in host byte order are little
// endian (binary.LittleEndian below).
//
// Not in package syscall.
const (
	solNetlink       = 270
	netlinkCapAck    = 10
	netlinkExtAck    = 11
	nlmFAckTLVs      = 0x200
	nlmsgerrAttrMsg  = 1
	rtprotBoot       = 3
	sizeofNlMsghdr   = syscall.SizeofNlMsghdr
	sizeofNlMsgerr   = syscall.SizeofNlMsghdr + 4 + syscall.SizeofNlMsghdr // error, then the request's header
	netlinkRecvBytes = 8192
)

type rtnl struct {
	fd  int
	seq uint32
	buf []byte
}

func openNetlink() (*rtnl, error) {
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, syscall.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("rtnetlink socket: %v", err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("rtnetlink bind: %v", err)
	}
	// Short acks carrying the kernel's own message (as ip shows it).
	syscall.SetsockoptInt(fd, solNetlink, netlinkCapAck, 1)
	syscall.SetsockoptInt(fd, solNetlink, netlinkExtAck, 1)
	return &rtnl{fd: fd, buf: make([]byte, netlinkRecvBytes)}, nil
}

func (nl *rtnl) close() { syscall.Close(nl.fd) }

// apply runs one batch line (see the command's documentation).
func (nl *rtnl) apply(f []string) error {
	switch {
	case len(f) >= 5 && f[0] == "link" && f[1] == "set" && f[2] == "dev":
		return nl.link(f[3], f[4:])
	case len(f) == 5 && f[0] == "addr" && f[1] == "add" && f[3] == "dev":
		return nl.addr(f[2], f[4])
	case len(f) == 5 && f[0] == "route" && f[1] == "add" && f[3] == "via":
		return nl.route(f[2], f[4])
	}
	return fmt.Errorf("unknown line %q", strings.Join(f, " "))
}

func ifindex(name string) (int32, error) {
	b, err := os.ReadFile("/sys/class/net/" + name + "/ifindex")
	if err != nil || strings.Contains(name, "/") {
		return 0, fmt.Errorf("cannot find device %q", name)
	}
	i, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("cannot find device %q", name)
	}
	return int32(i), nil
}

func (nl *rtnl) link(dev string, f []string) error {
	idx, err := ifindex(dev)
	if err != nil {
		return err
	}
	ifi := syscall.IfInfomsg{Family: syscall.AF_UNSPEC, Index: idx}
	var attrs []byte
	switch {
	case len(f) == 2 && f[0] == "address":
		mac, err := parseMAC(f[1])
		if err != nil {
			return err
		}
		attrs = attr(attrs, syscall.IFLA_ADDRESS, mac)
	case len(f) == 2 && f[0] == "mtu":
		mtu, err := strconv.ParseUint(f[1], 10, 32)
		if err != nil {
			return fmt.Errorf("mtu %q is not a number", f[1])
		}
		attrs = attr(attrs, syscall.IFLA_MTU, binary.LittleEndian.AppendUint32(nil, uint32(mtu)))
	case len(f) == 1 && f[0] == "up":
		ifi.Flags, ifi.Change = syscall.IFF_UP, syscall.IFF_UP
	default:
		return fmt.Errorf("unknown link setting %q", strings.Join(f, " "))
	}
	body := append(bytesOf(&ifi), attrs...)
	return nl.do(syscall.RTM_NEWLINK, 0, body)
}

func parseMAC(s string) ([]byte, error) {
	p := strings.Split(s, ":")
	if len(p) != 6 {
		return nil, fmt.Errorf("%q is not a valid MAC address", s)
	}
	mac := make([]byte, 6)
	for i, x := range p {
		v, err := strconv.ParseUint(x, 16, 8)
		if err != nil || len(x) == 0 || len(x) > 2 {
			return nil, fmt.Errorf("%q is not a valid MAC address", s)
		}
		mac[i] = byte(v)
	}
	return mac, nil
}

func family(a netip.Addr) uint8 {
	if a.Is4() {
		return syscall.AF_INET
	}
	return syscall.AF_INET6
}

func (nl *rtnl) addr(prefix, dev string) error {
	p, err := netip.ParsePrefix(prefix)
	if err != nil {
		return fmt.Errorf("%q is not an address with a prefix length", prefix)
	}
	idx, err := ifindex(dev)
	if err != nil {
		return err
	}
	a := p.Addr()
	ifa := syscall.IfAddrmsg{Family: family(a), Prefixlen: uint8(p.Bits()), Index: uint32(idx)}
	body := bytesOf(&ifa)
	body = attr(body, syscall.IFA_LOCAL, a.AsSlice())
	body = attr(body, syscall.IFA_ADDRESS, a.AsSlice())
	return nl.do(syscall.RTM_NEWADDR, syscall.NLM_F_CREATE|syscall.NLM_F_EXCL, body)
}

func (nl *rtnl) route(dst, via string) error {
	gw, err := netip.ParseAddr(via)
	if err != nil {
		return fmt.Errorf("gateway %q is not an address", via)
	}
	rt := syscall.RtMsg{Family: family(gw), Table: syscall.RT_TABLE_MAIN, Protocol: rtprotBoot,
		Scope: syscall.RT_SCOPE_UNIVERSE, Type: syscall.RTN_UNICAST}
	var body []byte
	if dst != "default" {
		p, err := netip.ParsePrefix(dst)
		if err != nil {
			return fmt.Errorf("%q is not an address with a prefix length", dst)
		}
		if family(p.Addr()) != rt.Family {
			return fmt.Errorf("gateway %s and destination %s are of different families", via, dst)
		}
		rt.Dst_len = uint8(p.Bits())
		body = attr(bytesOf(&rt), syscall.RTA_DST, p.Masked().Addr().AsSlice())
	} else {
		body = bytesOf(&rt)
	}
	body = attr(body, syscall.RTA_GATEWAY, gw.AsSlice())
	return nl.do(syscall.RTM_NEWROUTE, syscall.NLM_F_CREATE|syscall.NLM_F_EXCL, body)
}

// do sends one request and waits for its ack.
func (nl *rtnl) do(typ uint16, flags uint16, body []byte) error {
	nl.seq++
	h := syscall.NlMsghdr{Len: uint32(sizeofNlMsghdr + len(body)), Type: typ,
		Flags: syscall.NLM_F_REQUEST | syscall.NLM_F_ACK | flags, Seq: nl.seq}
	msg := append(bytesOf(&h), body...)
	if err := syscall.Sendto(nl.fd, msg, 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return fmt.Errorf("rtnetlink send: %v", err)
	}
	for {
		n, _, err := syscall.Recvfrom(nl.fd, nl.buf, 0)
		if err != nil {
			return fmt.Errorf("rtnetlink receive: %v", err)
		}
		b := nl.buf[:n]
		for len(b) >= sizeofNlMsghdr {
			mh := (*syscall.NlMsghdr)(unsafe.Pointer(&b[0]))
			l := int(mh.Len)
			if l < sizeofNlMsghdr || l > len(b) {
				return errors.New("rtnetlink: short message")
			}
			m := b[:l]
			b = b[minInt((l+3)&^3, len(b)):]
			if mh.Seq != nl.seq || mh.Type != syscall.NLMSG_ERROR || l < sizeofNlMsgerr {
				continue
			}
			errno := -int32(binary.LittleEndian.Uint32(m[sizeofNlMsghdr:]))
			if errno == 0 {
				return nil
			}
			if mh.Flags&nlmFAckTLVs != 0 {
				if s := extackMsg(m[sizeofNlMsgerr:]); s != "" {
					return errors.New(s)
				}
			}
			return fmt.Errorf("rtnetlink answers: %v", syscall.Errno(errno))
		}
	}
}

// extackMsg finds the kernel's message (NLMSGERR_ATTR_MSG) in the
// attributes after a capped ack.
func extackMsg(b []byte) string {
	for len(b) >= 4 {
		l := int(binary.LittleEndian.Uint16(b))
		t := binary.LittleEndian.Uint16(b[2:])
		if l < 4 || l > len(b) {
			return ""
		}
		if t&0x3fff == nlmsgerrAttrMsg {
			s := string(b[4:l])
			s, _, _ = strings.Cut(s, "\x00")
			return strings.TrimSuffix(s, ".") + "."
		}
		b = b[minInt((l+3)&^3, len(b)):]
	}
	return ""
}

// minInt is min for Go 1.19, the oldest toolchain the image recipe builds
// this program with (Debian 12's golang-go).
func minInt(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func attr(b []byte, typ uint16, v []byte) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(4+len(v)))
	b = binary.LittleEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// bytesOf copies a fixed-size kernel struct.
func bytesOf[T any](v *T) []byte {
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))...)
}
