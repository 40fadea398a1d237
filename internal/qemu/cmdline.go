package qemu

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Files vmnet keeps in Spec.RunDir. The console has no socket file: it is
// a socketpair.
const (
	QMPSocketName = "qmp.sock"
	PidfileName   = "qemu.pid"
)

// Sandbox is QEMU's seccomp filter, on unless the extra arguments bring
// their own -sandbox: no obsolete system calls, no setuid/setgid, no
// fork/exec, no scheduler or CPU-affinity changes.
const Sandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// Handles are the files vmnet opens for QEMU so that QEMU needs no access
// to any path: sockets root bound in a directory only root can write, and
// the boot files.
type Handles struct {
	Console *os.File // QEMU's end of the console socketpair (ttyS0)
	QMP     *os.File // listening QMP socket
	Control *os.File // listening socket of ttyS1; needed when Spec.ControlSocket is set
	// Kernel and Initrd, if set, are passed as /proc/self/fd/N instead of
	// their paths: an unprivileged QEMU then reads them without needing
	// to reach their directories (the image cache sits in root's home).
	Kernel, Initrd *os.File
	Agent          *os.File // listening socket of the guest agent; needed when Spec.AgentSocket is set
}

// Host is what the command line depends on besides the Spec. Start fills
// it from the machine; tests fill it by hand.
type Host struct {
	KVM       bool   // KVM can run guests here (ProbeKVM)
	KVMReason string // why not, for the note when accel=auto falls back
	// KVMUserReason, if set, says why QEMU's user cannot open /dev/kvm
	// although root could: accel auto then falls back to TCG.
	KVMUserReason string

	VhostNet bool // /dev/vhost-net exists
	// OpenVhost opens /dev/vhost-net once; called once per queue of every
	// NIC that uses vhost.
	OpenVhost func() (*os.File, error)

	// TSCkHz is the host TSC rate (0 unknown). A microvm under TCG gets it
	// as tsc_early_khz; see hostTSCkHz.
	TSCkHz int

	Handles Handles
	// Disks are the open images of Spec.Disks, one for one (Start opens
	// them, after making overlays).
	Disks []DiskFiles
}

// Cmdline is a complete QEMU invocation.
type Cmdline struct {
	Binary string
	Args   []string
	// Files become exec.Cmd.ExtraFiles: Files[i] is fd 3+i inside QEMU.
	Files []*os.File
	// Opened are the Files the builder opened itself (vhost-net fds); the
	// caller closes them once QEMU has started (or failed to).
	Opened []*os.File
	Accel  string   // resolved accelerator: kvm or tcg
	Notes  []string // one-time notes for the log
	Spec   Spec     // the spec with defaults filled in
}

// Close closes the files the builder opened.
func (c *Cmdline) Close() {
	for _, f := range c.Opened {
		f.Close()
	}
	c.Opened = nil
}

// qemuPath escapes a path for a QEMU option value (commas are doubled).
func qemuPath(p string) string { return strings.ReplaceAll(p, ",", ",,") }

// BuildCmdline turns a Spec into QEMU arguments and the fds QEMU inherits.
// Apart from h.OpenVhost it has no side effects.
func BuildCmdline(s Spec, h Host) (_ *Cmdline, err error) {
	s, err = s.withDefaults()
	if err != nil {
		return nil, err
	}
	hd := h.Handles
	if hd.Console == nil || hd.QMP == nil || (s.ControlSocket != "" && hd.Control == nil) || (s.AgentSocket != "" && hd.Agent == nil) {
		return nil, fmt.Errorf("%s: console, QMP, control or agent socket not opened", s.name())
	}
	c := &Cmdline{Binary: s.Binary, Spec: s}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	a := func(args ...string) { c.Args = append(c.Args, args...) }
	fd := func(f *os.File) string {
		c.Files = append(c.Files, f)
		return strconv.Itoa(3 + len(c.Files) - 1)
	}

	if s.Name != "" {
		a("-name", s.Name)
	}
	a("-nodefaults", "-no-user-config", "-display", "none", "-no-reboot")
	if !slices.Contains(s.ExtraArgs, "-sandbox") {
		a("-sandbox", Sandbox)
	}
	if s.RAM != nil {
		share := "off"
		if s.RAMShared {
			share = "on"
		}
		// The file goes by fd: QEMU's user need not reach the cache
		// directory, only open the file (which it must own: QEMU 7.2
		// opens it read-write even for a private mapping).
		a("-object", fmt.Sprintf("memory-backend-file,id=vmnet-ram,size=%dM,mem-path=/proc/self/fd/%s,share=%s", s.MemoryMiB, fd(s.RAM), share),
			"-machine", s.Machine+",memory-backend=vmnet-ram")
	} else {
		a("-machine", s.Machine)
	}

	c.Accel = s.Accel
	if c.Accel == AccelAuto {
		c.Accel = AccelTCG
		if h.KVM && h.KVMUserReason != "" {
			c.Notes = append(c.Notes, "accel auto: using TCG (software emulation): "+h.KVMUserReason)
		} else if h.KVM {
			c.Accel = AccelKVM
		} else {
			why := h.KVMReason
			if why == "" {
				why = "KVM not usable"
			}
			c.Notes = append(c.Notes, "accel auto: using TCG (software emulation): "+why)
		}
	}
	a("-accel", c.Accel)
	if c.Accel == AccelKVM {
		a("-cpu", "host")
	}
	a("-smp", strconv.Itoa(s.CPUs), "-m", strconv.Itoa(s.MemoryMiB))

	if s.Kernel != "" {
		kernel, initrd := qemuPath(s.Kernel), qemuPath(s.Initrd)
		if hd.Kernel != nil {
			kernel = "/proc/self/fd/" + fd(hd.Kernel)
		}
		if hd.Initrd != nil {
			initrd = "/proc/self/fd/" + fd(hd.Initrd)
		}
		a("-kernel", kernel)
		if s.Initrd != "" {
			a("-initrd", initrd)
		}
		app := s.Append
		if s.Machine == MachineMicroVM && c.Accel == AccelTCG && h.TSCkHz > 0 && !strings.Contains(app, "tsc_early_khz=") {
			app = strings.TrimSpace(app + " tsc_early_khz=" + strconv.Itoa(h.TSCkHz))
			c.Notes = append(c.Notes, "microvm under TCG: telling the guest the TSC rate (tsc_early_khz), since it has no timer to calibrate against")
		}
		if app != "" {
			a("-append", app)
		}
	}

	// Every socket is vmnet's: the console is one end of a socketpair, so
	// no early output is lost; QMP and the control port are listening
	// sockets vmnet bound, served by QEMU. QEMU needs no directory it can
	// write, and vmnet knows QEMU's pid without a pidfile.
	a("-chardev", "socket,id=vmnet-console,fd="+fd(hd.Console), "-serial", "chardev:vmnet-console")
	if s.ControlSocket != "" {
		a("-chardev", "socket,id=vmnet-control,fd="+fd(hd.Control)+",server=on,wait=off", "-serial", "chardev:vmnet-control")
	}
	if s.AgentSocket != "" {
		vser := "virtio-serial-pci"
		if s.Machine == MachineMicroVM {
			vser = "virtio-serial-device"
		}
		a("-device", vser+",id=vmnet-vser",
			"-chardev", "socket,id=vmnet-agent,fd="+fd(hd.Agent)+",server=on,wait=off",
			"-device", "virtserialport,bus=vmnet-vser.0,chardev=vmnet-agent,name=org.qemu.guest_agent.0")
	}
	a("-chardev", "socket,id=vmnet-qmp,fd="+fd(hd.QMP)+",server=on,wait=off", "-mon", "chardev=vmnet-qmp,mode=control")

	// Disks come as fd sets of files vmnet opened (see DiskFiles).
	if len(h.Disks) != len(s.Disks) {
		return nil, fmt.Errorf("%s: %d disks but %d opened", s.name(), len(s.Disks), len(h.Disks))
	}
	for i, d := range s.Disks {
		args, err := diskArgs(i, d, h.Disks[i], s.Machine, fd)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.name(), err)
		}
		a(args...)
	}

	for i := 0; i < s.HotplugPorts; i++ {
		a("-device", fmt.Sprintf("pcie-root-port,id=%s,chassis=%d", hotplugPort(i), i+1))
	}

	vhostNoted := false
	for _, nic := range s.NICs {
		useVhost, note, err := vhostMode(nic, h)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.name(), err)
		}
		if note != "" && !vhostNoted {
			c.Notes = append(c.Notes, note)
			vhostNoted = true
		}
		var fds, vfds []string
		for _, f := range nic.Queues {
			fds = append(fds, fd(f))
		}
		if useVhost {
			for q := range nic.Queues {
				f, err := h.OpenVhost()
				if err != nil {
					return nil, fmt.Errorf("%s: nic %s: open /dev/vhost-net for queue %d: %w", s.name(), nic.ID, q, err)
				}
				c.Opened = append(c.Opened, f)
				vfds = append(vfds, fd(f))
			}
		}
		a("-netdev", netdevArg(nic.ID, fds, vfds))
		a("-device", deviceArg(nic, s.Machine))
	}
	if s.VMGenID {
		a("-device", "vmgenid")
	}
	if s.Incoming != nil {
		// Restore waits for the x-ignore-shared capability (the RAM is in
		// the file, only the device state is in the stream; QEMU 7.2 has
		// no property to set it on the command line) and sends the state.
		a("-incoming", "defer")
	}
	a(s.ExtraArgs...)
	return c, nil
}

// hotplugPort names the i-th reserved root port.
func hotplugPort(i int) string { return "vmnet-hp" + strconv.Itoa(i) }

// vhostMode decides vhost for one NIC. QEMU 7.2 aborts on vhost=on without
// /dev/vhost-net instead of falling back, so the check happens here.
func vhostMode(nic NIC, h Host) (bool, string, error) {
	switch nic.Vhost {
	case VhostOff:
		return false, "", nil
	case VhostOn:
		if !h.VhostNet || h.OpenVhost == nil {
			return false, "", fmt.Errorf("nic %s: vhost=on needs /dev/vhost-net, which this host lacks (load the vhost_net module; the kernel needs CONFIG_VHOST_NET) or set vhost to auto or off", nic.ID)
		}
		return true, "", nil
	default:
		if !h.VhostNet || h.OpenVhost == nil {
			return false, "vhost auto: /dev/vhost-net missing (kernel without CONFIG_VHOST_NET or module not loaded): QEMU moves packets itself (vhost=off)", nil
		}
		return true, "", nil
	}
}

func netdevArg(id string, fds, vfds []string) string {
	var b strings.Builder
	b.WriteString("tap,id=" + id)
	if len(fds) == 1 {
		b.WriteString(",fd=" + fds[0])
	} else {
		b.WriteString(",fds=" + strings.Join(fds, ":"))
	}
	if len(vfds) == 0 {
		b.WriteString(",vhost=off")
		return b.String()
	}
	b.WriteString(",vhost=on")
	if len(vfds) == 1 {
		b.WriteString(",vhostfd=" + vfds[0])
	} else {
		b.WriteString(",vhostfds=" + strings.Join(vfds, ":"))
	}
	return b.String()
}

func deviceArg(nic NIC, machine string) string {
	var b strings.Builder
	b.WriteString(nic.Model + ",netdev=" + nic.ID + ",id=" + nic.ID)
	if nic.Bus != "" {
		b.WriteString(",bus=" + nic.Bus)
	}
	if nic.MAC != "" {
		b.WriteString(",mac=" + nic.MAC)
	}
	if n := len(nic.Queues); n > 1 {
		b.WriteString(",mq=on")
		if nic.Model == ModelVirtioPCI {
			// One vector per rx and tx queue, one for config, one for control.
			b.WriteString(",vectors=" + strconv.Itoa(2*n+2))
		}
	}
	return b.String()
}
