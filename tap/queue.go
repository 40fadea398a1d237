package tap

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrDeviceGone is in the error of a read on a queue whose tap was
// deleted. The kernel says so either with end of file (the queue's socket
// was shut down) or EBADFD (the queue no longer points at a device); the
// error wraps that too.
var ErrDeviceGone = errors.New("the tap was deleted")

func deviceGone(err error) error { return fmt.Errorf("%w: %w", err, ErrDeviceGone) }

// Queue is one fd of a tap. Reads and writes go through Go's netpoller, so
// deadlines work and Close wakes a blocked Read. One reader and one writer
// may use a Queue at the same time; further readers (or writers) wait for
// each other.
//
// The kernel sends each frame to exactly one queue (by flow hash), and a
// frame written to any queue enters the device.
type Queue struct {
	tap   *Tap
	index int
	fd    int // for ioctls before the file is handed out; never read after Close
	f     *os.File
	rc    syscall.RawConn
	// hdr is the vnet header size as last read from the kernel. The size
	// belongs to the device and whoever holds it (QEMU) may change it at
	// any time: see RefreshVnetHdrSize.
	hdr atomic.Int32

	closed atomic.Bool

	mu       sync.Mutex // guards detached
	detached bool

	// Read state. The callbacks are method values made once, so a read
	// through RawConn.Read allocates nothing.
	rmu    sync.Mutex
	rbufs  [][]byte
	rsizes []int
	roff   int
	rn     int
	rerr   error
	rfn    func(uintptr) bool
	rvfn   func(uintptr) bool
	riov   [2]unix.Iovec
	riovn  int
	rone   [1][]byte
	rnow   func(uintptr) // readFrames for Control (ReadBatchNow)
	rsz    [1]int

	wmu   sync.Mutex
	wbufs [][]byte
	woff  int
	wn    int
	werr  error
	wfn   func(uintptr) bool
	wvfn  func(uintptr) bool
	wiov  [2]unix.Iovec
	wiovn int
	wone  [1][]byte
	// WriteVec's iovecs, grown to the longest frame's piece count and
	// kept, so a steady stream of writes allocates nothing.
	wvec  []unix.Iovec
	wvfn2 func(uintptr) bool

	// RefreshVnetHdrSize state: a method value made once, so asking the
	// kernel allocates nothing.
	szmu  sync.Mutex
	szfn  func(uintptr)
	szval int
	szerr error
}

func newQueue(t *Tap, index, fd int) *Queue {
	f := os.NewFile(uintptr(fd), fmt.Sprintf("tap %s queue %d", t.name, index))
	if f == nil {
		return nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	q := &Queue{tap: t, index: index, fd: fd, f: f, rc: rc}
	q.hdr.Store(int32(t.vnetHdr))
	q.szfn = q.getVnetHdrSize
	q.rfn = q.readFrames
	q.rnow = func(fd uintptr) { q.readFrames(fd) }
	q.rvfn = q.readv
	q.wfn = q.writeFrames
	q.wvfn = q.writev
	q.wvfn2 = q.writeVecFn
	return q
}

// Index is the queue's position in the Tap (not the kernel's queue index,
// which changes as queues detach).
func (q *Queue) Index() int { return q.index }

// File is the queue's file, e.g. for exec.Cmd.ExtraFiles (see Tap.Files).
func (q *Queue) File() *os.File { return q.f }

// VnetHdrSize is the length of the virtio-net header in front of frames,
// as last read from the kernel (when the Tap was made, or by the latest
// RefreshVnetHdrSize). 0 means no vnet header.
func (q *Queue) VnetHdrSize() int { return int(q.hdr.Load()) }

// RefreshVnetHdrSize asks the kernel for the device's vnet header size
// now (TUNGETVNETHDRSZ), remembers it for ReadHdr and WriteHdr, and
// returns it. The size belongs to the whole device and another holder can
// change it while frames flow (QEMU sets 10, 12 or 20 as the guest
// negotiates features, and the kernel accepts any size from 10 up); a
// reader that keeps its own headroom should call this between batches
// instead of trusting the size it saw at open. It allocates nothing. On
// a tap without vnet_hdr it returns 0.
func (q *Queue) RefreshVnetHdrSize() (int, error) {
	if q.tap.flags&unix.IFF_VNET_HDR == 0 {
		return 0, nil
	}
	q.szmu.Lock()
	defer q.szmu.Unlock()
	q.szval, q.szerr = 0, nil
	if err := q.rc.Control(q.szfn); err != nil {
		return 0, q.wrap("get vnet header size", err)
	}
	if q.szerr != nil {
		return 0, q.wrap("get vnet header size", q.szerr)
	}
	q.hdr.Store(int32(q.szval))
	return q.szval, nil
}

func (q *Queue) getVnetHdrSize(fd uintptr) {
	q.szval, q.szerr = unix.IoctlGetInt(int(fd), unix.TUNGETVNETHDRSZ)
}

// Close closes the queue's file.
func (q *Queue) Close() error {
	q.closed.Store(true)
	return q.f.Close()
}

// SetDeadline, SetReadDeadline and SetWriteDeadline work as on os.File.
func (q *Queue) SetDeadline(t time.Time) error      { return q.f.SetDeadline(t) }
func (q *Queue) SetReadDeadline(t time.Time) error  { return q.f.SetReadDeadline(t) }
func (q *Queue) SetWriteDeadline(t time.Time) error { return q.f.SetWriteDeadline(t) }

// Detach disables the queue (TUNSETQUEUE IFF_DETACH_QUEUE): the kernel
// stops steering frames to it and counts it in num_disabled_queues. It
// does not fail I/O on it: a read waits (nothing arrives) until Attach,
// a deadline or Close, and a write still enters the device. Reads fail
// with ErrDeviceGone (EBADFD or end of file) only once the tap is deleted.
func (q *Queue) Detach() error { return q.setQueue(unix.IFF_DETACH_QUEUE, "detach") }

// Attach re-enables a detached queue.
func (q *Queue) Attach() error { return q.setQueue(unix.IFF_ATTACH_QUEUE, "attach") }

// Detached reports whether Detach was the last successful call of the two.
func (q *Queue) Detached() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.detached
}

// AttachFile re-enables the queue of a tap file that is not held as a
// Queue (one handed to QEMU, which detaches the queues a guest does not
// use). Attaching an attached queue fails with EINVAL.
func AttachFile(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("tap queue %s: attach: %w", f.Name(), err)
	}
	if err := setQueue(rc, unix.IFF_ATTACH_QUEUE); err != nil {
		return fmt.Errorf("tap queue %s: attach: %w", f.Name(), explain(err, ""))
	}
	return nil
}

// setQueue is TUNSETQUEUE on the queue behind rc.
func setQueue(rc syscall.RawConn, flag uint16) error {
	var ierr error
	err := rc.Control(func(fd uintptr) {
		ifr, err := unix.NewIfreq("")
		if err != nil {
			ierr = err
			return
		}
		ifr.SetUint16(flag)
		ierr = unix.IoctlIfreq(int(fd), unix.TUNSETQUEUE, ifr)
	})
	if err != nil {
		return err
	}
	return ierr
}

func (q *Queue) setQueue(flag uint16, what string) error {
	err := setQueue(q.rc, flag)
	if err != nil {
		return fmt.Errorf("tap %s: %s queue %d: %w", q.tap.name, what, q.index, explain(err, ""))
	}
	q.mu.Lock()
	q.detached = flag == unix.IFF_DETACH_QUEUE
	q.mu.Unlock()
	return nil
}

func (q *Queue) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if q.closed.Load() && !errors.Is(err, os.ErrClosed) {
		// RawConn reports a closed file as internal/poll's
		// ErrFileClosing, which os.ErrClosed does not match.
		err = fmt.Errorf("%w (%v)", os.ErrClosed, err)
	}
	switch {
	case op == "write" && errors.Is(err, unix.EIO):
		err = &hinted{err, "the tap is down: bring it up (Config.Up, or `ip link set " + q.tap.name + " up`)"}
	case op == "write" && errors.Is(err, unix.EINVAL):
		err = &hinted{err, "frame shorter than an Ethernet header, or a vnet header the kernel rejects"}
	}
	return fmt.Errorf("tap %s: queue %d: %s: %w", q.tap.name, q.index, op, err)
}

// ReadBatch reads up to len(bufs) frames, each into bufs[i][offset:], and
// stores their lengths in sizes[i]. It waits for the first frame, then
// takes what else is already queued without waiting. With a vnet header
// the header is at the start of each frame and counted in its size; its
// length is the device's at the time of the read, which another holder
// may have changed since VnetHdrSize was read (see RefreshVnetHdrSize). A
// frame longer than its buffer is cut by the kernel, so buffers must hold
// MTU+14+header bytes (64 KiB+header with TSO/USO offloads).
// It returns the number of frames read; err is set when the next read
// failed, possibly after n > 0 frames.
func (q *Queue) ReadBatch(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(sizes) < len(bufs) {
		return 0, q.wrap("read", fmt.Errorf("%d sizes for %d buffers", len(sizes), len(bufs)))
	}
	q.rmu.Lock()
	defer q.rmu.Unlock()
	return q.readBatch(bufs, sizes, offset, true)
}

// ReadBatchNow is ReadBatch without waiting, and whatever the read
// deadline: it reads the frames the queue holds now and returns 0 frames
// and no error when none is waiting. Go's poller fails a read whose
// deadline has passed before trying it, so a reader that must empty the
// queue after its deadline (a link handing a tap over to the kernel)
// reads on with this until it returns 0.
func (q *Queue) ReadBatchNow(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(sizes) < len(bufs) {
		return 0, q.wrap("read", fmt.Errorf("%d sizes for %d buffers", len(sizes), len(bufs)))
	}
	q.rmu.Lock()
	defer q.rmu.Unlock()
	return q.readBatch(bufs, sizes, offset, false)
}

func (q *Queue) readBatch(bufs [][]byte, sizes []int, offset int, wait bool) (int, error) {
	q.rbufs, q.rsizes, q.roff, q.rn, q.rerr = bufs, sizes, offset, 0, nil
	var err error
	if wait {
		err = q.rawRead(q.rfn)
	} else {
		err = q.rc.Control(q.rnow)
	}
	n, rerr := q.rn, q.rerr
	q.rbufs, q.rsizes = nil, nil
	if err == nil {
		err = rerr
	}
	return n, q.wrap("read", err)
}

// rawRead is the RawConn's Read, except on a queue whose tap is gone.
// tun's poll then answers EPOLLERR alone, which Go's poller turns into an
// unexported "not pollable" error for every later read, before fn runs;
// running fn once more lets the kernel say what happened (EBADFD).
func (q *Queue) rawRead(fn func(uintptr) bool) error {
	err := q.rc.Read(fn)
	if err == nil || q.closed.Load() || errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	done := false
	if cerr := q.rc.Control(func(fd uintptr) { done = fn(fd) }); cerr != nil || !done {
		return err
	}
	return nil
}

func (q *Queue) readFrames(fd uintptr) bool {
	for q.rn < len(q.rbufs) {
		n, err := unix.Read(int(fd), q.rbufs[q.rn][q.roff:])
		switch err {
		case nil:
			if n == 0 {
				// tun reports an unregistered device as end of file.
				q.rerr = deviceGone(io.EOF)
				return true
			}
			q.rsizes[q.rn] = n
			q.rn++
		case unix.EINTR:
		case unix.EAGAIN:
			return q.rn > 0
		case unix.EBADFD:
			q.rerr = deviceGone(err)
			return true
		default:
			q.rerr = err
			return true
		}
	}
	return true
}

// Read reads one frame (with the vnet header in front, if any) into b.
func (q *Queue) Read(b []byte) (int, error) {
	q.rmu.Lock()
	defer q.rmu.Unlock()
	q.rone[0] = b
	n, err := q.readBatch(q.rone[:], q.rsz[:], 0, true)
	q.rone[0] = nil
	if n == 0 {
		return 0, err
	}
	return q.rsz[0], nil
}

// ReadHdr reads one frame, putting the vnet header into hdr (which must
// hold VnetHdrSize bytes) and the Ethernet frame into frame. It returns
// the frame's length without the header. Without a vnet header hdr is
// not touched.
func (q *Queue) ReadHdr(hdr, frame []byte) (int, error) {
	hs := q.VnetHdrSize()
	if len(hdr) < hs {
		return 0, q.wrap("read", fmt.Errorf("header buffer of %d bytes for a %d-byte vnet header", len(hdr), hs))
	}
	if len(frame) == 0 {
		return 0, q.wrap("read", errors.New("empty frame buffer"))
	}
	q.rmu.Lock()
	defer q.rmu.Unlock()
	q.riovn = setIov(&q.riov, hdr[:hs], frame)
	q.rn, q.rerr = 0, nil
	err := q.rawRead(q.rvfn)
	q.riov = [2]unix.Iovec{}
	if err == nil {
		err = q.rerr
	}
	if err != nil {
		return 0, q.wrap("read", err)
	}
	return q.rn - hs, nil
}

func setIov(iov *[2]unix.Iovec, hdr, frame []byte) int {
	i := 0
	for _, b := range [2][]byte{hdr, frame} {
		if len(b) > 0 {
			iov[i].Base = &b[0]
			iov[i].SetLen(len(b))
			i++
		}
	}
	return i
}

func (q *Queue) readv(fd uintptr) bool {
	for {
		n, _, e := unix.Syscall(unix.SYS_READV, fd, uintptr(unsafe.Pointer(&q.riov[0])), uintptr(q.riovn))
		switch e {
		case 0:
			if n == 0 {
				q.rerr = deviceGone(io.EOF)
			}
			q.rn = int(n)
			return true
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		case unix.EBADFD:
			q.rerr = deviceGone(e)
			return true
		default:
			q.rerr = e
			return true
		}
	}
}

// WriteBatch writes bufs[i][offset:] as one frame each (starting with the
// vnet header, if the tap has one). It returns how many were written.
func (q *Queue) WriteBatch(bufs [][]byte, offset int) (int, error) {
	q.wmu.Lock()
	defer q.wmu.Unlock()
	return q.writeBatch(bufs, offset)
}

func (q *Queue) writeBatch(bufs [][]byte, offset int) (int, error) {
	q.wbufs, q.woff, q.wn, q.werr = bufs, offset, 0, nil
	err := q.rc.Write(q.wfn)
	n, werr := q.wn, q.werr
	q.wbufs = nil
	if err == nil {
		err = werr
	}
	return n, q.wrap("write", err)
}

func (q *Queue) writeFrames(fd uintptr) bool {
	for q.wn < len(q.wbufs) {
		_, err := unix.Write(int(fd), q.wbufs[q.wn][q.woff:])
		switch err {
		case nil:
			q.wn++
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		case unix.EBADFD:
			q.werr = deviceGone(err)
			return true
		default:
			q.werr = err
			return true
		}
	}
	return true
}

// Write writes one frame, starting with the vnet header if there is one.
func (q *Queue) Write(b []byte) (int, error) {
	q.wmu.Lock()
	defer q.wmu.Unlock()
	q.wone[0] = b
	n, err := q.writeBatch(q.wone[:], 0)
	q.wone[0] = nil
	if n == 0 {
		return 0, err
	}
	return len(b), err
}

// WriteHdr writes one frame whose vnet header is in hdr (VnetHdrSize
// bytes are used) and Ethernet frame in frame.
func (q *Queue) WriteHdr(hdr, frame []byte) (int, error) {
	hs := q.VnetHdrSize()
	if len(hdr) < hs {
		return 0, q.wrap("write", fmt.Errorf("header of %d bytes for a %d-byte vnet header", len(hdr), hs))
	}
	q.wmu.Lock()
	defer q.wmu.Unlock()
	q.wiovn = setIov(&q.wiov, hdr[:hs], frame)
	q.wn, q.werr = 0, nil
	err := q.rc.Write(q.wvfn)
	q.wiov = [2]unix.Iovec{}
	if err == nil {
		err = q.werr
	}
	if err != nil {
		return 0, q.wrap("write", err)
	}
	return len(frame), nil
}

func (q *Queue) writev(fd uintptr) bool {
	return q.writevRaw(fd, unsafe.Pointer(&q.wiov[0]), q.wiovn)
}

// writevRaw is one writev of n iovecs at iov for a RawConn.Write callback:
// false asks the poller to wait (EAGAIN); the result goes to q.wn and
// q.werr.
func (q *Queue) writevRaw(fd uintptr, iov unsafe.Pointer, n int) bool {
	for {
		w, _, e := unix.Syscall(unix.SYS_WRITEV, fd, uintptr(iov), uintptr(n))
		switch e {
		case 0:
			q.wn = int(w)
			return true
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		case unix.EBADFD:
			q.werr = deviceGone(e)
			return true
		default:
			q.werr = e
			return true
		}
	}
}

// maxIov is the kernel's limit on iovecs per writev (UIO_MAXIOV).
const maxIov = 1024

// WriteVec writes one frame whose vnet header is in hdr (VnetHdrSize
// bytes are used; none without a vnet header) and whose Ethernet frame is
// the concatenation of pieces, in one writev: a frame assembled from
// several buffers (a super-frame GRO merged from the payloads of the
// frames it read) goes out without being copied together first. The
// kernel takes it as it takes one contiguous write. It returns the
// frame's length without the header and allocates nothing once it has
// seen a frame with as many pieces.
func (q *Queue) WriteVec(hdr []byte, pieces [][]byte) (int, error) {
	hs := q.VnetHdrSize()
	if len(hdr) < hs {
		return 0, q.wrap("write", fmt.Errorf("header of %d bytes for a %d-byte vnet header", len(hdr), hs))
	}
	if len(pieces)+1 > maxIov {
		return 0, q.wrap("write", fmt.Errorf("a frame in %d pieces: at most %d: %w", len(pieces), maxIov-1, unix.EINVAL))
	}
	q.wmu.Lock()
	defer q.wmu.Unlock()
	v := q.wvec[:0]
	if hs > 0 {
		v = appendIov(v, hdr[:hs])
	}
	n := 0
	for _, p := range pieces {
		if len(p) > 0 {
			v = appendIov(v, p)
			n += len(p)
		}
	}
	q.wvec = v
	q.wn, q.werr = 0, nil
	err := q.rc.Write(q.wvfn2)
	clear(q.wvec) // keep no pointers into the caller's buffers
	if err == nil {
		err = q.werr
	}
	if err != nil {
		return 0, q.wrap("write", err)
	}
	return n, nil
}

func appendIov(v []unix.Iovec, b []byte) []unix.Iovec {
	v = append(v, unix.Iovec{Base: &b[0]})
	v[len(v)-1].SetLen(len(b))
	return v
}

func (q *Queue) writeVecFn(fd uintptr) bool {
	var p unsafe.Pointer
	if len(q.wvec) > 0 {
		p = unsafe.Pointer(&q.wvec[0])
	}
	return q.writevRaw(fd, p, len(q.wvec))
}
