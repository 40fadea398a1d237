package link

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/vnethdr"
)

// maxBatch is the most frames one recvmmsg/sendmmsg call moves.
const maxBatch = 256

// mmsgConn moves batches of datagrams through a non-blocking socket with
// recvmmsg/sendmmsg, waiting in Go's netpoller. Its message arrays are
// made once; the callbacks are method values made once, so a batch
// allocates nothing.
type mmsgConn struct {
	name string
	rc   syscall.RawConn

	// vlan: the socket is AF_PACKET with PACKET_AUXDATA, and an 802.1Q tag
	// the receiving device moved into metadata is put back into the frame
	// after the vnet header.
	vlan  bool
	rctrl [][auxSpace]byte

	// Read state: one reader at a time.
	rmsgs  [maxBatch]unix.Mmsghdr
	riovs  [maxBatch]unix.Iovec
	rcount int
	rn     int
	rerr   error
	rfn    func(uintptr) bool
	rnow   func(uintptr) // recv for Control (readNow)

	wmu    sync.Mutex
	wmsgs  [maxBatch]unix.Mmsghdr
	wiovs  [maxBatch]unix.Iovec
	wcount int
	wn     int
	werr   error
	wfn    func(uintptr) bool

	deadline     func(time.Time) error
	readDeadline func(time.Time) error // nil: deadline
}

// auxSpace holds one control message with a tpacket_auxdata: a 16-byte
// cmsghdr and 20 bytes of data, aligned to 8 (CMSG_SPACE).
const auxSpace = 16 + 24

func init() {
	if unix.CmsgSpace(int(unsafe.Sizeof(unix.TpacketAuxdata{}))) > auxSpace {
		panic("link: auxSpace too small for tpacket_auxdata on this platform")
	}
}

func newMmsgConn(name string, rc syscall.RawConn, deadline func(time.Time) error, vlan bool) *mmsgConn {
	c := &mmsgConn{name: name, rc: rc, deadline: deadline, vlan: vlan}
	if vlan {
		c.rctrl = make([][auxSpace]byte, maxBatch)
		for i := range c.rmsgs {
			c.rmsgs[i].Hdr.Control = &c.rctrl[i][0]
		}
	}
	c.rfn = c.recv
	c.rnow = func(fd uintptr) { c.recv(fd) }
	c.wfn = c.send
	for i := range c.rmsgs {
		c.rmsgs[i].Hdr.Iov = &c.riovs[i]
		c.rmsgs[i].Hdr.SetIovlen(1)
		c.wmsgs[i].Hdr.Iov = &c.wiovs[i]
		c.wmsgs[i].Hdr.SetIovlen(1)
	}
	return c
}

func (c *mmsgConn) setDeadline(t time.Time) error { return c.deadline(t) }

func (c *mmsgConn) read(bufs [][]byte, off int, sizes []int) (int, error) {
	return c.receive(bufs, off, sizes, true)
}

// readNow is read without waiting and whatever the read deadline: 0
// frames and no error when none is waiting (see sweeper).
func (c *mmsgConn) readNow(bufs [][]byte, off int, sizes []int) (int, error) {
	return c.receive(bufs, off, sizes, false)
}

func (c *mmsgConn) receive(bufs [][]byte, off int, sizes []int, wait bool) (int, error) {
	n := min(len(bufs), maxBatch)
	for i := 0; i < n; i++ {
		b := bufs[i][off:]
		c.riovs[i].Base = &b[0]
		c.riovs[i].SetLen(len(b))
		c.rmsgs[i].Hdr.Flags = 0
		if c.vlan {
			c.rmsgs[i].Hdr.SetControllen(auxSpace)
		}
	}
	c.rcount, c.rn, c.rerr = n, 0, nil
	var err error
	if wait {
		err = c.rc.Read(c.rfn)
	} else {
		err = c.rc.Control(c.rnow)
	}
	if err == nil {
		err = c.rerr
	}
	for i := 0; i < c.rn; i++ {
		sizes[i] = int(c.rmsgs[i].Len)
		if c.rmsgs[i].Hdr.Flags&unix.MSG_TRUNC != 0 && sizes[i] <= len(bufs[i])-off {
			sizes[i] = len(bufs[i]) - off + 1
		}
		if c.vlan {
			sizes[i] = c.untagged(i, bufs[i][off:], sizes[i])
		}
	}
	if err != nil {
		err = fmt.Errorf("%s: receive: %w", c.name, err)
	}
	return c.rn, err
}

// untagged puts back the VLAN tag of message i, if it had one, into b
// (vnet header, then frame of n-10 bytes) and returns the new length.
// Moving the frame's tail by four bytes costs a copy, but only for tagged
// frames.
func (c *mmsgConn) untagged(i int, b []byte, n int) int {
	h := &c.rmsgs[i].Hdr
	if int(h.Controllen) < auxSpace || n > len(b) {
		return n
	}
	cm := (*unix.Cmsghdr)(unsafe.Pointer(&c.rctrl[i][0]))
	if cm.Level != unix.SOL_PACKET || cm.Type != unix.PACKET_AUXDATA {
		return n
	}
	aux := (*unix.TpacketAuxdata)(unsafe.Pointer(&c.rctrl[i][unix.CmsgLen(0)]))
	if aux.Status&unix.TP_STATUS_VLAN_VALID == 0 {
		return n
	}
	tpid := uint16(unix.ETH_P_8021Q)
	if aux.Status&unix.TP_STATUS_VLAN_TPID_VALID != 0 {
		tpid = aux.Vlan_tpid
	}
	const at = vnethdr.HdrLen + 12 // after the vnet header and the MAC addresses
	if n < at || n+4 > len(b) {
		return len(b) + 1 // no room: report it truncated
	}
	copy(b[at+4:n+4], b[at:n])
	binary.BigEndian.PutUint16(b[at:], tpid)
	binary.BigEndian.PutUint16(b[at+2:], aux.Vlan_tci)
	// Offsets in the vnet header count from the frame start: four more now.
	if hd, err := vnethdr.Decode(b); err == nil && hd.Flags&vnethdr.FlagNeedsCsum != 0 {
		hd.CsumStart += 4
		if hd.HdrLen != 0 {
			hd.HdrLen += 4
		}
		hd.Encode(b)
	}
	return n + 4
}

func (c *mmsgConn) recv(fd uintptr) bool { return recvmmsg(fd, &c.rmsgs, c.rcount, &c.rn, &c.rerr) }

// recvmmsg is one RawConn.Read callback: it receives up to count messages
// into msgs, storing how many in *n or the error in *err, and returns
// false when nothing is waiting (the poller then waits for the socket).
func recvmmsg(fd uintptr, msgs *[maxBatch]unix.Mmsghdr, count int, n *int, err *error) bool {
	for {
		// MSG_TRUNC makes the kernel report a datagram's full length, so
		// a cut frame is seen and dropped instead of forwarded short.
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&msgs[0])), uintptr(count), unix.MSG_TRUNC, 0, 0)
		switch e {
		case 0:
			*n = int(r)
			return true
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			*err = e
			return true
		}
	}
}

func (c *mmsgConn) write(bufs [][]byte, off int) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	done := 0
	for done < len(bufs) {
		n := min(len(bufs)-done, maxBatch)
		for i := 0; i < n; i++ {
			b := bufs[done+i][off:]
			c.wiovs[i].Base = &b[0]
			c.wiovs[i].SetLen(len(b))
		}
		c.wcount, c.wn, c.werr = n, 0, nil
		err := c.rc.Write(c.wfn)
		if err == nil {
			err = c.werr
		}
		done += c.wn
		if err != nil {
			return done, fmt.Errorf("%s: send: %w", c.name, err)
		}
	}
	return done, nil
}

func (c *mmsgConn) send(fd uintptr) bool { return sendmmsg(fd, &c.wmsgs, c.wcount, &c.wn, &c.werr) }

// sendmmsg is one RawConn.Write callback: it sends msgs[*sent:count],
// advancing *sent, storing a hard error in *err, and returns false when
// the socket is full (the poller then waits until it can write).
func sendmmsg(fd uintptr, msgs *[maxBatch]unix.Mmsghdr, count int, sent *int, err *error) bool {
	for *sent < count {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&msgs[*sent])), uintptr(count-*sent), 0, 0, 0)
		switch e {
		case 0:
			*sent += int(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			*err = e
			return true
		}
	}
	return true
}

// newSocketFile wraps a non-blocking socket fd so that Go's netpoller
// waits on it.
func newSocketFile(fd int, name string) (*os.File, syscall.RawConn, error) {
	f := os.NewFile(uintptr(fd), name)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, rc, nil
}

// setBuffers sets the socket's send and receive buffers, past the sysctl
// limits when allowed (root), else as far as they go.
func setBuffers(fd, size int) {
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size) != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, size)
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, size) != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, size)
	}
}
