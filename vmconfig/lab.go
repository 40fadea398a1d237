// Package vmconfig reads a vmnet lab description (TOML) into a fully
// resolved, validated Lab: every default filled in, every derived name, MAC
// and path computed once, every mistake reported with its file:line:col.
// It has no side effects on the host. testdata/example.toml documents every
// key.
package vmconfig

import (
	"fmt"
	"net"
	"net/netip"
)

// Limits and defaults.
const (
	MaxQueues      = 256 // tun allows at most 256 queues per device
	maxNICs        = 1023
	DefaultCPUs    = 1
	DefaultMemory  = 256 // MiB
	DefaultMTU     = 1500
	DefaultMachine = "pc" // broadest guest kernel support
	DefaultAccel   = "auto"
	// DefaultBoot: test-image guests are restored from a snapshot of
	// their shape (warm); "cold" boots them from scratch every time.
	DefaultBoot  = "warm"
	DefaultQEMU  = "qemu-system-x86_64"
	DefaultModel = "virtio-net-pci"
)

// Named images (image = "..."), built by vmnet.
const ImageDebian12 = "debian-12"

// Images are the names image = "..." accepts.
var Images = []string{ImageDebian12}

// Readiness methods: how vmnet learns that a guest is up.
const (
	ReadyAgent   = "agent"   // the QEMU guest agent answers guest-ping
	ReadyConsole = "console" // the test image prints its ready marker
	ReadySSH     = "ssh"     // an SSH server answers on the VM's first address
	ReadyNone    = "none"    // ready once QEMU runs
)

// Lab is a loaded config. Slices keep file order.
type Lab struct {
	Name     string
	File     string // absolute path of the config file ("" when parsed from a name that is not a file)
	StateDir string // absolute; default Options.StateRoot/<name>
	Networks []*Network
	VMs      []*VM
	Links    []*Link
	Hosts    []*Host // [[host]] tables, in file order
	// Host is set on a part of a multi-host lab (Part): the host it is
	// for. Networks, VMs and Links then hold only that host's share.
	Host     *Host
	Warnings Problems // warnings only; a Lab is never returned with errors
	// SSHAuthorizedKeys go into every cloud-init seed ([lab]
	// ssh_authorized_keys); empty: vmnet generates a key for the lab.
	SSHAuthorizedKeys []string
}

// Network is a Linux bridge.
type Network struct {
	Name          string
	Bridge        string         // interface name; default "<lab>-<network>"
	MTU           int            // default 1500
	Addresses     []netip.Prefix // host addresses on the bridge
	VLANFiltering bool
	DefaultPVID   int // 1..4094, default 1
	STP           bool
	Transparent   bool   // forward link-local frames (LLDP, LACP, STP) like a wire
	Qdisc         string // root qdisc of the network's taps: noqueue (default) or default
	// Impairment is the default of the network's NICs (see NIC.Impairment);
	// nil: none.
	Impairment *Impairment
	VNI        int // VXLAN network identifier when it spans hosts; default DeriveVNI
	// VXLAN is set by Lab.Part on a network that has VMs on other hosts.
	VXLAN *VXLAN
	Pos   Pos

	// BridgeExplicit: the lab file names the bridge (bridge = "..."), so
	// an existing bridge of that name that vmnet did not make for this
	// lab may be used; a derived name must not be taken.
	BridgeExplicit bool
}

// VM is one QEMU guest.
type VM struct {
	Name       string
	Host       string // the [[host]] it runs on; "" when the lab has none
	CPUs       int
	MemoryMiB  int
	Kernel     string // absolute path, or "" for vmnet's test image (when there is no disk either)
	Initrd     string // absolute path or ""
	Append     string
	Disk       string // the boot disk (Disks[0].Path when Disks[0].Boot): absolute path or ""
	DiskFormat string // raw, qcow2, ...; "" when there is no boot disk
	Machine    string // pc, q35 or microvm
	Accel      string // kvm, tcg or auto
	Boot       string // warm (default: restore test-image guests from a snapshot) or cold
	QEMU       string // binary: a bare name (looked up in PATH) or an absolute path
	User       string // run QEMU as this user; "" = vmnet's dedicated user (qemu.DefaultUser); "root" = as root
	ExtraArgs  []string
	Console    string // absolute path of the serial console log
	Command    string // command the test image runs, "" = none
	Image      string // named image (ImageDebian12) or ""
	ImageMode  string // disk mode of the named image's disk: overlay (default) or snapshot
	Readiness  string // ReadyAgent, ReadyConsole, ReadySSH or ReadyNone; default from the image
	CloudInit  bool   // attach a cloud-init NoCloud seed (default: the image has cloud-init)
	UserData   string // absolute path of user-data merged into the seed, or ""
	DNS        []netip.Addr
	Gateways   []netip.Addr
	NICs       []*NIC
	Pos        Pos

	// Disks are every disk of the VM in the order they are attached (vda,
	// vdb, ...): the one of disk = "..." or the [[vm.disk]] tables.
	Disks []*Disk
}

// Disk modes: where a guest's writes go.
const (
	DiskOverlay    = "overlay"    // a qcow2 overlay in the VM's state directory; the image is only read (default)
	DiskSnapshot   = "snapshot"   // QEMU's snapshot=on: a temporary overlay QEMU deletes itself
	DiskPersistent = "persistent" // into the image
)

// Disk is one disk image of a VM.
type Disk struct {
	Path     string // absolute
	Format   string // raw, qcow2, ...: format, else guessed from the file name's extension
	Mode     string // overlay, snapshot or persistent; "" when ReadOnly
	ReadOnly bool   // the guest gets a read-only disk; the image is only read
	Boot     bool   // the VM boots from it: disk = "...", or boot = true in the first [[vm.disk]]
	Pos      Pos
}

// Writes reports whether the guest's writes reach the image itself.
func (d *Disk) Writes() bool { return !d.ReadOnly && d.Mode == DiskPersistent }

// NIC is one guest network interface and the tap behind it.
type NIC struct {
	VM      string
	Index   int
	Network string // "" when the NIC is the vm: end of a [[link]]
	Link    *Link  // the link using this NIC, if any
	MAC     net.HardwareAddr
	Queues  int
	VnetHdr bool
	// OffloadsAuto means "whatever the kernel and guest support"; otherwise
	// Offloads lists the wanted ones (possibly none) in canonical order.
	OffloadsAuto bool
	Offloads     []string
	Model        string // virtio-net-pci, virtio-net-device, e1000e, e1000, rtl8139
	Vhost        string // auto, on or off
	VLAN         int    // PVID on the bridge port, 0 = the network's default
	Tagged       []int
	MTU          int
	IfName       string // tap name; default "<lab>-<vm>-<index>"
	Qdisc        string // root qdisc of the tap: noqueue or default; default the network's, else noqueue
	// Impairment is what tc netem/tbf on the tap do to the frames going to
	// the guest (the tap's egress), the network's keys overridden by the
	// NIC's key by key; nil: none (the tap keeps Qdisc).
	Impairment *Impairment
	Addresses  []netip.Prefix
	Pos        Pos
}

// Link joins two endpoints with a userspace copier.
type Link struct {
	Index int
	A, B  Endpoint
	PCAP  string // absolute path or ""
	// Datapath is DatapathAuto (the default: a kernel redirect where both
	// ends are local interfaces and nothing needs userspace) or
	// DatapathUserspace (every frame through vmnet).
	Datapath string
	// AtoB and BtoA impair a direction; nil: no impairment stage.
	AtoB, BtoA *Impairment
	// Port and Key concern a link between VMs on two hosts ([[host]]),
	// which runs as a UDP tunnel between the hosts' underlay addresses
	// (Lab.Part turns the far VM's end into that tunnel): Port is the
	// UDP port both hosts receive it on (port =, default DeriveLinkPort),
	// Key the absolute path of the pre-shared key file both hosts hold a
	// copy of (key =, "" = unauthenticated cleartext).
	Port int
	Key  string
	Pos  Pos
}

// The values of a link's datapath key (and of `vmnet link --datapath`).
const (
	DatapathAuto      = "auto"
	DatapathUserspace = "userspace"
)

// Summary is the one-line description printed by `vmnet validate`.
func (l *Lab) Summary() string {
	nics := 0
	for _, vm := range l.VMs {
		nics += len(vm.NICs)
	}
	s := fmt.Sprintf("lab %s: %s, %s, %s, %s", l.Name,
		plural(len(l.Networks), "network"), plural(len(l.VMs), "VM"),
		plural(nics, "NIC"), plural(len(l.Links), "link"))
	if len(l.Hosts) > 0 {
		s += ", " + plural(len(l.Hosts), "host")
	}
	return s
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}
