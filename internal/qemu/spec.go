package qemu

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmnet/vmnet/internal/logcap"
)

// Machine types vmnet knows how to wire.
const (
	MachinePC      = "pc"
	MachineQ35     = "q35"
	MachineMicroVM = "microvm"
)

// Accelerators. AccelAuto uses KVM only where a probe shows it really runs
// guests (see ProbeKVM), else TCG.
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// Vhost modes for a NIC. VhostAuto uses vhost-net when /dev/vhost-net exists.
const (
	VhostAuto = "auto"
	VhostOn   = "on"
	VhostOff  = "off"
)

// Device models with special handling; any other QEMU NIC model (e1000e,
// rtl8139, ...) is passed through with a single queue.
const (
	ModelVirtioPCI    = "virtio-net-pci"
	ModelVirtioDevice = "virtio-net-device"
)

// DefaultBinary is the QEMU system emulator vmnet runs.
const DefaultBinary = "qemu-system-x86_64"

// Spec describes one guest. It is plain data: nothing happens until Start.
type Spec struct {
	Name      string // VM name, used in errors and as QEMU's -name
	Binary    string // default DefaultBinary
	Machine   string // pc, q35 (default) or microvm
	Accel     string // auto (default), kvm or tcg
	CPUs      int    // default 1
	MemoryMiB int    // default 256

	Kernel string // vmlinux (PVH entry, fastest) or bzImage
	Initrd string
	Append string

	// Disks are attached as virtio disks in this order (vda, vdb, ...);
	// without a kernel the guest boots from the first.
	Disks []Disk

	// AgentSocket, if set, adds a virtio-serial port named
	// org.qemu.guest_agent.0 served on this unix socket, for
	// qemu-guest-agent. vmnet binds it, so it must lie in RunDir.
	AgentSocket string

	NICs []NIC

	// Warm boots (snapshots). RAM, if set, is the guest's memory: a file
	// QEMU maps (memory-backend-file), shared (its writes reach the file:
	// the guest that is saved) or private (a copy-on-write clone of the
	// file: a restored guest). Incoming, if set, is a saved device state
	// QEMU restores from (-incoming) instead of booting; the guest stays
	// paused until Cont. VMGenID adds the VM generation id device, whose
	// change on every restore makes the guest kernel reseed its random
	// number generator.
	RAM       *os.File
	RAMShared bool
	Incoming  *os.File
	VMGenID   bool
	// Nonce is the nonce of the guest's exit marker when it does not come
	// from Append (a restored guest gets it after the restore).
	Nonce string

	ConsoleLog string    // file that receives the raw serial console; optional
	ConsoleTee io.Writer // optional second copy of the console (e.g. os.Stdout)
	// ConsoleMax caps ConsoleLog (default logcap.DefaultMax): past it the
	// log keeps its newest half and says how much was dropped, so that a
	// guest writing to its console without pause cannot fill /run.
	ConsoleMax int64

	// RunDir is this VM's own directory for the QMP socket and the
	// pidfile. vmnet makes it 0700 and refuses one that is a symlink or
	// belongs to another user: it binds the sockets itself and hands QEMU
	// the listening fds, so QEMU never needs to write to any directory and
	// nothing QEMU's user can write is ever touched by root.
	RunDir string

	// User runs QEMU under another uid/gid (ResolveUser makes one from a
	// name). QEMU only receives already opened fds (taps, sockets, and
	// kernel and initrd), so it never needs CAP_NET_ADMIN nor access to
	// the paths vmnet uses.
	User *User

	ExtraArgs []string

	// HotplugPorts reserves that many free pcie-root-ports on q35 for
	// Hotplug; pcie.0 itself refuses hot-plugged devices.
	HotplugPorts int

	// ControlSocket, if set, adds a second serial port (ttyS1) as a unix
	// socket server at this path, for a guest shell. vmnet binds it, so
	// it must lie in RunDir, which only root can write.
	ControlSocket string

	// ConsoleLines is how many console lines ConsoleTail keeps (default 200).
	ConsoleLines int

	// PowerdownGrace bounds how long Stop waits for the guest to react to
	// an ACPI power button before it uses QMP quit (default 3s).
	PowerdownGrace time.Duration

	// Logf receives one-time notes (vhost fallback, accelerator choice).
	// Nil discards them.
	Logf func(format string, args ...any)
}

// NIC is one guest network interface backed by an already opened tap.
type NIC struct {
	ID     string     // netdev and device id; also names the NIC in errors
	Model  string     // default virtio-net-pci (virtio-net-device on microvm)
	MAC    string     // optional, e.g. 52:54:00:12:34:56
	Queues []*os.File // one fd per tap queue; the caller keeps ownership
	Vhost  string     // auto (default), on or off

	// Bus places the device; Hotplug fills it with a free root port on q35.
	Bus string
}

// User is the identity QEMU runs as.
type User struct {
	UID, GID uint32
	Groups   []uint32 // supplementary groups (e.g. kvm); none if empty
	Name     string   // for messages; may be empty
}

func (u *User) String() string {
	if u.Name != "" {
		return fmt.Sprintf("%s (uid %d, gid %d)", u.Name, u.UID, u.GID)
	}
	return fmt.Sprintf("uid %d (gid %d)", u.UID, u.GID)
}

func (s *Spec) name() string {
	if s.Name == "" {
		return "vm"
	}
	return "vm " + s.Name
}

// withDefaults returns a copy of s with defaults filled in and the input
// checked; errors name the VM and the field.
func (s Spec) withDefaults() (Spec, error) {
	if s.Binary == "" {
		s.Binary = DefaultBinary
	}
	if s.Machine == "" {
		s.Machine = MachineQ35
	}
	if s.Accel == "" {
		s.Accel = AccelAuto
	}
	if s.CPUs == 0 {
		s.CPUs = 1
	}
	if s.MemoryMiB == 0 {
		s.MemoryMiB = 256
	}
	if s.ConsoleLines == 0 {
		s.ConsoleLines = 200
	}
	if s.PowerdownGrace == 0 {
		s.PowerdownGrace = 3 * time.Second
	}
	n := s.name()
	disks := make([]Disk, len(s.Disks))
	for i, d := range s.Disks {
		d, err := d.withDefaults(i, s.RunDir)
		if err != nil {
			return s, fmt.Errorf("%s: %w", n, err)
		}
		disks[i] = d
	}
	s.Disks = disks
	switch s.Machine {
	case MachinePC, MachineQ35, MachineMicroVM:
	default:
		return s, fmt.Errorf("%s: machine %q is not one of pc, q35, microvm", n, s.Machine)
	}
	switch s.Accel {
	case AccelAuto, AccelKVM, AccelTCG:
	default:
		return s, fmt.Errorf("%s: accel %q is not one of auto, kvm, tcg", n, s.Accel)
	}
	if s.CPUs < 1 || s.CPUs > 255 {
		return s, fmt.Errorf("%s: cpus %d out of range 1..255", n, s.CPUs)
	}
	if s.MemoryMiB < 32 {
		return s, fmt.Errorf("%s: memory %d MiB is too small (at least 32)", n, s.MemoryMiB)
	}
	if s.Kernel == "" && len(s.Disks) == 0 {
		return s, fmt.Errorf("%s: neither kernel nor disk given: nothing to boot", n)
	}
	if s.Kernel == "" && (s.Initrd != "" || s.Append != "") {
		return s, fmt.Errorf("%s: initrd/append need a kernel", n)
	}
	if s.RunDir == "" {
		return s, fmt.Errorf("%s: no run directory for the QMP socket", n)
	}
	// sun_path holds 108 bytes including the terminating NUL.
	if p := filepath.Join(s.RunDir, "console.sock"); len(p) > 107 { // room for qmp.sock and a control socket
		return s, fmt.Errorf("%s: run dir %s is too long for unix sockets in it (%s is %d bytes, at most 107)", n, s.RunDir, p, len(p))
	}
	if len(s.ControlSocket) > 107 {
		return s, fmt.Errorf("%s: control socket path %s is %d bytes, at most 107", n, s.ControlSocket, len(s.ControlSocket))
	}
	if len(s.AgentSocket) > 107 {
		return s, fmt.Errorf("%s: guest agent socket path %s is %d bytes, at most 107", n, s.AgentSocket, len(s.AgentSocket))
	}
	if s.AgentSocket != "" && filepath.Dir(filepath.Clean(s.AgentSocket)) != filepath.Clean(s.RunDir) {
		return s, fmt.Errorf("%s: guest agent socket %s is not in the run dir %s", n, s.AgentSocket, s.RunDir)
	}
	if s.ControlSocket != "" && filepath.Dir(filepath.Clean(s.ControlSocket)) != filepath.Clean(s.RunDir) {
		return s, fmt.Errorf("%s: control socket %s is not in the run dir %s", n, s.ControlSocket, s.RunDir)
	}
	if s.ConsoleMax != 0 && s.ConsoleMax < logcap.MinMax {
		return s, fmt.Errorf("%s: console log cap %d bytes is below the minimum %d", n, s.ConsoleMax, logcap.MinMax)
	}
	if s.HotplugPorts < 0 || s.HotplugPorts > 32 {
		return s, fmt.Errorf("%s: hotplug ports %d out of range 0..32", n, s.HotplugPorts)
	}
	if s.HotplugPorts > 0 && s.Machine != MachineQ35 {
		return s, fmt.Errorf("%s: hotplug ports need machine q35 (have %s)", n, s.Machine)
	}
	if strings.ContainsAny(s.Name, ",= \t\n") {
		return s, fmt.Errorf("%s: name must not contain commas, '=' or spaces", n)
	}
	seen := map[string]bool{}
	nics := make([]NIC, len(s.NICs))
	for i, nic := range s.NICs {
		nic, err := nic.withDefaults(s.Machine)
		if err != nil {
			return s, fmt.Errorf("%s: %w", n, err)
		}
		if seen[nic.ID] {
			return s, fmt.Errorf("%s: nic id %q used twice", n, nic.ID)
		}
		seen[nic.ID] = true
		nics[i] = nic
	}
	s.NICs = nics
	return s, nil
}

func (nic NIC) withDefaults(machine string) (NIC, error) {
	if nic.ID == "" {
		return nic, fmt.Errorf("nic without id")
	}
	if !validID(nic.ID) {
		return nic, fmt.Errorf("nic %q: id must start with a letter and hold only letters, digits, '-', '_' or '.' (at most 32)", nic.ID)
	}
	if nic.Model == "" {
		nic.Model = ModelVirtioPCI
		if machine == MachineMicroVM {
			nic.Model = ModelVirtioDevice
		}
	}
	if machine == MachineMicroVM && nic.Model != ModelVirtioDevice {
		return nic, fmt.Errorf("nic %s: microvm has no PCI bus; use model %s, not %s", nic.ID, ModelVirtioDevice, nic.Model)
	}
	if nic.Vhost == "" {
		nic.Vhost = VhostAuto
	}
	switch nic.Vhost {
	case VhostAuto, VhostOn, VhostOff:
	default:
		return nic, fmt.Errorf("nic %s: vhost %q is not one of auto, on, off", nic.ID, nic.Vhost)
	}
	if len(nic.Queues) == 0 {
		return nic, fmt.Errorf("nic %s: no tap queue fds", nic.ID)
	}
	if len(nic.Queues) > 1 && !isVirtio(nic.Model) {
		return nic, fmt.Errorf("nic %s: model %s has one queue but %d tap queues were given; use %s or a single queue", nic.ID, nic.Model, len(nic.Queues), ModelVirtioPCI)
	}
	for i, f := range nic.Queues {
		if f == nil {
			return nic, fmt.Errorf("nic %s: tap queue %d is nil", nic.ID, i)
		}
	}
	if nic.MAC != "" && !validMAC(nic.MAC) {
		return nic, fmt.Errorf("nic %s: mac %q is not of the form 52:54:00:12:34:56", nic.ID, nic.MAC)
	}
	if strings.ContainsAny(nic.Bus+nic.Model, ", =") {
		return nic, fmt.Errorf("nic %s: model/bus must not contain commas, '=' or spaces", nic.ID)
	}
	return nic, nil
}

func isVirtio(model string) bool {
	return model == ModelVirtioPCI || model == ModelVirtioDevice
}

func validID(id string) bool {
	if len(id) == 0 || len(id) > 32 {
		return false
	}
	for i, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case i > 0 && (c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'):
		default:
			return false
		}
	}
	return true
}

func validMAC(mac string) bool {
	if len(mac) != 17 {
		return false
	}
	for i := 0; i < 17; i++ {
		c := mac[i]
		if i%3 == 2 {
			if c != ':' {
				return false
			}
			continue
		}
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}
