package link

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/tap"
	"github.com/vmnet/vmnet/vmconfig"
	"github.com/vmnet/vmnet/vnethdr"
)

// Headroom is the space kept in front of every frame in the link's
// buffers: room for the largest virtio-net header vmnet handles
// (MaxVnetHdr) and for the encrypted tunnel's header in front of its
// 10-byte vnet header.
const Headroom = 64

// MaxVnetHdr is the largest vnet header size of a tap that a link handles.
// The kernel accepts any size from 10 up (TUNSETVNETHDRSZ); QEMU uses 10,
// 12 and 20 (hash reporting), and the virtio specification's largest
// header today is 24 bytes. A tap with a larger size is refused when the
// endpoint opens, and while a link runs, frames of a tap whose size was
// changed to a larger one are dropped (counted as vnet_hdr_size).
const MaxVnetHdr = Headroom

// Tailroom is the space kept behind the longest frame in the link's
// buffers: room for the encrypted tunnel's authentication tag.
const Tailroom = 64

// MaxFrame is the largest frame (without vnet header) an endpoint reads:
// a 64 KiB GSO super-frame plus Ethernet header and two VLAN tags.
const MaxFrame = 65536 + 14 + 8

// MaxUDPFrame is the largest frame one tunnel datagram carries: the IPv4
// UDP payload limit minus the 10-byte vnet header.
const MaxUDPFrame = 65507 - vnethdr.HdrLen

// ethOverhead is what a frame may add to the interface MTU: the Ethernet
// header and one VLAN tag, the same slack the kernel's is_skb_forwardable
// allows.
const ethOverhead = 14 + 4

// OpenOptions tune how endpoints are opened.
type OpenOptions struct {
	// PacketSockets is the number of AF_PACKET sockets (one goroutine
	// each) in the fanout group of a packet endpoint; 0 means one per CPU,
	// at most 4.
	PacketSockets int
	// SocketBuffer is SO_SNDBUF/SO_RCVBUF for packet and UDP sockets in
	// bytes; 0 means 4 MiB. Small buffers drop datagrams at high rates.
	SocketBuffer int
}

// Info describes an open endpoint (for `vmnet status` and logs).
type Info struct {
	Endpoint string `json:"endpoint"`
	Kind     string `json:"kind"`
	Queues   int    `json:"queues"`
	VnetHdr  int    `json:"vnet_hdr"`  // header bytes in front of each frame, 0 = none
	GSO      bool   `json:"gso"`       // takes GSO super-frames as they are
	MaxFrame int    `json:"max_frame"` // longest frame without GSO it takes
	Created  bool   `json:"created,omitempty"`
	// Encrypted is a udp tunnel with key=FILE: authenticated and
	// encrypted. A udp tunnel without it is unauthenticated cleartext.
	Encrypted bool `json:"encrypted,omitempty"`
}

// queueIO is one queue (tap fd or socket) of an endpoint. read and write
// take buffers whose bytes from off on are the vnet header (if any) and
// frame. One reader and any number of writers may use a queue at once.
type queueIO interface {
	// read fills sizes[i] with the byte count of bufs[i][off:] (more than
	// the buffer holds when the frame was truncated) and returns how many
	// frames it read. It waits for the first one.
	read(bufs [][]byte, off int, sizes []int) (int, error)
	// write sends bufs[i][off:] each as one frame. It returns how many went
	// out; when err is set it concerns bufs[n].
	write(bufs [][]byte, off int) (int, error)
	setDeadline(t time.Time) error
}

// Endpoint is one open end of a link. Open makes it; a Link uses it; Close
// releases it (and removes a tap that Open created).
type Endpoint struct {
	spec     string
	kind     vmconfig.EndpointKind
	hdr      vnethdr.Format // Size 0: no vnet header
	maxFrame int            // longest non-GSO frame
	gso      bool           // takes TCP and USO super-frames
	gsoMax   int            // longest super-frame
	// uso: the kernel behind the endpoint is known to take UDP_L4 (USO)
	// super-frames (a tap whose offloads include USO, so Linux >= 6.2);
	// only then does GRO merge UDP datagrams for it.
	uso      bool
	segCheck bool // segments of passed-through GSO frames must fit maxFrame
	created  bool
	sealed   bool        // udp with key=FILE
	tap      *tap.Tap    // the device of a tap endpoint; nil for other kinds
	vxlan    *vxlanInfo  // the device of a vxlan endpoint; nil for other kinds
	napi     *napiSwitch // a tap the link made with NAPI; nil otherwise
	queues   []queueIO

	// For the kernel data path (kernel.go): the interface and its
	// namespace (ifindex 0: not a local interface), and for a tap
	// whether vmnet holds every queue.
	ifname    string
	ifindex   int
	ns        netns.Handle
	nsID      netns.ID
	exclusive bool

	closeOnce sync.Once
	closeFn   func() error
	closeErr  error
}

// String is the endpoint as the user wrote it (normalised).
func (e *Endpoint) String() string { return e.spec }

// Info describes the endpoint.
func (e *Endpoint) Info() Info {
	return Info{Endpoint: e.spec, Kind: string(e.kind), Queues: len(e.queues), VnetHdr: e.hdr.Size,
		GSO: e.gso, MaxFrame: e.maxFrame, Created: e.created, Encrypted: e.sealed}
}

// packetSockets reports whether the endpoint reads its interface with
// AF_PACKET sockets (packet:, and vxlan: on its own device).
func (e *Endpoint) packetSockets() bool {
	return e.kind == vmconfig.KindPacket || e.kind == vmconfig.KindVXLAN
}

// Close releases the endpoint's files. A tap or vxlan device that Open
// created disappears.
func (e *Endpoint) Close() error {
	e.closeOnce.Do(func() {
		if e.closeFn != nil {
			e.closeErr = e.closeFn()
		}
		if e.ifindex != 0 {
			e.ns.Close()
		}
	})
	return e.closeErr
}

func (e *Endpoint) setDeadline(t time.Time) {
	for _, q := range e.queues {
		q.setDeadline(t)
	}
}

// setReadDeadline ends reads (only) at t: the pumps drain their queues
// before a switch to the kernel, and a write in flight then must not
// fail. Queues without a read deadline of their own (tunnels, which a
// kernel-mode link never has) get both.
func (e *Endpoint) setReadDeadline(t time.Time) {
	for _, q := range e.queues {
		switch q := q.(type) {
		case tapQueue:
			q.q.SetReadDeadline(t)
		case *mmsgConn:
			if q.readDeadline != nil {
				q.readDeadline(t)
			} else {
				q.setDeadline(t)
			}
		default:
			q.setDeadline(t)
		}
	}
}

// Open opens (or, for a tap that does not exist, creates) the endpoint ep
// in the calling thread's network namespace, or in ep.NetNS when set. A
// vm: endpoint must be resolved to a tap by the caller first. Errors name
// the endpoint; on error nothing stays open and a tap Open made is gone.
func Open(ctx context.Context, ep vmconfig.Endpoint, opts OpenOptions) (*Endpoint, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("link endpoint %s: %w", ep, err)
	}
	if opts.PacketSockets <= 0 {
		opts.PacketSockets = min(runtime.NumCPU(), 4)
	}
	if opts.SocketBuffer <= 0 {
		opts.SocketBuffer = 4 << 20
	}
	var e *Endpoint
	var err error
	open := func() error {
		switch ep.Kind {
		case vmconfig.KindTap:
			e, err = openTap(ep)
		case vmconfig.KindPacket:
			e, err = openPacket(ep, opts)
		case vmconfig.KindUDP:
			if ep.NetNS != "" {
				return errors.New("udp endpoints take no netns")
			}
			e, err = openUDP(ep, opts)
		case vmconfig.KindVXLAN:
			e, err = openVXLAN(ep, opts)
		case vmconfig.KindVM:
			return errors.New("vm endpoints are resolved to the VM's tap by the lab; a bare link cannot open them")
		default:
			return fmt.Errorf("unknown endpoint kind %q (want tap, packet, udp or vxlan)", ep.Kind)
		}
		return err
	}
	if ep.NetNS != "" && ep.Kind != vmconfig.KindUDP {
		err = netns.DoNamed(ep.NetNS, open)
	} else {
		runtime.LockOSThread()
		err = open()
		runtime.UnlockOSThread()
	}
	if err != nil {
		return nil, fmt.Errorf("link endpoint %s: %w", ep, err)
	}
	e.spec = ep.String()
	e.kind = ep.Kind
	return e, nil
}

// openTap attaches to the tap ep.Name if it exists (keeping its flags) or
// creates it, with vnet_hdr and every offload the kernel has unless
// vnet_hdr=off.
func openTap(ep vmconfig.Endpoint) (*Endpoint, error) {
	queues := max(ep.Queues, 1)
	var t *tap.Tap
	info, derr := tap.Describe(ep.Name)
	created, alone := false, false
	switch {
	case derr == nil:
		switch {
		case ep.VnetHdr == vmconfig.On && !info.VnetHdr:
			return nil, fmt.Errorf("tap %s exists without vnet_hdr and vmnet does not change an existing device's flags: drop vnet_hdr=on, or delete the tap and let vmnet create it", ep.Name)
		case ep.VnetHdr == vmconfig.Off && info.VnetHdr:
			return nil, fmt.Errorf("tap %s exists with vnet_hdr and vmnet does not change an existing device's flags: drop vnet_hdr=off, or delete the tap and let vmnet create it", ep.Name)
		}
		var err error
		if t, err = tap.Open(ep.Name, queues); err != nil {
			return nil, err
		}
		// Offloads decide what the kernel hands to the tap's readers. When
		// vmnet is the only reader (a single-queue tap it could attach to
		// at all, or a multi-queue tap nobody had attached), it may ask for
		// GSO frames; with QEMU on the tap they are the guest's choice.
		alone = !info.MultiQueue || info.NumQueues == 0
		if t.VnetHdrSize() > 0 && ep.VnetHdr != vmconfig.Off && alone {
			// The largest set the kernel takes: csum, TSO (with ECN), and
			// USO where the kernel has it (6.2+).
			all := tap.OffloadCsum | tap.OffloadTSO4 | tap.OffloadTSO6 | tap.OffloadTSOECN | tap.OffloadUSO
			if _, err := t.SetOffloads(all, true); err != nil {
				t.Close()
				return nil, err
			}
		}
	case errors.Is(derr, unix.ENODEV):
		cfg := tap.NewConfig(ep.Name, queues)
		if ep.VnetHdr != vmconfig.Off {
			cfg.VnetHdrSize = vnethdr.HdrLen
			cfg.Offloads = tap.OffloadCsum | tap.OffloadTSO4 | tap.OffloadTSO6 | tap.OffloadTSOECN | tap.OffloadUSO
			cfg.BestEffort = true
		}
		cfg.Up = true
		if ep.VnetHdr == vmconfig.Off {
			// The link writes this tap frame by frame: let the kernel's
			// GRO merge them (see napiGROFlush); the pumps writing into
			// it turn threaded NAPI on while they write in bulk (see
			// napiSwitch).
			cfg.NAPI, cfg.GROFlushTimeout = true, napiGROFlush
		}
		var err error
		if t, err = tap.Create(cfg); err != nil {
			return nil, err
		}
		created, alone = true, true
	case errors.Is(derr, unix.EINVAL):
		return nil, fmt.Errorf("%w (to use an interface that is not a tap, write packet:%s)", derr, ep.Name)
	default:
		return nil, derr
	}
	if n := t.VnetHdrSize(); n > MaxVnetHdr {
		t.Close()
		return nil, fmt.Errorf("tap %s has a vnet header of %d bytes, more than the %d a link handles (QEMU uses 10, 12 or 20): set a smaller size with TUNSETVNETHDRSZ, or let vmnet create the tap", ep.Name, n, MaxVnetHdr)
	}
	// Read the MTU now: a created tap has the default, an existing one
	// whatever its owner set.
	info, err := tap.Describe(ep.Name)
	if err != nil {
		t.Close()
		return nil, err
	}
	off, _ := t.Offloads()
	e := &Endpoint{
		hdr:      vnethdr.Format{Size: t.VnetHdrSize()},
		uso:      t.VnetHdrSize() > 0 && off&tap.OffloadUSO == tap.OffloadUSO,
		maxFrame: info.MTU + ethOverhead,
		gso:      t.VnetHdrSize() > 0,
		gsoMax:   MaxFrame,
		segCheck: true,
		created:  created,
		tap:      t,
		closeFn:  t.Close,
		// Nobody else reads the tap: vmnet made it, or no one had
		// attached a queue when vmnet did (a single-queue tap takes one
		// reader).
		exclusive: alone,
	}
	if created && ep.VnetHdr == vmconfig.Off {
		e.napi = &napiSwitch{t: t}
	}
	for _, q := range t.Queues() {
		e.queues = append(e.queues, tapQueue{q})
	}
	if err := localOf(e, ep.Name, info.Index); err != nil {
		t.Close()
		return nil, err
	}
	return e, nil
}

// napiGROFlush is how long the kernel's GRO may hold frames the link
// wrote one by one into a tap it created without vnet_hdr (the tap has
// IFF_NAPI; see tap/napi.go). The bridge and the receiving stack then see
// one skb per up to 64 KB of a TCP flow instead of one per frame. Measured
// with tests/bench-link.sh, segment case against the old plain tap in the
// same run: 20 µs 1.0-1.3x, 50 µs 1.0-2.1x, 200 µs 1.4-1.7x, 1 ms
// 1.0-1.4x. A segment with PSH (the end of a sender's write) and anything
// GRO cannot merge pass at once, so only the middle of a bulk transfer
// waits; the worst case is one idle flow's tail waiting this long.
const napiGROFlush = 200 * time.Microsecond

// napiSwitch runs the NAPI polls of a tap the link created without
// vnet_hdr in a kernel thread (tap.SetNAPIThreaded) while the link writes
// into it in bulk, and inside the link's own write() otherwise.
//
// Inline, every write() of a 1514-byte frame also runs a NAPI poll, GRO,
// and when GRO lets go the bridge and the receiving TCP stack: about half
// of the link's thread. Threaded, a write only queues the frame and wakes
// the thread if it sleeps, and the thread takes the frames in batches, on
// the other CPU when one is free. bench-link's segment case (the link
// writes a sender's data), against inline polls in the same runs: a
// median of 1.21x over thirteen runs (0.72-1.50), at no more CPU per GB
// counting the thread, and less on a loaded machine (see README).
//
// But a tap that only takes a trickle (the ACKs of a flow going the
// other way: bench-link's gro case) then pays a thread wake-up for each
// frame and hands it over later: always threaded, the gro case ran at
// about 0.8x of this switch. So a pump turns the thread on when one of
// its writes is bulk (at least napiBulk bytes from one read), and off
// when no write was for napiIdle.
type napiSwitch struct {
	t        *tap.Tap
	on       atomic.Bool
	busy     atomic.Bool  // a change is under way
	failed   atomic.Bool  // the kernel refused: stay as it is
	lastBulk atomic.Int64 // time.Now().UnixNano() of the latest bulk write
}

// napiBulk is the least a pump writes after one read for the write to be
// bulk: 32 KB is at least 21 full frames (a segmented super-frame gives
// 45, a batch of tunnel datagrams up to 32), while a batch of ACKs read
// at once stays far below (32 pure ACKs: about 2 KB).
const napiBulk = 32 << 10

// napiIdle is how long a tap stays threaded after its last bulk write.
const napiIdle = time.Second

// wrote notes a write of n bytes after one read and turns the thread on
// or off when that is due. The change runs in a goroutine of its own (a
// sysfs write takes about a millisecond); logf hears a refusal once, and
// the tap then stays as it is.
func (s *napiSwitch) wrote(n int, logf func(string, ...any)) {
	if s.failed.Load() {
		return
	}
	var want bool
	switch on := s.on.Load(); {
	case n >= napiBulk:
		s.lastBulk.Store(time.Now().UnixNano())
		if on {
			return
		}
		want = true
	case !on:
		return
	case time.Now().UnixNano()-s.lastBulk.Load() < int64(napiIdle):
		return
	}
	if !s.busy.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer s.busy.Store(false)
		err := s.t.SetNAPIThreaded(want)
		switch {
		case errors.Is(err, os.ErrClosed):
			// The link is closing.
			s.failed.Store(true)
			return
		case err != nil:
			s.failed.Store(true)
			logf("link: %v (frames still pass, with the kernel's work for them inside the link's writes)", err)
			return
		}
		s.on.Store(want)
	}()
}

// sweeper is a queue that can be emptied after its read deadline has
// passed (the queues of ends with a kernel data path: taps and AF_PACKET
// sockets). Go's poller fails a read whose deadline has passed before
// trying it, so a pump kept off the CPU past its drain's deadline would
// otherwise leave frames in the queue while the kernel forwards.
type sweeper interface {
	// readNow is read without waiting and whatever the deadline; it
	// returns 0 frames and no error when none is waiting.
	readNow(bufs [][]byte, off int, sizes []int) (int, error)
}

// tapQueue adapts a tap.Queue.
type tapQueue struct{ q *tap.Queue }

// hdrSizer is a queue whose vnet header size can change under the link
// (a tap another program holds): the pump asks before each batch.
type hdrSizer interface {
	vnetHdrSize() (int, error)
}

func (t tapQueue) vnetHdrSize() (int, error) { return t.q.RefreshVnetHdrSize() }

func (t tapQueue) read(bufs [][]byte, off int, sizes []int) (int, error) {
	return t.q.ReadBatch(bufs, sizes, off)
}
func (t tapQueue) readNow(bufs [][]byte, off int, sizes []int) (int, error) {
	return t.q.ReadBatchNow(bufs, sizes, off)
}
func (t tapQueue) write(bufs [][]byte, off int) (int, error) { return t.q.WriteBatch(bufs, off) }
func (t tapQueue) setDeadline(d time.Time) error             { return t.q.SetDeadline(d) }

// fatal reports whether an I/O error means the endpoint is gone (rather
// than one frame being refused).
func fatal(err error) bool {
	return errors.Is(err, tap.ErrDeviceGone) || errors.Is(err, os.ErrClosed) ||
		errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, unix.EBADF) ||
		errors.Is(err, unix.EBADFD) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENXIO)
}
