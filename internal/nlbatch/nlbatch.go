// Package nlbatch sends several rtnetlink requests in one system call and
// collects their acknowledgements.
//
// Configuring a new link takes a handful of requests (qdisc, MTU, master,
// port flags, up). Sent one by one, each costs a sendmsg, a recvmsg and,
// through vishvananda/netlink, a request object and a parse; sent as one
// batch, the kernel runs them back to back under one system call. The
// kernel answers every request of a batch even after one failed, so the
// caller must not mind the later ones running after a failure (tap.Create
// deletes the new tap; bridge.AddPort undoes its batch).
package nlbatch

import (
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Batch collects requests for one Exec. The zero value is ready.
type Batch struct {
	buf  []byte
	seqs []uint32
	ok   []unix.Errno // per request: an error that counts as success, or 0
	cur  int          // offset of the request Begin started, or -1
	open bool
}

// rbufs holds receive buffers: a link's description is a few KB, and a
// tap made per call to Create would otherwise allocate one each time.
var rbufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// Add queues req, which must carry NLM_F_ACK.
func (b *Batch) Add(req *nl.NetlinkRequest) { b.AddTolerating(req, 0) }

// seq numbers the requests built with Begin; the kernel echoes it in the
// acknowledgement. Any value works as long as it is unique in a batch.
var seq atomic.Uint32

// Begin starts a request of type typ, with NLM_F_REQUEST, NLM_F_ACK and
// flags, whose fixed part (an ifinfomsg, a tcmsg) is fixed; Attr and
// Nest add its attributes until the next Begin, Add or Exec. Built this
// way, a request costs no allocation once the batch's buffer has grown.
// A refusal with ok (0 for none) counts as success, as for AddTolerating.
func (b *Batch) Begin(typ, flags uint16, fixed []byte, ok unix.Errno) {
	b.end()
	b.cur, b.open = len(b.buf), true
	s := seq.Add(1)
	var h [unix.NLMSG_HDRLEN]byte
	binary.NativeEndian.PutUint16(h[4:], typ)
	binary.NativeEndian.PutUint16(h[6:], flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(h[8:], s)
	b.buf = append(b.buf, h[:]...)
	b.buf = append(b.buf, fixed...)
	b.pad()
	b.seqs = append(b.seqs, s)
	b.ok = append(b.ok, ok)
}

// Attr adds an attribute to the request Begin started.
func (b *Batch) Attr(typ uint16, val []byte) {
	b.attrHead(typ, len(val))
	b.buf = append(b.buf, val...)
	b.pad()
}

// AttrU32 adds a 32-bit attribute in host byte order.
func (b *Batch) AttrU32(typ uint16, v uint32) {
	var a [4]byte
	binary.NativeEndian.PutUint32(a[:], v)
	b.Attr(typ, a[:])
}

// AttrString adds a NUL-terminated string attribute.
func (b *Batch) AttrString(typ uint16, v string) {
	b.attrHead(typ, len(v)+1)
	b.buf = append(b.buf, v...)
	b.buf = append(b.buf, 0)
	b.pad()
}

// Nest opens a nested attribute; the attributes added until the matching
// EndNest, which takes Nest's result, go inside it.
func (b *Batch) Nest(typ uint16) int {
	at := len(b.buf)
	b.attrHead(typ, 0)
	return at
}

// EndNest closes the nested attribute Nest opened at at.
func (b *Batch) EndNest(at int) {
	binary.NativeEndian.PutUint16(b.buf[at:], uint16(len(b.buf)-at))
}

func (b *Batch) attrHead(typ uint16, n int) {
	var h [unix.SizeofRtAttr]byte
	binary.NativeEndian.PutUint16(h[0:], uint16(unix.SizeofRtAttr+n))
	binary.NativeEndian.PutUint16(h[2:], typ)
	b.buf = append(b.buf, h[:]...)
}

func (b *Batch) pad() {
	for len(b.buf)%unix.NLMSG_ALIGNTO != 0 {
		b.buf = append(b.buf, 0)
	}
}

// end writes the length of the request Begin started.
func (b *Batch) end() {
	if b.open {
		binary.NativeEndian.PutUint32(b.buf[b.cur:], uint32(len(b.buf)-b.cur))
		b.open = false
	}
}

// IfInfomsg is an ifinfomsg for Begin: family, interface index, and the
// flags to set among change.
func IfInfomsg(family uint8, index int32, flags, change uint32) [unix.SizeofIfInfomsg]byte {
	var m [unix.SizeofIfInfomsg]byte
	m[0] = family
	binary.NativeEndian.PutUint32(m[4:], uint32(index))
	binary.NativeEndian.PutUint32(m[8:], flags)
	binary.NativeEndian.PutUint32(m[12:], change)
	return m
}

// AddTolerating queues req, whose refusal with ok counts as success: a
// request whose goal the kernel's refusal already meets (turning off
// something the kernel does not have).
func (b *Batch) AddTolerating(req *nl.NetlinkRequest, ok unix.Errno) {
	b.end()
	b.buf = append(b.buf, req.Serialize()...)
	b.seqs = append(b.seqs, req.Seq)
	b.ok = append(b.ok, ok)
}

// Len is the number of queued requests.
func (b *Batch) Len() int { return len(b.seqs) }

// Exec sends the queued requests on the rtnetlink socket fd, waits for
// every acknowledgement and empties the batch. Answers other than
// acknowledgements (the link a RTM_GETLINK asks for) go to data, if not
// nil, with the index of their request; body is only valid during the
// call. Exec returns the first error the kernel reported, in request
// order, with its index; -1 when every request succeeded or the socket
// itself failed.
func (b *Batch) Exec(fd int, data func(i int, typ uint16, body []byte)) (int, error) {
	b.end()
	seqs := b.seqs
	defer func() { b.buf, b.seqs, b.ok = b.buf[:0], b.seqs[:0], b.ok[:0] }()
	if len(seqs) == 0 {
		return -1, nil
	}
	if err := unix.Sendto(fd, b.buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return -1, err
	}
	var codes [16]int32
	var done [16]bool
	if len(seqs) > len(codes) {
		return -1, errors.New("nlbatch: more than 16 requests in one batch")
	}
	rp := rbufs.Get().(*[]byte)
	defer rbufs.Put(rp)
	rb := *rp
	for left := len(seqs); left > 0; {
		n, err := unix.Read(fd, rb) // Recvfrom would allocate the sender's address
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return -1, err
		}
		for p := rb[:n]; len(p) >= unix.NLMSG_HDRLEN; {
			h := (*unix.NlMsghdr)(unsafe.Pointer(&p[0]))
			l := int(h.Len)
			if l < unix.NLMSG_HDRLEN || l > len(p) {
				return -1, errors.New("nlbatch: truncated netlink message")
			}
			body := p[unix.NLMSG_HDRLEN:l]
			if a := (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1); a < len(p) {
				p = p[a:]
			} else {
				p = nil
			}
			for i, s := range seqs {
				switch {
				case s != h.Seq || done[i]:
				case h.Type == unix.NLMSG_ERROR && len(body) >= 4:
					done[i], codes[i] = true, *(*int32)(unsafe.Pointer(&body[0]))
					left--
				case data != nil:
					data(i, h.Type, body)
				}
			}
		}
	}
	for i := range seqs {
		if codes[i] != 0 && unix.Errno(-codes[i]) != b.ok[i] {
			return i, unix.Errno(-codes[i])
		}
	}
	return -1, nil
}

// Socket opens an rtnetlink socket in the calling thread's namespace.
func Socket() (int, error) {
	return unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
}

// Ifindex asks the kernel for name's interface index through any socket
// fd (SIOCGIFINDEX): a name lookup, where RTM_GETLINK has the kernel
// describe the whole link and the caller parse it.
func Ifindex(fd int, name string) (int, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, err
	}
	return int(ifr.Uint32()), nil
}

// Attrs calls fn for each netlink attribute in b, without allocating;
// it stops at the first malformed one.
func Attrs(b []byte, fn func(typ uint16, val []byte)) {
	for len(b) >= unix.SizeofRtAttr {
		a := (*unix.RtAttr)(unsafe.Pointer(&b[0]))
		l := int(a.Len)
		if l < unix.SizeofRtAttr || l > len(b) {
			return
		}
		fn(a.Type&^unix.NLA_F_NESTED, b[unix.SizeofRtAttr:l])
		if l = (l + unix.RTA_ALIGNTO - 1) &^ (unix.RTA_ALIGNTO - 1); l >= len(b) {
			return
		}
		b = b[l:]
	}
}
