// Package lab makes the networks, taps and guests of a vmconfig.Lab real
// on this host, and removes them again: only what it created, in reverse
// order, whatever failed in between.
package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/vmnet/vmnet/bridge"
	"github.com/vmnet/vmnet/images"
	"github.com/vmnet/vmnet/images/guest"
	"github.com/vmnet/vmnet/internal/qemu"
	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/owner"
	"github.com/vmnet/vmnet/tap"
	"github.com/vmnet/vmnet/vmconfig"
	"golang.org/x/sys/unix"
)

// Options tune how a lab is brought up.
type Options struct {
	// Logf receives one line per step, with timings. Nil discards.
	Logf func(format string, args ...any)
	// Console receives every guest's serial console. Nil discards.
	Console io.Writer
	// Image boots VMs whose config names no kernel. Nil builds (or reuses)
	// the test image on first use.
	Image *images.Image
	// ImageProgress receives the image recipe's progress lines.
	ImageProgress io.Writer
	// RunDir holds QMP and console sockets; default: the lab's state dir.
	RunDir string
	// MaxBoots is how many guests boot at once (from QEMU's start to
	// ready); the others wait for a slot. 0 means DefaultMaxBoots.
	MaxBoots int
	// HotplugPorts reserves free PCIe root ports on q35 guests for NICs
	// added at run time (other machines cannot hot-plug).
	HotplugPorts int
	// Progress, when set, learns each VM's state changes while Up waits
	// for the guests (booting, ready, failed), so that a user is not left
	// looking at nothing for minutes.
	Progress func(Progress)
	// Cold boots every guest from scratch: no snapshots (boot = "cold"
	// for the whole lab).
	Cold bool
	// SnapshotDir holds the snapshots of warm boots; default
	// snapshot.DefaultDir() (next to the image cache).
	SnapshotDir string
}

// Lab is a lab being brought up on this host: it remembers what it
// created so that Teardown removes exactly that.
type Lab struct {
	cfg  *vmconfig.Lab
	opts Options
	br   *bridge.Manager
	// ns is the network namespace the lab lives in. Taps are made in the
	// namespace of the calling thread, and the supervisor answers control
	// calls on goroutines that may run on any thread, so tap work enters
	// ns explicitly.
	ns netns.Handle
	// netNS identifies ns; it keys the lab's state directory.
	netNS NetNS

	mu        sync.Mutex
	bridges   []string // bridges this Lab created, in creation order
	reused    []string // bridges that existed before; they stay
	vxlans    []string // VXLAN devices this Lab created
	networks  map[string]bool
	taps      map[*vmconfig.NIC]*tap.Tap
	vms       map[string]*qemu.VM
	started   map[string]time.Time
	hotplug   map[string][]*hotNIC   // per VM, NICs added at run time
	pidStarts map[int]uint64         // start times of the processes in the state
	users     map[string]*qemu.User  // QEMU's user by lab-file name ("" = dedicated)
	named     map[string]images.Disk // named images by name, once built
	state     *State                 // nil unless the Lab is supervised (Up)
	links     []*runningLink
	nicImpair map[*tap.Tap]vmconfig.Impairment // NIC impairments changed at run time
	linkCtx   context.Context
	linkStop  context.CancelFunc

	// undo is what the Lab changed on reused bridges, in order.
	undo []bridge.Undo
}

// New prepares to bring cfg up in the calling thread's network namespace.
func New(cfg *vmconfig.Lab, opts Options) (*Lab, error) {
	ns, err := netns.Current()
	if err != nil {
		return nil, err
	}
	br, err := bridge.New(ns)
	if err != nil {
		ns.Close()
		return nil, err
	}
	id, err := netns.IdentifyPath(fmt.Sprintf("/proc/self/fd/%d", int(ns)))
	if err != nil {
		br.Close()
		ns.Close()
		return nil, err
	}
	nsID := NetNS{ID: id}
	if n := netns.NamesOf(id); len(n) > 0 {
		nsID.Name = n[0]
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.RunDir == "" {
		opts.RunDir = cfg.StateDir
	}
	return &Lab{cfg: cfg, opts: opts, br: br, ns: ns, netNS: nsID, pidStarts: map[int]uint64{}, networks: map[string]bool{},
		taps: map[*vmconfig.NIC]*tap.Tap{}, vms: map[string]*qemu.VM{}, started: map[string]time.Time{},
		hotplug: map[string][]*hotNIC{}, users: map[string]*qemu.User{}, nicImpair: map[*tap.Tap]vmconfig.Impairment{}}, nil
}

// Config is the lab's configuration.
func (l *Lab) Config() *vmconfig.Lab { return l.cfg }

// VM finds a VM of the config by name.
func (l *Lab) VM(name string) (*vmconfig.VM, error) {
	for _, vm := range l.cfg.VMs {
		if vm.Name == name {
			return vm, nil
		}
	}
	var names []string
	for _, vm := range l.cfg.VMs {
		names = append(names, vm.Name)
	}
	return nil, fmt.Errorf("lab %s: no VM named %q (the lab has %v)", l.cfg.Name, name, names)
}

func (l *Lab) step(what string) func(error) {
	start := time.Now()
	return func(err error) {
		if err == nil {
			l.opts.Logf("%-48s %7.3fs", what, time.Since(start).Seconds())
		}
	}
}

// EnsureNetwork creates (or reuses) the bridge of the named network.
func (l *Lab) EnsureNetwork(name string) (err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.networks[name] {
		return nil
	}
	var n *vmconfig.Network
	for _, c := range l.cfg.Networks {
		if c.Name == name {
			n = c
		}
	}
	if n == nil {
		return fmt.Errorf("lab %s: no network named %q", l.cfg.Name, name)
	}
	done := l.step("network " + n.Name + " (bridge " + n.Bridge + ")")
	defer func() { done(err) }()
	cfg := bridge.Config{Name: n.Bridge, MTU: n.MTU, Addresses: n.Addresses, VLANFiltering: n.VLANFiltering,
		STP: n.STP, Owner: owner.Lab(l.cfg.Name), Reuse: n.BridgeExplicit}
	// What the lab changes on a bridge it reuses is on disk before the
	// change, so that `vmnet down` restores it even after a SIGKILL.
	undo := len(l.undo)
	cfg.BeforeChange = func(u bridge.Undo) error {
		l.undo = append(l.undo, u)
		return l.saveLocked()
	}
	if n.VLANFiltering {
		cfg.DefaultPVID = uint16(n.DefaultPVID)
	}
	if n.Transparent {
		cfg.GroupFwdMask = bridge.TransparentMask
	}
	created, err := l.br.Ensure(cfg)
	if err != nil {
		l.undo = l.undo[:undo] // Ensure put back what it changed
		var iu *bridge.InUseError
		if errors.As(err, &iu) {
			return fmt.Errorf("lab %s: network %s: %w; vmnet will not share it by accident: rename the lab or the network, "+
				"or set bridge = \"...\" in the [[network]] to another name (or to %s, to use this bridge on purpose)",
				l.cfg.Name, n.Name, err, n.Bridge)
		}
		return fmt.Errorf("lab %s: network %s: %w", l.cfg.Name, n.Name, err)
	}
	if created {
		l.bridges = append(l.bridges, n.Bridge)
	} else {
		l.reused = append(l.reused, n.Bridge)
		l.opts.Logf("network %s: reusing existing bridge %s (it stays after teardown)", n.Name, n.Bridge)
	}
	l.networks[name] = true
	if err := l.saveLocked(); err != nil {
		return err
	}
	if n.VXLAN != nil {
		return l.createVXLAN(n)
	}
	return nil
}

func (l *Lab) network(name string) *vmconfig.Network {
	for _, n := range l.cfg.Networks {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// autoOffloads is what "auto" asks for: everything the kernel has but UFO,
// which it ignores. QEMU then narrows it to what the guest negotiated.
const autoOffloads = tap.OffloadAll &^ tap.OffloadUFO

// CreateTaps creates the taps of vm's NICs and attaches them to their
// networks' bridges, creating the networks first.
func (l *Lab) CreateTaps(vm *vmconfig.VM) error {
	u, err := l.qemuUser(vm)
	if err != nil {
		return err
	}
	uid, gid := tapOwner(u)
	for _, nic := range vm.NICs {
		if nic.Network != "" {
			if err := l.EnsureNetwork(nic.Network); err != nil {
				return err
			}
		}
		t, err := l.createTap(vm, nic, uid, gid)
		if err != nil {
			return err
		}
		l.mu.Lock()
		l.taps[nic] = t
		l.mu.Unlock()
		if err := l.save(); err != nil {
			return err
		}
	}
	return nil
}

// createTap creates the tap of one NIC and attaches it to its network's
// bridge. On failure it leaves nothing behind.
func (l *Lab) createTap(vm *vmconfig.VM, nic *vmconfig.NIC, uid, gid int) (_ *tap.Tap, err error) {
	done := l.step(fmt.Sprintf("vm %s nic %d: tap %s, %d queue(s)", vm.Name, nic.Index, nic.IfName, nic.Queues))
	defer func() { done(err) }()
	cfg := tap.NewConfig(nic.IfName, nic.Queues)
	cfg.Tag, cfg.Owner, cfg.Group, cfg.Up = owner.Lab(l.cfg.Name), uid, gid, true
	// Every lab tap is a bridge port or one end of a [[link]]: an IPv6
	// link-local address on it would never be reached (see NoLinkLocal).
	cfg.NoLinkLocal = true
	cfg.MTU = nic.MTU
	if cfg.Qdisc, err = tap.ParseQdisc(nic.Qdisc); err != nil {
		return nil, fmt.Errorf("vm %s nic %d: %w", vm.Name, nic.Index, err)
	}
	if net := l.network(nic.Network); net != nil && cfg.MTU == 0 {
		cfg.MTU = net.MTU
	}
	if nic.Impairment != nil {
		cfg.Impairment = TapImpairment(*nic.Impairment)
	}
	if nic.VnetHdr {
		cfg.VnetHdrSize = 12
		if nic.OffloadsAuto {
			cfg.Offloads, cfg.BestEffort = autoOffloads, true
		} else {
			for _, o := range nic.Offloads {
				v, err := tap.ParseOffloads(o)
				if err != nil {
					return nil, fmt.Errorf("vm %s nic %d: %w", vm.Name, nic.Index, err)
				}
				cfg.Offloads |= v
			}
		}
	}
	var t *tap.Tap
	err = netns.Do(l.ns, func() error {
		var err error
		t, err = tap.Create(cfg)
		return err
	})
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return nil, l.nameTaken(vm, nic, err)
		}
		var mq *tap.MissingQdiscError
		if errors.As(err, &mq) {
			return nil, fmt.Errorf("lab %s: vm %s nic %d: impairment %s: %w; or remove the impairment keys from the NIC and its network "+
				"(a [[link]] between two VMs impairs in userspace, without netem)", l.cfg.Name, vm.Name, nic.Index, nic.Impairment, err)
		}
		return nil, fmt.Errorf("vm %s nic %d: %w", vm.Name, nic.Index, err)
	}
	if nic.Network == "" {
		// The tap is one end of a [[link]]: a wire, not a host interface.
		// Without IPv6 the host sends no router solicitations or MLD
		// reports down it to the guest.
		err := netns.Do(l.ns, func() error {
			return os.WriteFile("/proc/sys/net/ipv6/conf/"+t.Name()+"/disable_ipv6", []byte("1"), 0)
		})
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			l.closeAndDelete(t)
			return nil, fmt.Errorf("vm %s nic %d: tap %s: disable IPv6: %w", vm.Name, nic.Index, t.Name(), err)
		}
		return t, nil
	}
	n := l.network(nic.Network)
	p := bridge.PortConfig{Name: t.Name(), PVID: uint16(nic.VLAN)}
	for _, v := range nic.Tagged {
		p.Tagged = append(p.Tagged, uint16(v))
	}
	if n.Transparent {
		p.GroupFwdMask = bridge.PortTransparentMask
	}
	if err := l.br.AddPort(n.Bridge, p); err != nil {
		if cerr := l.closeAndDelete(t); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return nil, fmt.Errorf("vm %s nic %d: %w", vm.Name, nic.Index, err)
	}
	return t, nil
}

// nameTaken explains a tap name that is in use: which interface holds
// it, whose it is, and what to do. Taps are never shared, whoever made
// the interface.
func (l *Lab) nameTaken(vm *vmconfig.VM, nic *vmconfig.NIC, err error) error {
	link, lerr := l.br.Handle().LinkByName(nic.IfName)
	if lerr != nil {
		return fmt.Errorf("vm %s nic %d: %w", vm.Name, nic.Index, err)
	}
	whose := "no vmnet owner tag: vmnet did not create it"
	todo := "rename the lab or the VM, or set ifname = \"...\" in the [[vm.nic]] to a free name"
	if own, ok := owner.Of(link); ok {
		whose = fmt.Sprintf("owner tag %q", link.Attrs().Alias)
		if own == owner.Lab(l.cfg.Name) { // the owner string createTap tags with
			todo = fmt.Sprintf("it is left from an earlier run of this lab: run `vmnet down %s` first", l.cfg.Name)
		}
	}
	return fmt.Errorf("lab %s: vm %s nic %d: tap %s: an interface of that name exists (a %s, %s); %s",
		l.cfg.Name, vm.Name, nic.Index, nic.IfName, link.Type(), whose, todo)
}

// TapImpairment is a lab file's impairment as the tap's netem and tbf
// take it (the same parameters, in tc's meaning).
func TapImpairment(im vmconfig.Impairment) tap.Impairment {
	return tap.Impairment{Delay: im.Delay, Jitter: im.Jitter, Loss: im.Loss, LossCorrelation: im.LossCorrelation,
		Duplicate: im.Duplicate, Reorder: im.Reorder, Corrupt: im.Corrupt, Rate: im.Rate, Burst: im.Burst}
}

// ConfigImpairment is the inverse of TapImpairment, for showing what a
// tap's qdiscs do in the lab file's words.
func ConfigImpairment(im tap.Impairment) vmconfig.Impairment {
	return vmconfig.Impairment{Delay: im.Delay, Jitter: im.Jitter, Loss: im.Loss, LossCorrelation: im.LossCorrelation,
		Duplicate: im.Duplicate, Reorder: im.Reorder, Corrupt: im.Corrupt, Rate: im.Rate, Burst: im.Burst}
}

// Tap returns the open tap of a NIC created by CreateTaps.
func (l *Lab) Tap(nic *vmconfig.NIC) *tap.Tap {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.taps[nic]
}

// qemuUser resolves the user vm's QEMU runs as (and its taps belong to):
// the dedicated user unless the lab names one, nil for user = "root".
// The answer is cached per user name, so the user is created (if need
// be) once.
func (l *Lab) qemuUser(vm *vmconfig.VM) (*qemu.User, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if u, ok := l.users[vm.User]; ok {
		return u, nil
	}
	u, err := qemu.ResolveUser(vm.User)
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", vm.Name, err)
	}
	l.users[vm.User] = u
	return u, nil
}

// tapOwner is the tap owner and group for QEMU's user (-1: unset).
func tapOwner(u *qemu.User) (uid, gid int) {
	if u == nil {
		return -1, -1
	}
	return int(u.UID), int(u.GID)
}

// image returns the test image, building it on first use.
func (l *Lab) image(ctx context.Context) (images.Image, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.opts.Image != nil {
		return *l.opts.Image, nil
	}
	done := l.step("test image")
	img, err := images.Ensure(ctx, images.Options{Progress: l.opts.ImageProgress})
	done(err)
	if err != nil {
		return img, err
	}
	l.opts.Image = &img
	return img, nil
}

// Boot starts vm's QEMU on the taps CreateTaps made. cmd, if not empty,
// replaces the VM's configured command.
func (l *Lab) Boot(ctx context.Context, vm *vmconfig.VM, cmd string) (_ *qemu.VM, err error) {
	done := l.step("vm " + vm.Name + ": start QEMU")
	defer func() { done(err) }()
	if cmd == "" {
		cmd = vm.Command
	}
	spec := qemu.Spec{Name: vm.Name, Binary: vm.QEMU, Machine: vm.Machine, Accel: vm.Accel, CPUs: vm.CPUs,
		MemoryMiB: vm.MemoryMiB, Kernel: vm.Kernel, Initrd: vm.Initrd,
		ExtraArgs: vm.ExtraArgs, ConsoleLog: vm.Console, ConsoleTee: l.opts.Console, Logf: l.opts.Logf,
		RunDir: l.runDir(vm.Name)}
	// Every disk is attached in order; an overlay-mode disk's overlay
	// lives in the VM's run directory, so that down (or the end of a
	// run) removes it with the directory.
	for _, d := range vm.Disks {
		spec.Disks = append(spec.Disks, qemu.Disk{Path: d.Path, Format: d.Format, Mode: d.Mode, ReadOnly: d.ReadOnly})
	}
	if vm.Machine == qemu.MachineQ35 {
		spec.HotplugPorts = l.opts.HotplugPorts
	}
	if vm.Image != "" {
		if err := l.bootNamed(ctx, vm, &spec); err != nil {
			return nil, err
		}
	} else if vm.Kernel == "" && vm.Disk == "" { // a VM with a boot disk boots it
		img, err := l.image(ctx)
		if err != nil {
			return nil, fmt.Errorf("vm %s: %w", vm.Name, err)
		}
		spec.Kernel, spec.Initrd = img.Kernel, img.Initrd
		if cmd == "" {
			spec.ControlSocket = filepath.Join(spec.RunDir, shellSocket)
		}
	}
	args := guest.Args{Cmd: cmd, Nonce: guest.NewNonce()}
	for i, nic := range vm.NICs {
		iface := "eth" + strconv.Itoa(i)
		if len(nic.Addresses) > 0 {
			args.IPs = append(args.IPs, guest.IP{Iface: iface, Addrs: nic.Addresses})
		}
		mtu := nic.MTU
		if n := l.network(nic.Network); n != nil && mtu == 0 {
			mtu = n.MTU
		}
		if mtu != 0 && mtu != 1500 {
			args.MTUs = append(args.MTUs, guest.MTU{Iface: iface, MTU: mtu})
		}
		t := l.Tap(nic)
		if t == nil {
			return nil, fmt.Errorf("vm %s nic %d: its tap was not created before the boot (a bug in vmnet: please report it)", vm.Name, nic.Index)
		}
		spec.NICs = append(spec.NICs, qemu.NIC{ID: fmt.Sprintf("nic%d", i), Model: nic.Model, MAC: nic.MAC.String(),
			Queues: t.Files(), Vhost: nic.Vhost})
	}
	for _, gw := range vm.Gateways {
		args.Routes = append(args.Routes, guest.Route{GW: gw})
	}
	base := guest.DefaultCmdline
	if vm.Append != "" {
		base += " " + vm.Append
	}
	if vm.Image == "" && spec.Kernel != "" {
		// The test image's kernel arguments (addresses, routes, command);
		// a disk boot takes no kernel command line.
		if spec.Append, err = args.Append(base); err != nil {
			return nil, fmt.Errorf("vm %s: %w", vm.Name, err)
		}
	}
	if err := l.guestSetup(ctx, vm, &spec); err != nil {
		return nil, err
	}
	if spec.User, err = l.qemuUser(vm); err != nil {
		return nil, err
	}
	// The lab's directory holds the VMs' socket directories: root's,
	// searchable (0711) but writable by root only.
	if err := qemu.RootDir(l.opts.RunDir, 0o711); err != nil {
		return nil, fmt.Errorf("vm %s: %w", vm.Name, err)
	}
	if spec.ConsoleLog != "" {
		if err := os.MkdirAll(filepath.Dir(spec.ConsoleLog), 0o711); err != nil {
			return nil, fmt.Errorf("vm %s: console log: %w", vm.Name, err)
		}
	}
	var v *qemu.VM
	if ok, why := l.warmable(vm); ok {
		if v, err = l.bootWarm(ctx, vm, spec, args, base); err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			l.opts.Logf("vm %s: warm boot failed, booting cold: %v", vm.Name, err)
			v = nil
		}
	} else if why != "" {
		l.opts.Logf("vm %s: %s", vm.Name, why)
	}
	if v == nil {
		if v, err = qemu.Start(ctx, spec); err != nil {
			return nil, err
		}
	}
	if err := l.listenConsole(vm.Name, v); err != nil {
		v.Stop(ctx)
		return nil, err
	}
	l.mu.Lock()
	l.vms[vm.Name] = v
	l.started[vm.Name] = time.Now()
	l.mu.Unlock()
	return v, l.save()
}

// Teardown stops the guests, closes and deletes the taps and deletes the
// bridges this Lab created, in that order. It goes on after errors and
// returns them all.
func (l *Lab) Teardown(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	if err := l.stopLinksLocked(); err != nil {
		errs = append(errs, err)
	}
	var wg sync.WaitGroup
	var emu sync.Mutex
	for name, v := range l.vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			done := l.step("vm " + name + ": stop")
			err := v.Stop(ctx)
			done(err)
			if err != nil {
				emu.Lock()
				errs = append(errs, err)
				emu.Unlock()
			}
		}()
	}
	wg.Wait()
	l.vms = map[string]*qemu.VM{}
	var taps []*tap.Tap
	for _, hs := range l.hotplug {
		for _, h := range hs {
			taps = append(taps, h.tap)
		}
	}
	for _, t := range l.taps {
		taps = append(taps, t)
	}
	l.hotplug, l.taps = map[string][]*hotNIC{}, map[*vmconfig.NIC]*tap.Tap{}
	l.nicImpair = map[*tap.Tap]vmconfig.Impairment{}
	errs = append(errs, l.closeAndDeleteAll(taps))
	if err := l.deleteVXLANs(); err != nil {
		errs = append(errs, err)
	}
	for i := len(l.bridges) - 1; i >= 0; i-- {
		if err := l.br.Delete(l.bridges[i], owner.Lab(l.cfg.Name), false); err != nil && !errors.Is(err, bridge.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	if err := restoreAll(l.br, l.undo, l.opts.Logf); err != nil {
		errs = append(errs, err)
	}
	l.bridges, l.reused, l.undo = nil, nil, nil
	l.networks = map[string]bool{}
	if l.state != nil && errors.Join(errs...) == nil {
		if err := RemoveStateDir(l.cfg.StateDir, l.cfg.Name, l.netNS); err != nil {
			errs = append(errs, err)
		}
		l.state = nil
	}
	return errors.Join(errs...)
}

// closeAndDeleteAll is closeAndDelete for many taps. Closing a queue
// waits for an RCU grace period in the kernel, so the closes run in
// parallel; the deletes happen in the lab's namespace.
func (l *Lab) closeAndDeleteAll(taps []*tap.Tap) error {
	errs := make([]error, len(taps))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i, t := range taps {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[i] = t.Close()
		}()
	}
	wg.Wait()
	err := netns.Do(l.ns, func() error {
		for i, t := range taps {
			if err := tap.Delete(t.Name(), owner.Lab(l.cfg.Name), false); err != nil && !errors.Is(err, unix.ENODEV) {
				errs[i] = errors.Join(errs[i], err)
			}
		}
		return nil
	})
	return errors.Join(append(errs, err)...)
}

// closeAndDelete closes vmnet's queues of t and deletes it.
func (l *Lab) closeAndDelete(t *tap.Tap) error { return l.closeAndDeleteAll([]*tap.Tap{t}) }

// Close releases the netlink sockets; call after Teardown.
func (l *Lab) Close() {
	l.br.Close()
	l.ns.Close()
}
