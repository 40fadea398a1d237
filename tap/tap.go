// Package tap creates, opens, describes and deletes Linux tap devices
// (/dev/net/tun) with one pollable *os.File per queue, and moves whole
// frames through them in batches without allocating per packet.
//
// Namespaces: a tap is created in, and names are looked up in, the network
// namespace of the calling OS thread. Create, Open, Describe, List and
// Delete lock the goroutine to its thread for their whole run and do their
// netlink work on that same thread, so callers that want another namespace
// wrap the call in netns.Do. A Tap remembers the namespace it was made in
// and later calls on it (AddQueue, Describe) go back there on their own.
package tap

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/nlbatch"
	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/owner"
)

// devTun is a variable only so tests can produce the "missing device"
// error, which a running kernel with tun cannot.
var devTun = "/dev/net/tun"

// Config describes a tap to create. Start from NewConfig: Owner and Group
// use -1 for "unset", and 0 means root.
type Config struct {
	// Name of the interface, at most 15 bytes without '/', ':' or
	// whitespace. Empty lets the kernel pick tapN.
	Name string
	// Queues is the number of queues (fds), 1..256. More than one makes a
	// multi_queue tap. 0 means 1.
	Queues int
	// VnetHdrSize is 0 (no virtio-net header), 10 or 12 (with num_buffers).
	VnetHdrSize int
	// Offloads the kernel may leave to the reader; needs VnetHdrSize.
	Offloads Offload
	// BestEffort sets the largest supported subset of Offloads instead of
	// failing when the kernel lacks one.
	BestEffort bool
	// Persist keeps the device after the last queue is closed.
	Persist bool
	// Owner and Group (uid/gid) may attach queues without CAP_NET_ADMIN.
	// -1 leaves them unset.
	Owner, Group int
	// MTU, TxQueueLen: 0 keeps the kernel default. MAC: nil keeps the
	// random address the kernel chose.
	MTU        int
	MAC        net.HardwareAddr
	TxQueueLen int
	// Carrier, when set, forces the carrier state (TUNSETCARRIER).
	Carrier *bool
	// Up brings the link up after configuring it.
	Up bool
	// NoLinkLocal gives the tap no IPv6 link-local address (address
	// generation mode none), for a tap that becomes a bridge port or one
	// end of a wire: the kernel hands a bridge port's frames to the
	// bridge, never to the port's own addresses, so the address would
	// only cost duplicate address detection, multicast reports and
	// routes. A tap used on its own keeps the kernel's default.
	NoLinkLocal bool
	// Tag is the owner recorded in the interface alias (owner.AdHoc or
	// owner.Lab(name)); "" is owner.AdHoc.
	Tag string
	// Qdisc is the root qdisc; the zero value is noqueue.
	Qdisc Qdisc
	// Impairment, when not zero, replaces the root qdisc with netem
	// and/or tbf (see Tap.SetImpairment); creation fails, leaving no
	// tap, on a kernel without them.
	Impairment Impairment
	// NAPI (IFF_NAPI) makes the kernel take frames written to the
	// queues vmnet attaches through a NAPI instance per queue, whose GRO
	// may merge them before the bridge or stack sees them. It only pays
	// with GROFlushTimeout: without one the kernel flushes GRO after
	// every write, so each frame still travels alone. See napi.go.
	NAPI bool
	// NAPIFrags (IFF_NAPI_FRAGS, needs NAPI) builds the kernel's buffer
	// of each write from its iovecs as page fragments.
	NAPIFrags bool
	// GROFlushTimeout (needs NAPI) is how long the kernel's GRO may hold
	// frames written to the tap while more of their flow may follow
	// (the device's gro_flush_timeout); 0 keeps the kernel's default
	// (no hold). A TCP segment with PSH, and anything GRO cannot merge,
	// passes at once.
	GROFlushTimeout time.Duration
	// NAPIThreaded (needs NAPI) runs the tap's NAPI polls in a kernel
	// thread of their own (the device's "threaded" setting) instead of
	// inside the writer's write(): a write then only queues its frame
	// and wakes the thread, which runs GRO, the bridge and the
	// receiving stack for whole batches, on another CPU when one is
	// free. See napi.go.
	NAPIThreaded bool
}

// NewConfig returns a Config for name with the given number of queues and
// everything else unset.
func NewConfig(name string, queues int) Config {
	return Config{Name: name, Queues: queues, Owner: -1, Group: -1}
}

func (c *Config) validate() error {
	if c.Queues == 0 {
		c.Queues = 1
	}
	if c.Tag == "" {
		c.Tag = owner.AdHoc
	}
	label := c.Name
	if label == "" {
		label = "(new)"
	} else if err := checkName(c.Name); err != nil {
		return err
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("tap %s: "+format+": %w", append(append([]any{label}, args...), unix.EINVAL)...)
	}
	if err := checkQueues(label, c.Queues); err != nil {
		return err
	}
	if err := owner.Valid(c.Tag); err != nil {
		return fmt.Errorf("tap %s: %w", label, err)
	}
	switch {
	case c.VnetHdrSize != 0 && c.VnetHdrSize != 10 && c.VnetHdrSize != 12:
		return bad("vnet header size %d: must be 0 (off), 10 or 12", c.VnetHdrSize)
	case c.Offloads != 0 && c.VnetHdrSize == 0:
		return bad("offloads %s need a vnet header (size 10 or 12), or the reader could not tell a large frame from a normal one: turn the vnet header on or drop the offloads", c.Offloads)
	case c.Owner < -1 || c.Group < -1:
		return bad("owner %d / group %d: use -1 for unset", c.Owner, c.Group)
	case c.MTU < 0 || c.TxQueueLen < 0:
		return bad("negative MTU %d or tx queue length %d", c.MTU, c.TxQueueLen)
	case c.MAC != nil && len(c.MAC) != 6:
		return bad("MAC %s: need 6 bytes", c.MAC)
	}
	if err := c.Offloads.check(); err != nil {
		return fmt.Errorf("tap %s: %w", label, err)
	}
	switch {
	case c.NAPIFrags && !c.NAPI:
		return bad("NAPI fragments need NAPI: turn NAPI on as well")
	case c.GROFlushTimeout < 0:
		return bad("negative GRO flush timeout %v", c.GROFlushTimeout)
	case c.GROFlushTimeout > 0 && !c.NAPI:
		return bad("a GRO flush timeout of %v needs NAPI (without it frames written to the tap skip GRO): turn NAPI on or drop the timeout", c.GROFlushTimeout)
	case c.NAPIThreaded && !c.NAPI:
		return bad("threaded NAPI needs NAPI: turn NAPI on as well")
	}
	return nil
}

// Tap is an open tap device: the queues vmnet holds on it.
type Tap struct {
	name       string
	index      int
	ns         vns.NsHandle
	flags      uint16 // what TUNSETIFF is asked for when attaching more queues
	vnetHdr    int
	offloads   Offload
	offloadErr error
	qdisc      Qdisc // the root qdisc a zero Impairment puts back

	mu     sync.Mutex
	queues []*Queue
	closed bool

	// nsMu guards ns against Close while inNS runs in it: once closed,
	// its fd number may name another namespace.
	nsMu     sync.RWMutex
	nsClosed bool
}

// Name is the interface name.
func (t *Tap) Name() string { return t.name }

// Index is the interface index in the tap's namespace.
func (t *Tap) Index() int { return t.index }

// MultiQueue reports whether the device is multi_queue.
func (t *Tap) MultiQueue() bool { return t.flags&unix.IFF_MULTI_QUEUE != 0 }

// VnetHdrSize is the virtio-net header length in front of every frame, 0
// without IFF_VNET_HDR. It is the device's setting when the Tap was made;
// whoever else holds the device (QEMU) may change it later.
func (t *Tap) VnetHdrSize() int { return t.vnetHdr }

// Offloads returns the offloads in force when the Tap was made: what
// Create set, or what Open read through ethtool (error if it could not).
func (t *Tap) Offloads() (Offload, error) { return t.offloads, t.offloadErr }

// SetOffloads sets the offloads of the whole device (every queue's
// readers get frames accordingly) and returns what is in force: with
// bestEffort, the largest part of want the kernel supports, else exactly
// want or an error. The Tap needs a vnet header and an attached queue.
func (t *Tap) SetOffloads(want Offload, bestEffort bool) (Offload, error) {
	if len(t.queues) == 0 {
		return 0, fmt.Errorf("tap %s: set offloads: no queue attached", t.name)
	}
	rc, err := t.queues[0].File().SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("tap %s: set offloads: %w", t.name, err)
	}
	var got Offload
	var serr error
	if err := rc.Control(func(fd uintptr) { got, serr = setOffloads(int(fd), want, bestEffort) }); err != nil {
		return 0, fmt.Errorf("tap %s: set offloads: %w", t.name, err)
	}
	if serr != nil {
		return 0, fmt.Errorf("tap %s: %w", t.name, serr)
	}
	t.offloads, t.offloadErr = got, nil
	return got, nil
}

// Queues returns the queues in attach order.
func (t *Tap) Queues() []*Queue {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]*Queue(nil), t.queues...)
}

// Files returns one *os.File per queue, for exec.Cmd.ExtraFiles. Passing
// them to os/exec puts the shared file description into blocking mode
// (os.File.Fd does); QEMU sets it non-blocking again, but do not read the
// same queue from Go afterwards.
func (t *Tap) Files() []*os.File {
	qs := t.Queues()
	fs := make([]*os.File, len(qs))
	for i, q := range qs {
		fs[i] = q.f
	}
	return fs
}

// Close closes every queue. A tap that is not persistent disappears when
// its last file (here or in QEMU) is closed.
func (t *Tap) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	var errs []error
	for _, q := range t.queues {
		if err := q.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			errs = append(errs, err)
		}
	}
	t.mu.Unlock()
	// Without mu: a namespace call under way (inNS) may need it to end.
	t.nsMu.Lock()
	t.nsClosed = true
	t.ns.Close()
	t.nsMu.Unlock()
	t.mu.Lock()
	return errors.Join(errs...)
}

// Create makes a new tap in the calling thread's namespace and configures
// it. It fails if any interface of that name exists. If anything fails
// after the device was made, the device is removed again.
func Create(cfg Config) (*Tap, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	ns, err := vns.Get()
	if err != nil {
		return nil, fmt.Errorf("tap %s: current network namespace: %w", cfg.Name, err)
	}
	t := &Tap{name: cfg.Name, ns: ns, flags: unix.IFF_TAP | unix.IFF_NO_PI, vnetHdr: cfg.VnetHdrSize, qdisc: cfg.Qdisc}
	if cfg.Queues > 1 {
		t.flags |= unix.IFF_MULTI_QUEUE
	}
	if cfg.VnetHdrSize > 0 {
		t.flags |= unix.IFF_VNET_HDR
	}
	if cfg.NAPI {
		t.flags |= unix.IFF_NAPI
	}
	if cfg.NAPIFrags {
		t.flags |= unix.IFF_NAPI_FRAGS
	}
	label := cfg.Name
	if label == "" {
		label = "(new)"
	}

	// IFF_TUN_EXCL makes "create, never attach" atomic: the kernel says
	// EBUSY when the name exists, so vmnet never configures (or, on
	// failure, deletes) a device someone else made.
	fd, name, err := openQueue(cfg.Name, t.flags|unix.IFF_TUN_EXCL)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("tap %s: create: %w", label, explain(err, opOf(err, "create")))
	}
	t.name = name
	if err := t.addFD(fd); err != nil {
		t.Close()
		return nil, err
	}
	fail := func(err error) (*Tap, error) {
		// Closing the last queue of a non-persistent tap unregisters it;
		// persist is set last, so nothing survives.
		t.Close()
		return nil, err
	}
	if cfg.VnetHdrSize > 0 {
		if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, cfg.VnetHdrSize); err != nil {
			return fail(fmt.Errorf("tap %s: set vnet header size %d: %w", name, cfg.VnetHdrSize, err))
		}
	}
	if cfg.Offloads != 0 {
		got, err := setOffloads(fd, cfg.Offloads, cfg.BestEffort)
		if err != nil {
			return fail(fmt.Errorf("tap %s: %w", name, err))
		}
		t.offloads = got
	}
	if cfg.Owner >= 0 {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, cfg.Owner); err != nil {
			return fail(fmt.Errorf("tap %s: set owner uid %d: %w", name, cfg.Owner, explain(err, "")))
		}
	}
	if cfg.Group >= 0 {
		if err := unix.IoctlSetInt(fd, unix.TUNSETGROUP, cfg.Group); err != nil {
			return fail(fmt.Errorf("tap %s: set group gid %d: %w", name, cfg.Group, explain(err, "")))
		}
	}
	for i := 1; i < cfg.Queues; i++ {
		fd, _, err := openQueue(name, t.flags)
		if err != nil {
			return fail(fmt.Errorf("tap %s: attach queue %d: %w", name, i, explain(err, opOf(err, "attach"))))
		}
		if err := t.addFD(fd); err != nil {
			return fail(err)
		}
	}
	if cfg.Carrier != nil {
		on := 0
		if *cfg.Carrier {
			on = 1
		}
		if err := unix.IoctlSetPointerInt(fd, unix.TUNSETCARRIER, on); err != nil {
			return fail(fmt.Errorf("tap %s: set carrier %v: %w", name, *cfg.Carrier, err))
		}
	}

	// One rtnetlink socket for every request below, opened on this
	// locked thread and so in its namespace.
	nfd, err := nlbatch.Socket()
	if err != nil {
		return fail(fmt.Errorf("tap %s: open rtnetlink socket: %w", name, err))
	}
	defer unix.Close(nfd)
	if t.index, err = nlbatch.Ifindex(nfd, name); err != nil {
		return fail(fmt.Errorf("tap %s: look up new link: %w", name, err))
	}
	impaired := cfg.Impairment != (Impairment{})
	var b nlbatch.Batch
	var names [8]step
	if err := t.apply(nfd, &b, linkSteps(&b, names[:0], t.index, cfg, cfg.Up && !impaired)); err != nil {
		return fail(err)
	}
	if impaired {
		if err := t.impair(cfg); err != nil {
			return fail(err)
		}
		if cfg.Up {
			if err := t.apply(nfd, &b, setUp(&b, names[:0], t.index)); err != nil {
				return fail(err)
			}
		}
	}
	if cfg.GROFlushTimeout > 0 {
		if err := setGROFlushTimeout(name, cfg.GROFlushTimeout); err != nil {
			return fail(err)
		}
	}
	if cfg.NAPIThreaded {
		// After the queues are attached: the kernel refuses the setting
		// on a device without NAPI instances, and a queue attached later
		// gets its thread too.
		if err := setNAPIThreaded(name, true); err != nil {
			return fail(err)
		}
	}
	if cfg.Persist {
		if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
			return fail(fmt.Errorf("tap %s: set persist: %w", name, explain(err, "")))
		}
	}
	return t, nil
}

// apply sends the batch of steps to the kernel in one system call and
// names the first one it refused. The kernel runs the later steps of a
// batch even after one failed; Create deletes the tap on any error, so
// that does no harm here.
func (t *Tap) apply(nfd int, b *nlbatch.Batch, steps []step) error {
	i, err := b.Exec(nfd, nil)
	switch {
	case err == nil:
		return nil
	case i < 0:
		return fmt.Errorf("tap %s: rtnetlink: %w", t.name, err)
	}
	return fmt.Errorf("tap %s: %s: %w", t.name, steps[i].what(), err)
}

// impair puts cfg's impairment on the tap, after its MTU is set: tbf's
// default burst is one frame of it.
func (t *Tap) impair(cfg Config) error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("tap %s: open rtnetlink socket: %w", t.name, err)
	}
	defer h.Close()
	link, err := h.LinkByIndex(t.index)
	if err != nil {
		return fmt.Errorf("tap %s: look up: %w", t.name, err)
	}
	return setImpairment(h, link, cfg.Impairment, cfg.Qdisc)
}

// Open attaches queues to an existing tap in the calling thread's
// namespace. It keeps the device's multi_queue and vnet_hdr settings as
// rtnetlink reports them (attaching with other flags would change them for
// every holder); asking for more than one queue of a single-queue tap is
// refused by the kernel with EINVAL.
func Open(name string, queues int) (*Tap, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	if err := checkQueues(name, queues); err != nil {
		return nil, err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	info, err := Describe(name)
	if err != nil {
		return nil, err
	}
	switch {
	case info.Type != "tap":
		return nil, fmt.Errorf("tap %s: %s: %w", name, notATap(info.Type), unix.EINVAL)
	case info.PI:
		return nil, fmt.Errorf("tap %s: has packet information headers on (pi); vmnet needs them off (recreate it with `ip tuntap add dev %s mode tap` without pi): %w", name, name, unix.EINVAL)
	}
	ns, err := vns.Get()
	if err != nil {
		return nil, fmt.Errorf("tap %s: current network namespace: %w", name, err)
	}
	t := &Tap{name: name, index: info.Index, ns: ns, flags: unix.IFF_TAP | unix.IFF_NO_PI}
	if info.MultiQueue || queues > 1 {
		t.flags |= unix.IFF_MULTI_QUEUE
	}
	if info.VnetHdr {
		t.flags |= unix.IFF_VNET_HDR
	}
	for i := 0; i < queues; i++ {
		fd, _, err := openQueue(name, t.flags)
		if err != nil {
			t.Close()
			if errors.Is(err, unix.EINVAL) && !info.MultiQueue && queues > 1 {
				return nil, fmt.Errorf("tap %s: attach queue %d: %w", name, i, &hinted{err, fmt.Sprintf("the tap is single-queue (multi_queue off) and cannot take %d queues: open 1, or recreate it with multi_queue", queues)})
			}
			return nil, fmt.Errorf("tap %s: attach queue %d: %w", name, i, explain(err, opOf(err, "attach")))
		}
		if err := t.addFD(fd); err != nil {
			t.Close()
			return nil, err
		}
		if i == 0 {
			if err := t.checkSame(); err != nil {
				t.Close()
				return nil, err
			}
		}
	}
	if info.VnetHdr {
		n, err := unix.IoctlGetInt(t.queues[0].fd, unix.TUNGETVNETHDRSZ)
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("tap %s: get vnet header size: %w", name, err)
		}
		t.vnetHdr = n
		for _, q := range t.queues {
			q.hdr.Store(int32(n))
		}
	}
	t.offloads, t.offloadErr = readOffloads(name)
	return t, nil
}

// AddQueue attaches one more queue to a multi_queue tap, in the namespace
// the Tap was made in.
func (t *Tap) AddQueue() (*Queue, error) {
	t.mu.Lock()
	n, closed := len(t.queues), t.closed
	t.mu.Unlock()
	switch {
	case closed:
		return nil, fmt.Errorf("tap %s: add queue: %w", t.name, os.ErrClosed)
	case !t.MultiQueue():
		return nil, fmt.Errorf("tap %s: add queue: the tap is single-queue; recreate it with two or more queues (multi_queue): %w", t.name, unix.EINVAL)
	case n >= MaxQueues:
		return nil, fmt.Errorf("tap %s: add queue %d: already %d queues, the kernel's limit: %w", t.name, n, MaxQueues, unix.EINVAL)
	}
	var q *Queue
	err := t.inNS(func() error {
		fd, _, err := openQueue(t.name, t.flags)
		if err != nil {
			return fmt.Errorf("tap %s: attach queue %d: %w", t.name, n, explain(err, opOf(err, "attach")))
		}
		if err := t.addFD(fd); err != nil {
			return err
		}
		t.mu.Lock()
		q = t.queues[len(t.queues)-1]
		t.mu.Unlock()
		if err := t.checkSame(); err != nil {
			q.Close()
			t.mu.Lock()
			t.queues = t.queues[:len(t.queues)-1]
			t.mu.Unlock()
			q = nil
			return err
		}
		return nil
	})
	return q, err
}

// checkSame guards against a race TUNSETIFF cannot: if the tap was
// deleted after vmnet looked at it, attaching by name silently creates a
// new device. Then the interface index differs, and closing our queue
// removes the accidental device again. It asks for the name's index
// alone (SIOCGIFINDEX), not for the whole link: AddQueue runs it once per
// queue.
func (t *Tap) checkSame() error {
	if fd, err := nlbatch.Socket(); err == nil {
		index, err := nlbatch.Ifindex(fd, t.name)
		unix.Close(fd)
		if err == nil && index == t.index {
			return nil
		}
	}
	return fmt.Errorf("tap %s: vanished while attaching (deleted by someone else; index was %d): %w", t.name, t.index, unix.ENODEV)
}

// Describe reads the tap's current state from rtnetlink, in the namespace
// the Tap was made in.
func (t *Tap) Describe() (Info, error) {
	var info Info
	err := t.inNS(func() error {
		var err error
		info, err = Describe(t.name)
		return err
	})
	return info, err
}

// inNS runs fn on a locked thread in the tap's namespace; it skips setns
// (which needs CAP_SYS_ADMIN) when the thread is there already.
//
// After Close it runs nothing and fails with os.ErrClosed: the
// namespace handle is closed, and a device of the tap's name in
// whatever namespace its fd number names now must not be touched.
func (t *Tap) inNS(fn func() error) error {
	t.nsMu.RLock()
	defer t.nsMu.RUnlock()
	if t.nsClosed {
		return fmt.Errorf("tap %s: %w", t.name, os.ErrClosed)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cur, err := vns.Get()
	if err == nil {
		same := cur.Equal(t.ns)
		cur.Close()
		if same {
			return fn()
		}
	}
	return netns.Do(t.ns, fn)
}

func (t *Tap) addFD(fd int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		unix.Close(fd)
		return fmt.Errorf("tap %s: add queue: %w", t.name, os.ErrClosed)
	}
	q := newQueue(t, len(t.queues), fd)
	if q == nil {
		unix.Close(fd)
		return fmt.Errorf("tap %s: queue %d: fd %d is not pollable", t.name, len(t.queues), fd)
	}
	t.queues = append(t.queues, q)
	return nil
}

// sysErr remembers which step of opening a queue failed, so explain can
// tell a missing /dev/net/tun from a refused TUNSETIFF.
type sysErr struct {
	op  string
	err error
}

func (e *sysErr) Error() string { return e.op + ": " + e.err.Error() }
func (e *sysErr) Unwrap() error { return e.err }

func opOf(err error, def string) string {
	var se *sysErr
	if errors.As(err, &se) && se.op != "TUNSETIFF" {
		return "open"
	}
	return def
}

// openQueue opens /dev/net/tun non-blocking and binds it to name.
func openQueue(name string, flags uint16) (int, string, error) {
	fd, err := unix.Open(devTun, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, "", &sysErr{"open " + devTun, err}
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, "", &sysErr{"TUNSETIFF", err}
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, "", &sysErr{"TUNSETIFF", err}
	}
	return fd, ifr.Name(), nil
}

// offloadGroups are the sets TUNSETOFFLOAD accepts on their own; trying
// each one in turn tells what the kernel supports.
var offloadGroups = []Offload{
	OffloadCsum,
	OffloadCsum | OffloadTSO4,
	OffloadCsum | OffloadTSO6,
	OffloadCsum | OffloadTSO4 | OffloadTSO6 | OffloadTSOECN,
	OffloadCsum | OffloadUFO,
	OffloadCsum | OffloadUSO,
}

// probeOffloads tries each group on fd's device and leaves it with none.
func probeOffloads(fd int) (Offload, error) {
	var ok Offload
	for _, g := range offloadGroups {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, int(g)); err == nil {
			ok |= g
		} else if !errors.Is(err, unix.EINVAL) {
			return ok, fmt.Errorf("probe offloads %s: %w", g, err)
		}
	}
	return ok, unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, 0)
}

func setOffloads(fd int, want Offload, best bool) (Offload, error) {
	err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, int(want))
	if err == nil {
		return want, nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return 0, fmt.Errorf("set offloads %s: %w", want, err)
	}
	supported, perr := probeOffloads(fd)
	if perr != nil {
		return 0, fmt.Errorf("set offloads %s: %w (then %v)", want, err, perr)
	}
	if !best {
		return 0, fmt.Errorf("set offloads %s: this kernel does not support %s (it supports %s; ask for best effort to get the largest supported set): %w",
			want, want&^supported, supported, err)
	}
	got := want & supported
	if got&(OffloadTSO4|OffloadTSO6) == 0 {
		got &^= OffloadTSOECN
	}
	if got&OffloadCsum == 0 {
		got = 0
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, int(got)); err != nil {
		return 0, fmt.Errorf("set offloads %s (best effort for %s): %w", got, want, err)
	}
	return got, nil
}
