package link

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udpConn is the tunnel socket. It batches with sendmmsg/recvmmsg and,
// where the kernel has them, lets runs of equal-sized datagrams travel as
// one: UDP_SEGMENT on send (one trip through the stack for up to 64
// datagrams) and UDP_GRO on receive (the kernel hands over a run in one
// buffer, split here).
//
// Splitting a run keeps order: the first datagram stays in the caller's
// buffer, the rest and every later message of that batch are copied to a
// stash and handed out by the following reads. Batches without runs
// (super-frames, which are one datagram each) are never copied.
type udpConn struct {
	name     string
	rc       syscall.RawConn
	deadline func(time.Time) error
	hdrRoom  int // IP and UDP header bytes, for the MTU check
	mtu      int // path MTU; runs are only built when a datagram fits it

	// Read state.
	gro    bool
	rmsgs  [maxBatch]unix.Mmsghdr
	riovs  [maxBatch]unix.Iovec
	rctrl  [maxBatch][udpCtrl]byte
	rcount int
	rn     int
	rerr   error
	rfn    func(uintptr) bool
	stash  []byte // datagrams waiting to be handed out, in order
	slens  []int
	sdone  int // next stash entry
	spos   int // its offset in stash

	wmu    sync.Mutex
	gso    bool
	wmsgs  [maxBatch]unix.Mmsghdr
	wiovs  [maxBatch]unix.Iovec
	wctrl  [maxBatch][udpCtrl]byte
	wfirst [maxBatch + 1]int // datagram index each message starts at
	wcount int
	wn     int
	werr   error
	wfn    func(uintptr) bool
}

// udpCtrl holds one control message with an int (UDP_GRO) or a uint16
// (UDP_SEGMENT): a 16-byte cmsghdr and 8 aligned bytes.
const udpCtrl = 24

// udpMaxSegments is the kernel's UDP_MAX_SEGMENTS before 6.13 (newer ones
// take 128).
const udpMaxSegments = 64

func newUDPConn(name string, rc syscall.RawConn, deadline func(time.Time) error, ipv6 bool) *udpConn {
	c := &udpConn{name: name, rc: rc, deadline: deadline, hdrRoom: 28}
	if ipv6 {
		c.hdrRoom = 48
	}
	c.rfn, c.wfn = c.recv, c.send
	for i := range c.rmsgs {
		c.rmsgs[i].Hdr.Iov = &c.riovs[i]
		c.rmsgs[i].Hdr.SetIovlen(1)
		c.rmsgs[i].Hdr.Control = &c.rctrl[i][0]
	}
	rc.Control(func(fd uintptr) {
		c.gro = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_GRO, 1) == nil
		c.gso = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_SEGMENT, 0) == nil
		c.mtu = 1500
		lvl, opt := unix.IPPROTO_IP, unix.IP_MTU
		if ipv6 {
			lvl, opt = unix.IPPROTO_IPV6, unix.IPV6_MTU
		}
		if m, err := unix.GetsockoptInt(int(fd), lvl, opt); err == nil {
			c.mtu = m
		}
	})
	if c.gro {
		// The stash grows (rarely: it is reused) to what a split needs.
		c.stash = make([]byte, 0, 1<<20)
		c.slens = make([]int, 0, 4*maxBatch)
	}
	return c
}

func (c *udpConn) setDeadline(t time.Time) error { return c.deadline(t) }

func (c *udpConn) read(bufs [][]byte, off int, sizes []int) (int, error) {
	if c.sdone < len(c.slens) {
		return c.fromStash(bufs, off, sizes), nil
	}
	n := min(len(bufs), maxBatch)
	for i := 0; i < n; i++ {
		b := bufs[i][off:]
		c.riovs[i].Base = &b[0]
		c.riovs[i].SetLen(len(b))
		c.rmsgs[i].Hdr.Flags = 0
		c.rmsgs[i].Hdr.SetControllen(udpCtrl)
	}
	c.rcount, c.rn, c.rerr = n, 0, nil
	err := c.rc.Read(c.rfn)
	if err == nil {
		err = c.rerr
	}
	if err != nil {
		err = fmt.Errorf("%s: receive: %w", c.name, err)
	}
	for i := 0; i < c.rn; i++ {
		sizes[i] = int(c.rmsgs[i].Len)
		if c.rmsgs[i].Hdr.Flags&unix.MSG_TRUNC != 0 && sizes[i] <= len(bufs[i])-off {
			sizes[i] = len(bufs[i]) - off + 1
		}
	}
	for i := 0; i < c.rn; i++ {
		if g := c.groSize(i); g > 0 && sizes[i] > g && sizes[i] <= len(bufs[i])-off {
			c.split(bufs, off, sizes, i, g)
			return i + 1, err
		}
	}
	return c.rn, err
}

// groSize returns the datagram size of a UDP_GRO run in message i, 0 if
// the message is one datagram.
func (c *udpConn) groSize(i int) int {
	if !c.gro || int(c.rmsgs[i].Hdr.Controllen) < unix.CmsgLen(2) {
		return 0
	}
	cm := (*unix.Cmsghdr)(unsafe.Pointer(&c.rctrl[i][0]))
	if cm.Level != unix.SOL_UDP || cm.Type != unix.UDP_GRO {
		return 0
	}
	return int(binary.NativeEndian.Uint16(c.rctrl[i][unix.CmsgLen(0):]))
}

// split leaves the first datagram of run i in bufs[i] and stashes the rest
// of the run, then messages i+1..rn-1, in order.
func (c *udpConn) split(bufs [][]byte, off int, sizes []int, i, g int) {
	c.stash, c.slens, c.sdone, c.spos = c.stash[:0], c.slens[:0], 0, 0
	run := bufs[i][off : off+sizes[i]]
	for p := g; p < len(run); p += g {
		d := run[p:min(p+g, len(run))]
		c.stash = append(c.stash, d...)
		c.slens = append(c.slens, len(d))
	}
	sizes[i] = g
	for j := i + 1; j < c.rn; j++ {
		m := sizes[j]
		if m > len(bufs[j])-off {
			c.slens = append(c.slens, m) // truncated: its size says so
			continue
		}
		if g := c.groSize(j); g > 0 && m > g {
			for p := 0; p < m; p += g {
				d := bufs[j][off+p : off+min(p+g, m)]
				c.stash = append(c.stash, d...)
				c.slens = append(c.slens, len(d))
			}
			continue
		}
		c.stash = append(c.stash, bufs[j][off:off+m]...)
		c.slens = append(c.slens, m)
	}
}

func (c *udpConn) fromStash(bufs [][]byte, off int, sizes []int) int {
	n := 0
	for n < len(bufs) && c.sdone < len(c.slens) {
		m := c.slens[c.sdone]
		b := bufs[n][off:]
		if m > len(b) {
			sizes[n] = m // truncated in the kernel already
		} else {
			copy(b, c.stash[c.spos:c.spos+m])
			sizes[n] = m
			c.spos += m
		}
		c.sdone++
		n++
	}
	return n
}

func (c *udpConn) recv(fd uintptr) bool { return recvmmsg(fd, &c.rmsgs, c.rcount, &c.rn, &c.rerr) }

// write sends bufs[i][off:] as one datagram each; runs of equal size go
// as one UDP_SEGMENT message. It returns how many datagrams were sent.
func (c *udpConn) write(bufs [][]byte, off int) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	done := 0
	for done < len(bufs) {
		nmsg, ndg := c.build(bufs[done:], off)
		c.wcount, c.wn, c.werr = nmsg, 0, nil
		err := c.rc.Write(c.wfn)
		if err == nil {
			err = c.werr
		}
		if c.wn == nmsg {
			done += ndg
		} else {
			done += c.wfirst[c.wn]
		}
		if err != nil {
			if c.gso && (errors.Is(err, unix.EIO) || errors.Is(err, unix.EINVAL)) && c.wfirst[c.wn+1]-c.wfirst[c.wn] > 1 {
				// The route cannot take UDP GSO (no checksum offload,
				// xfrm): send datagrams one by one from now on.
				c.gso = false
				continue
			}
			return done, fmt.Errorf("%s: send: %w", c.name, err)
		}
	}
	return done, nil
}

// build fills the message array from bufs and returns the message and
// datagram counts.
func (c *udpConn) build(bufs [][]byte, off int) (nmsg, ndg int) {
	for ndg < len(bufs) && nmsg < maxBatch {
		c.wfirst[nmsg] = ndg
		h := &c.wmsgs[nmsg].Hdr
		h.Iov = &c.wiovs[ndg]
		g := len(bufs[ndg]) - off
		k, total := 0, 0
		for ndg+k < len(bufs) && ndg+k < maxBatch {
			l := len(bufs[ndg+k]) - off
			if k > 0 && (!c.gso || l > g || k == udpMaxSegments || total+l > 65507-8 || g+c.hdrRoom > c.mtu) {
				break
			}
			b := bufs[ndg+k][off:]
			c.wiovs[ndg+k].Base = &b[0]
			c.wiovs[ndg+k].SetLen(l)
			k++
			total += l
			if l < g {
				break // a shorter datagram ends a run
			}
		}
		if k == 0 { // no iovec slot left in this call
			break
		}
		h.SetIovlen(k)
		if k > 1 {
			h.Control = &c.wctrl[nmsg][0]
			h.SetControllen(unix.CmsgSpace(2))
			cm := (*unix.Cmsghdr)(unsafe.Pointer(&c.wctrl[nmsg][0]))
			cm.Level, cm.Type = unix.SOL_UDP, unix.UDP_SEGMENT
			cm.SetLen(unix.CmsgLen(2))
			binary.NativeEndian.PutUint16(c.wctrl[nmsg][unix.CmsgLen(0):], uint16(g))
		} else {
			h.Control = nil
			h.SetControllen(0)
		}
		nmsg++
		ndg += k
	}
	c.wfirst[nmsg] = ndg
	return nmsg, ndg
}

func (c *udpConn) send(fd uintptr) bool { return sendmmsg(fd, &c.wmsgs, c.wcount, &c.wn, &c.werr) }
