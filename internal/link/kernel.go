package link

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/vmconfig"
)

// The kernel data path. Between two local interfaces in one namespace (a
// tap whose every queue vmnet holds, an interface read through AF_PACKET)
// a link that needs nothing from userspace (no capture, no impairments)
// does not copy frames: it installs one tc redirect each way and lets the
// kernel forward, as containerlab and kata-containers ("tcfilter") join
// two local interfaces. Userspace costs two 64 KB copies and a thread
// switch per super-frame; the redirect costs neither.
//
// Where frames leave an endpoint and how they enter the other:
//   - a tap: the kernel transmits to the tap's fd what the link should
//     carry, so the frames are taken at the tap's egress (a clsact egress
//     filter), and a frame for the tap enters as if its fd had written it
//     (mirred ingress redirect);
//   - an AF_PACKET endpoint: the link carries a copy of what arrives on
//     the interface (clsact ingress filter, mirred mirror: the frame also
//     goes on to the host, as with a packet socket) and sends out of it
//     (mirred egress);
//   - a vxlan endpoint (vxlan.go): what the device decapsulates is taken
//     at its ingress (a redirect: the device is the link's own), and a
//     frame for it leaves through it (mirred egress: encapsulated).
//
// The filter is u32 matching everything (cls_matchall would do, but not
// every kernel has it: this host's lacks it; one code path for all), with
// vmnet's own priority (kernelPrio), so it never joins or replaces a
// filter of someone else's. A clsact qdisc is created only where there is
// none, and removed only if vmnet created it and nothing else hangs on it.
//
// AF_PACKET sockets bound to ETH_P_ALL get every received frame before tc
// ingress runs, so while the kernel forwards, the link's packet sockets
// carry a filter that drops everything before the kernel clones a frame
// for them (mute).
//
// A link switches to userspace while anything needs it (impairments set
// at run time) and back when that is gone; see Link.Run for the order of
// steps that keeps a switch from delivering a frame twice.

// Datapath values: Options.Datapath takes DatapathAuto (or "") and
// DatapathUserspace; Stats.Datapath says DatapathKernel or
// DatapathUserspace.
const (
	DatapathAuto      = vmconfig.DatapathAuto
	DatapathUserspace = vmconfig.DatapathUserspace
	DatapathKernel    = "kernel"
)

// kernelPrio is the tc priority of vmnet's redirect filters: its own, so
// that deleting it (a whole priority) deletes nothing of anyone else's.
const kernelPrio = 0x766e // "vn"

// kernelOptions names what the kernel data path needs, for the one log
// line of a link that falls back to userspace.
const (
	clsactOption   = "CONFIG_NET_SCH_INGRESS (the clsact qdisc, module sch_ingress)"
	redirectOption = "CONFIG_NET_CLS_U32 and CONFIG_NET_ACT_MIRRED with CONFIG_NET_CLS_ACT (modules cls_u32, act_mirred)"
)

// kernelMissing is a kernel without what the kernel data path needs.
type kernelMissing struct {
	iface, what, option string
	err                 error
}

func (e *kernelMissing) Error() string {
	return fmt.Sprintf("interface %s: add %s: %v (this kernel lacks %s)", e.iface, e.what, e.err, e.option)
}

func (e *kernelMissing) Unwrap() error { return e.err }

// missingOr explains the errors the kernel gives for a qdisc, classifier
// or action kind it does not have.
func missingOr(iface, what, option string, err error) error {
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP) {
		return &kernelMissing{iface: iface, what: what, option: option, err: err}
	}
	return fmt.Errorf("interface %s: add %s: %w", iface, what, err)
}

// kernelEnd is one endpoint as the kernel data path sees it.
type kernelEnd struct {
	e     *Endpoint
	name  string
	index int
	// hook is where frames leave this end for the link (egress of a tap,
	// ingress of an AF_PACKET interface); redir how frames enter it.
	hook  uint32
	redir netlink.MirredAct

	created bool // vmnet added the clsact qdisc
	// last is the redirect filter's action counters as last read (the
	// kernel's packet count is 32 bits and wraps).
	lastPackets uint32
	lastBytes   uint64
	lastDrops   uint32
}

// kernelPath installs and removes a link's redirects; one per link that
// can run in the kernel. Its methods are safe from any goroutine.
type kernelPath struct {
	mu   sync.Mutex
	h    *netlink.Handle // in the endpoints' namespace
	ends [2]*kernelEnd
	c    [2]*counters // per direction: frames leaving ends[i]
	// installed: the redirects are in, so the kernel carries the frames
	// (written under mu; read by Link.inKernel without it).
	installed atomic.Bool
	// failed: an install failed (a kernel without clsact, u32 or mirred;
	// a priority someone else uses); the link stays in userspace.
	failed bool
}

// kernelCapable reports whether the kernel can forward between a and b:
// local interfaces of one namespace, taps only when vmnet holds every
// queue (another reader's frames would go down the link).
func kernelCapable(a, b *Endpoint) bool {
	for _, e := range []*Endpoint{a, b} {
		switch {
		case e.ifindex == 0:
			return false
		case e.kind == vmconfig.KindTap && !e.exclusive:
			return false
		case e.kind != vmconfig.KindTap && !e.packetSockets():
			return false
		}
	}
	return a.nsID == b.nsID
}

func newKernelPath(a, b *Endpoint, ab, ba *counters) (*kernelPath, error) {
	h, err := netlink.NewHandleAt(a.ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in the namespace of %s: %w", a, err)
	}
	k := &kernelPath{h: h, c: [2]*counters{ab, ba}}
	for i, e := range []*Endpoint{a, b} {
		ke := &kernelEnd{e: e, name: e.ifname, index: e.ifindex,
			hook: netlink.HANDLE_MIN_INGRESS, redir: netlink.TCA_EGRESS_REDIR}
		if e.kind == vmconfig.KindTap {
			ke.hook, ke.redir = netlink.HANDLE_MIN_EGRESS, netlink.TCA_INGRESS_REDIR
		}
		k.ends[i] = ke
	}
	return k, nil
}

// fail keeps the link in userspace from now on.
func (k *kernelPath) fail() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.failed = true
}

// usable reports whether an install may be tried.
func (k *kernelPath) usable() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return !k.failed
}

// filter is the u32 filter at src's hook that hands every frame to dst.
// A tap end's frames are the link's alone (in userspace its fd reads
// them; nothing else would), so they are taken: a redirect. An AF_PACKET
// end's interface keeps what it receives: a packet socket reads a copy
// and the host's stack (a bridge, an address on the interface) still gets
// the frame, so the kernel path copies too: a mirror that lets the frame
// go on (pipe). A link on an interface the host uses never cuts the host
// off it. A vxlan end's device is the link's own (made for it, no address
// on it): what arrives there is the link's alone, a redirect too.
func (k *kernelPath) filter(src, dst *kernelEnd) *netlink.U32 {
	act, verdict := dst.redir, netlink.TC_ACT_STOLEN
	if src.hook == netlink.HANDLE_MIN_INGRESS && src.e.kind == vmconfig.KindPacket {
		act, verdict = mirrorOf(dst.redir), netlink.TC_ACT_PIPE
	}
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: src.index, Parent: src.hook, Priority: kernelPrio, Protocol: unix.ETH_P_ALL},
		// Sel nil: one key matching everything.
		Actions: []netlink.Action{&netlink.MirredAction{
			ActionAttrs:  netlink.ActionAttrs{Action: verdict},
			MirredAction: act,
			Ifindex:      dst.index,
		}},
	}
}

// mirrorOf is the mirror (copy) that enters where redirect r would.
func mirrorOf(r netlink.MirredAct) netlink.MirredAct {
	if r == netlink.TCA_INGRESS_REDIR {
		return netlink.TCA_INGRESS_MIRROR
	}
	return netlink.TCA_EGRESS_MIRROR
}

// install mutes the AF_PACKET ends, makes sure both ends have a clsact
// qdisc and adds a redirect each way. On error it undoes what it did and
// the link stays in userspace for good (failed).
func (k *kernelPath) install() (err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.installed.Load() {
		return nil
	}
	if k.failed {
		return errors.New("the kernel data path failed before")
	}
	defer func() {
		if err != nil {
			k.failed = true
		}
	}()
	var added []*netlink.U32
	var muted []*Endpoint
	undo := func(err error) error {
		errs := []error{err}
		for _, f := range added {
			if derr := k.h.FilterDel(f); derr != nil {
				errs = append(errs, derr)
			}
		}
		for _, ke := range k.ends {
			if derr := k.dropQdisc(ke); derr != nil {
				errs = append(errs, derr)
			}
		}
		for _, e := range muted {
			errs = append(errs, e.mute(false))
		}
		return errors.Join(errs...)
	}
	for _, ke := range k.ends {
		if err := k.ensureQdisc(ke); err != nil {
			return undo(err)
		}
		// Nothing of someone else's at vmnet's priority: deleting the
		// priority later must delete only vmnet's filter.
		fs, err := k.h.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: ke.index}}, ke.hook)
		if err != nil {
			return undo(fmt.Errorf("interface %s: list tc filters: %w", ke.name, err))
		}
		for _, f := range fs {
			if f.Attrs().Priority == kernelPrio {
				return undo(fmt.Errorf("interface %s: a tc filter at priority %d (vmnet's) exists already, maybe left by a vmnet that was killed: remove it with `tc filter del dev %s %s prio %d`",
					ke.name, kernelPrio, ke.name, hookName(ke.hook), kernelPrio))
			}
		}
	}
	for i, src := range k.ends {
		// Mute first: while both the socket and the redirect take a
		// frame, it would cross twice. The frames that arrive at src
		// between this and its redirect are what a switch costs.
		if src.e.packetSockets() {
			if err := src.e.mute(true); err != nil {
				return undo(fmt.Errorf("interface %s: %w", src.name, err))
			}
			muted = append(muted, src.e)
		}
		f := k.filter(src, k.ends[1-i])
		if err := k.h.FilterAdd(f); err != nil {
			return undo(missingOr(src.name, "tc redirect filter", redirectOption, err))
		}
		added = append(added, f)
		src.lastPackets, src.lastBytes, src.lastDrops = 0, 0, 0
	}
	k.installed.Store(true)
	return nil
}

func hookName(hook uint32) string {
	if hook == netlink.HANDLE_MIN_EGRESS {
		return "egress"
	}
	return "ingress"
}

// ensureQdisc finds the clsact qdisc of ke or creates it.
func (k *kernelPath) ensureQdisc(ke *kernelEnd) error {
	link := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: ke.index}}
	qs, err := k.h.QdiscList(link)
	if err != nil {
		return fmt.Errorf("interface %s: list qdiscs: %w", ke.name, err)
	}
	for _, q := range qs {
		if q.Attrs().Parent != netlink.HANDLE_CLSACT {
			continue
		}
		if q.Type() == "clsact" {
			return nil
		}
		// An ingress qdisc has no egress hook, and it is not vmnet's
		// to replace.
		return fmt.Errorf("interface %s has an %s qdisc where the kernel data path needs clsact", ke.name, q.Type())
	}
	q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ke.index, Parent: netlink.HANDLE_CLSACT,
		Handle: netlink.MakeHandle(0xffff, 0)}, QdiscType: "clsact"}
	if err := k.h.QdiscAdd(q); err != nil {
		return missingOr(ke.name, "clsact qdisc", clsactOption, err)
	}
	ke.created = true
	return nil
}

// dropQdisc removes the clsact qdisc vmnet created on ke, unless someone
// has put a filter on it since: deleting the qdisc would delete theirs.
func (k *kernelPath) dropQdisc(ke *kernelEnd) error {
	if !ke.created {
		return nil
	}
	link := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: ke.index}}
	for _, hook := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, err := k.h.FilterList(link, hook)
		if err != nil {
			return fmt.Errorf("interface %s: list tc filters: %w", ke.name, err)
		}
		if len(fs) > 0 {
			ke.created = false // theirs too now
			return nil
		}
	}
	q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ke.index, Parent: netlink.HANDLE_CLSACT,
		Handle: netlink.MakeHandle(0xffff, 0)}, QdiscType: "clsact"}
	if err := k.h.QdiscDel(q); err != nil && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("interface %s: remove the clsact qdisc vmnet added: %w", ke.name, err)
	}
	ke.created = false
	return nil
}

// uninstall reads the redirects' counters a last time, removes them and
// unmutes the AF_PACKET ends. An interface that is gone took its filters
// with it. A clsact qdisc vmnet made stays until teardown: adding or
// removing one makes the kernel deactivate the device for a moment
// (qdisc_graft), which drops what it sends meanwhile; a switch between
// the paths must not.
func (k *kernelPath) uninstall() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.installed.Load() {
		return nil
	}
	k.pollLocked() // last counts; what is gone says so below
	var errs []error
	for i, src := range k.ends {
		f := k.filter(src, k.ends[1-i])
		if err := k.h.FilterDel(f); err != nil && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("interface %s: remove vmnet's tc redirect: %w", src.name, err))
		}
		// Unmute only now: both at once would carry a frame twice.
		if src.e.packetSockets() {
			if err := src.e.mute(false); err != nil {
				errs = append(errs, fmt.Errorf("interface %s: %w", src.name, err))
			}
		}
	}
	k.installed.Store(false)
	return errors.Join(errs...)
}

// poll adds what the redirects counted since the last poll to the
// link's counters. It returns an errGone for an interface that is gone
// (the link has lost an end, as a pump's read would say), or an
// errRedirectGone when an interface no longer has vmnet's redirect
// (someone deleted it or its clsact qdisc).
func (k *kernelPath) poll() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.installed.Load() {
		return k.pollLocked()
	}
	return nil
}

// errRedirectGone: see poll.
var errRedirectGone = errors.New("vmnet's tc redirect was removed by someone else")

// pollLocked reads the mirred actions' counters. The kernel counts a
// super-frame as its segments (gso_segs) and its bytes as the skb's
// length at the hook (at ingress without the Ethernet header); a frame
// the redirect could not deliver (the far interface down) is a drop.
func (k *kernelPath) pollLocked() error {
	var errs []error
	for i, src := range k.ends {
		// A dump of a deleted interface's filters is empty, not an error.
		if _, err := k.h.LinkByIndex(src.index); err != nil {
			errs = append(errs, fmt.Errorf("interface %s: %w (%v)", src.name, unix.ENODEV, err))
			continue
		}
		fs, err := k.h.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: src.index}}, src.hook)
		if err != nil {
			continue
		}
		found := false
		for _, f := range fs {
			u, ok := f.(*netlink.U32)
			if !ok || f.Attrs().Priority != kernelPrio {
				continue
			}
			found = true
			for _, a := range u.Actions {
				m, ok := a.(*netlink.MirredAction)
				if !ok || m.Statistics == nil || m.Statistics.Basic == nil {
					continue
				}
				var drops uint32
				if m.Statistics.Queue != nil {
					drops = m.Statistics.Queue.Drops
				}
				dp := uint64(m.Statistics.Basic.Packets - src.lastPackets) // wraps
				db := m.Statistics.Basic.Bytes - src.lastBytes
				dd := uint64(drops - src.lastDrops)
				src.lastPackets, src.lastBytes, src.lastDrops = m.Statistics.Basic.Packets, m.Statistics.Basic.Bytes, drops
				c := k.c[i]
				c.frames.Add(dp)
				c.bytes.Add(db)
				c.dWrite.Add(dd)
				c.txFrames.Add(dp - min(dd, dp))
				// Bytes of dropped frames are not counted apart.
				c.txBytes.Add(db)
			}
		}
		if !found {
			errs = append(errs, fmt.Errorf("interface %s: %w", src.name, errRedirectGone))
		}
	}
	return errors.Join(errs...)
}

// teardown uninstalls and removes the clsact qdiscs vmnet made: the
// link forwards no more.
func (k *kernelPath) teardown() error {
	errs := []error{k.uninstall()}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.h == nil {
		return errors.Join(errs...)
	}
	for _, ke := range k.ends {
		errs = append(errs, k.dropQdisc(ke))
	}
	return errors.Join(errs...)
}

// close tears down and closes the netlink socket.
func (k *kernelPath) close() error {
	err := k.teardown()
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.h != nil {
		k.h.Close()
		k.h = nil
	}
	return err
}

// localOf fills in what the kernel data path needs to know of an
// endpoint opened on the calling thread: its namespace, interface name
// and index.
func localOf(e *Endpoint, ifname string, ifindex int) error {
	id, err := netns.Identify()
	if err != nil {
		return fmt.Errorf("identify the network namespace: %w", err)
	}
	ns, err := netns.Current()
	if err != nil {
		return fmt.Errorf("open the network namespace: %w", err)
	}
	e.ns, e.nsID, e.ifname, e.ifindex = ns, id, ifname, ifindex
	return nil
}

// dropAll is a classic BPF socket filter that accepts nothing.
var dropAll = []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}

// mute stops (on) or restarts the endpoint's AF_PACKET sockets from
// receiving: a socket filter that drops every frame runs before the
// kernel clones one for the socket, so a muted socket costs almost
// nothing.
func (e *Endpoint) mute(on bool) error {
	var errs []error
	for _, q := range e.queues {
		m, ok := q.(*mmsgConn)
		if !ok {
			continue
		}
		var serr error
		err := m.rc.Control(func(fd uintptr) {
			if on {
				prog := unix.SockFprog{Len: uint16(len(dropAll)), Filter: &dropAll[0]}
				serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog)
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DETACH_FILTER, 0)
				if errors.Is(serr, unix.ENOENT) {
					serr = nil // had none
				}
			}
		})
		if err == nil {
			err = serr
		}
		if err != nil {
			what := "mute"
			if !on {
				what = "unmute"
			}
			errs = append(errs, fmt.Errorf("%s: %s AF_PACKET socket: %w", m.name, what, err))
		}
	}
	return errors.Join(errs...)
}
