package qemu

import (
	"os"
	"slices"
	"strings"
	"testing"
)

func devNull(t *testing.T, n int) []*os.File {
	t.Helper()
	var fs []*os.File
	for i := 0; i < n; i++ {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		fs = append(fs, f)
	}
	return fs
}

func baseSpec(t *testing.T) Spec {
	return Spec{Name: "r1", Kernel: "/k", Initrd: "/i", Append: "console=ttyS0", RunDir: "/run/vmnet/r1", CPUs: 2, MemoryMiB: 512}
}

// argAfter returns the values that follow every occurrence of flag.
func argsAfter(args []string, flag string) []string {
	var v []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			v = append(v, args[i+1])
		}
	}
	return v
}

// handles fills h.Handles with stand-ins: console fd 3, QMP fd 4, and
// the control socket (if any) after them.
func handles(t *testing.T, h Host) Host {
	f := devNull(t, 3)
	h.Handles = Handles{Console: f[0], QMP: f[1], Control: f[2]}
	return h
}

func build(t *testing.T, s Spec, h Host) *Cmdline {
	t.Helper()
	h = handles(t, h)
	c, err := BuildCmdline(s, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestCmdlineBasics(t *testing.T) {
	s := baseSpec(t)
	c := build(t, s, Host{})
	for _, want := range [][]string{
		{"-nodefaults"}, {"-no-user-config"}, {"-display", "none"}, {"-no-reboot"},
		{"-machine", "q35"}, {"-accel", "tcg"}, {"-smp", "2"}, {"-m", "512"},
		{"-kernel", "/k"}, {"-initrd", "/i"}, {"-append", "console=ttyS0"},
		{"-chardev", "socket,id=vmnet-console,fd=3"},
		{"-serial", "chardev:vmnet-console"},
		{"-chardev", "socket,id=vmnet-qmp,fd=4,server=on,wait=off"},
		{"-mon", "chardev=vmnet-qmp,mode=control"},
		{"-sandbox", Sandbox},
	} {
		found := false
		for i := range c.Args {
			if i+len(want) <= len(c.Args) && slices.Equal(c.Args[i:i+len(want)], want) {
				found = true
			}
		}
		if !found {
			t.Errorf("missing %q in %q", want, c.Args)
		}
	}
	if c.Accel != AccelTCG || len(c.Notes) != 1 || !strings.Contains(c.Notes[0], "TCG") {
		t.Errorf("accel auto without KVM: accel %s notes %q", c.Accel, c.Notes)
	}
	if slices.Contains(c.Args, "-cpu") {
		t.Errorf("TCG got a -cpu: %q", c.Args)
	}

	c = build(t, s, Host{KVM: true})
	if c.Accel != AccelKVM || !slices.Contains(c.Args, "host") || len(c.Notes) != 0 {
		t.Errorf("accel auto with KVM: accel %s args %q notes %q", c.Accel, c.Args, c.Notes)
	}
	// KVM works for root but not for QEMU's user: TCG, and the note says why.
	c = build(t, s, Host{KVM: true, KVMUserReason: "QEMU's user nobody cannot open /dev/kvm"})
	if c.Accel != AccelTCG || len(c.Notes) != 1 || !strings.Contains(c.Notes[0], "cannot open /dev/kvm") {
		t.Errorf("accel auto, KVM closed to QEMU's user: accel %s notes %q", c.Accel, c.Notes)
	}
	s.Accel = AccelTCG
	if c := build(t, s, Host{KVM: true}); c.Accel != AccelTCG {
		t.Errorf("explicit tcg overridden: %s", c.Accel)
	}
}

func TestCmdlineQueueFDsAndVectors(t *testing.T) {
	s := baseSpec(t)
	n0, n1, n2 := devNull(t, 2), devNull(t, 3), devNull(t, 1)
	s.NICs = []NIC{
		{ID: "n0", MAC: "52:54:00:00:00:01", Queues: n0},
		{ID: "n1", Queues: n1, Vhost: VhostOff},
		{ID: "n2", Model: "e1000e", Queues: n2},
	}
	c := build(t, s, Host{})
	netdevs := argsAfter(c.Args, "-netdev")
	want := []string{
		"tap,id=n0,fds=5:6,vhost=off",
		"tap,id=n1,fds=7:8:9,vhost=off",
		"tap,id=n2,fd=10,vhost=off",
	}
	if !slices.Equal(netdevs, want) {
		t.Errorf("netdevs\n got %q\nwant %q", netdevs, want)
	}
	devs := argsAfter(c.Args, "-device")
	wantDevs := []string{
		"virtio-net-pci,netdev=n0,id=n0,mac=52:54:00:00:00:01,mq=on,vectors=6",
		"virtio-net-pci,netdev=n1,id=n1,mq=on,vectors=8",
		"e1000e,netdev=n2,id=n2",
	}
	if !slices.Equal(devs, wantDevs) {
		t.Errorf("devices\n got %q\nwant %q", devs, wantDevs)
	}
	// Files[i] must be fd 3+i.
	wantFiles := append(append(append([]*os.File{c.Files[0], c.Files[1]}, n0...), n1...), n2...)
	if !slices.Equal(c.Files, wantFiles) {
		t.Errorf("ExtraFiles order wrong")
	}
	if len(c.Opened) != 0 {
		t.Errorf("builder opened files without vhost")
	}
}

func TestCmdlineMicroVM(t *testing.T) {
	s := baseSpec(t)
	s.Machine = MachineMicroVM
	s.NICs = []NIC{{ID: "n0", Queues: devNull(t, 2)}}
	c := build(t, s, Host{})
	if got := argsAfter(c.Args, "-device"); !slices.Equal(got, []string{"virtio-net-device,netdev=n0,id=n0,mq=on"}) {
		t.Errorf("microvm device %q", got)
	}
	if got := argsAfter(c.Args, "-append"); got[0] != "console=ttyS0" {
		t.Errorf("append changed without a TSC rate: %q", got)
	}
	c = build(t, s, Host{TSCkHz: 2000000})
	if got := argsAfter(c.Args, "-append"); got[0] != "console=ttyS0 tsc_early_khz=2000000" {
		t.Errorf("microvm under TCG needs the TSC rate: %q", got)
	}
	c = build(t, s, Host{TSCkHz: 2000000, KVM: true})
	if got := argsAfter(c.Args, "-append"); got[0] != "console=ttyS0" {
		t.Errorf("TSC rate added under KVM: %q", got)
	}
	s.NICs = []NIC{{ID: "n0", Model: ModelVirtioPCI, Queues: devNull(t, 1)}}
	if _, err := BuildCmdline(s, handles(t, Host{})); err == nil || !strings.Contains(err.Error(), "virtio-net-device") {
		t.Errorf("virtio-net-pci on microvm: %v", err)
	}
	s.NICs = nil
	s.HotplugPorts = 1
	if _, err := BuildCmdline(s, handles(t, Host{})); err == nil || !strings.Contains(err.Error(), "q35") {
		t.Errorf("hotplug ports on microvm: %v", err)
	}
}

func TestCmdlineVhost(t *testing.T) {
	s := baseSpec(t)
	s.NICs = []NIC{{ID: "a", Queues: devNull(t, 2)}, {ID: "b", Queues: devNull(t, 1)}}

	// auto without /dev/vhost-net: off, one note for all NICs.
	c := build(t, s, Host{})
	if got := argsAfter(c.Args, "-netdev"); !slices.Equal(got, []string{"tap,id=a,fds=5:6,vhost=off", "tap,id=b,fd=7,vhost=off"}) {
		t.Errorf("auto fallback: %q", got)
	}
	vhostNotes := 0
	for _, n := range c.Notes {
		if strings.Contains(n, "vhost") {
			vhostNotes++
		}
	}
	if vhostNotes != 1 {
		t.Errorf("want one vhost note, got %q", c.Notes)
	}

	// on without the device: an error that says what is missing.
	s.NICs[0].Vhost = VhostOn
	_, err := BuildCmdline(s, handles(t, Host{}))
	if err == nil || !strings.Contains(err.Error(), "/dev/vhost-net") || !strings.Contains(err.Error(), "CONFIG_VHOST_NET") || !strings.Contains(err.Error(), "nic a") {
		t.Errorf("vhost=on without device: %v", err)
	}

	// With the device: one vhost fd per queue, after the NIC's queues.
	opened := 0
	h := Host{VhostNet: true, OpenVhost: func() (*os.File, error) { opened++; return os.Open(os.DevNull) }}
	s.NICs[1].Vhost = VhostOff
	c = build(t, s, h)
	if got := argsAfter(c.Args, "-netdev"); !slices.Equal(got, []string{"tap,id=a,fds=5:6,vhost=on,vhostfds=7:8", "tap,id=b,fd=9,vhost=off"}) {
		t.Errorf("vhost on: %q", got)
	}
	if opened != 2 || len(c.Opened) != 2 || len(c.Files) != 7 || c.Files[4] != c.Opened[0] || c.Files[5] != c.Opened[1] {
		t.Errorf("vhost files: opened %d, Opened %d, Files %d", opened, len(c.Opened), len(c.Files))
	}
	c.Close()
	if _, err := c.Files[4].Stat(); err == nil {
		t.Errorf("Close left a vhost fd open")
	}
}

func TestCmdlineHotplugPorts(t *testing.T) {
	s := baseSpec(t)
	s.HotplugPorts = 3
	c := build(t, s, Host{})
	got := argsAfter(c.Args, "-device")
	want := []string{
		"pcie-root-port,id=vmnet-hp0,chassis=1",
		"pcie-root-port,id=vmnet-hp1,chassis=2",
		"pcie-root-port,id=vmnet-hp2,chassis=3",
	}
	if !slices.Equal(got, want) {
		t.Errorf("root ports %q", got)
	}
	s.Machine = MachinePC
	if _, err := BuildCmdline(s, handles(t, Host{})); err == nil {
		t.Errorf("hotplug ports accepted on pc")
	}
}

func TestCmdlineControlAndPaths(t *testing.T) {
	s := baseSpec(t)
	s.RunDir = "/run/a,b"
	s.ControlSocket = "/run/a,b/ctl.sock"
	c := build(t, s, Host{})
	serials := argsAfter(c.Args, "-serial")
	if !slices.Equal(serials, []string{"chardev:vmnet-console", "chardev:vmnet-control"}) {
		t.Errorf("serials %q (console must be ttyS0, control ttyS1)", serials)
	}
	// QEMU gets vmnet's sockets as fds and no path it could write to.
	if got := argsAfter(c.Args, "-chardev"); !slices.Equal(got, []string{"socket,id=vmnet-console,fd=3",
		"socket,id=vmnet-control,fd=4,server=on,wait=off", "socket,id=vmnet-qmp,fd=5,server=on,wait=off"}) {
		t.Errorf("chardevs %q", got)
	}
	for _, f := range []string{"-qmp", "-pidfile", "-monitor"} {
		if slices.Contains(c.Args, f) {
			t.Errorf("%s in %q: QEMU would create files", f, c.Args)
		}
	}

	// Kernel and initrd handed over as fds are read through /proc/self/fd.
	h := handles(t, Host{})
	ki := devNull(t, 2)
	h.Handles.Kernel, h.Handles.Initrd = ki[0], ki[1]
	c, err := BuildCmdline(baseSpec(t), h)
	if err != nil {
		t.Fatal(err)
	}
	if k, i := argsAfter(c.Args, "-kernel"), argsAfter(c.Args, "-initrd"); k[0] != "/proc/self/fd/3" || i[0] != "/proc/self/fd/4" ||
		c.Files[0] != ki[0] || c.Files[1] != ki[1] {
		t.Errorf("kernel %q initrd %q", k, i)
	}
	if !strings.Contains(strings.Join(c.Args, " "), "socket,id=vmnet-console,fd=5") {
		t.Errorf("console fd after the boot files: %q", c.Args)
	}

	// Sockets vmnet did not open are an error, not a path for QEMU.
	if _, err := BuildCmdline(baseSpec(t), Host{}); err == nil || !strings.Contains(err.Error(), "not opened") {
		t.Errorf("no handles: %v", err)
	}
}

// The seccomp sandbox is on unless the lab's extra arguments set their own.
func TestCmdlineSandbox(t *testing.T) {
	s := baseSpec(t)
	if got := argsAfter(build(t, s, Host{}).Args, "-sandbox"); !slices.Equal(got, []string{"on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"}) {
		t.Errorf("sandbox %q", got)
	}
	s.ExtraArgs = []string{"-sandbox", "off"}
	if got := argsAfter(build(t, s, Host{}).Args, "-sandbox"); !slices.Equal(got, []string{"off"}) {
		t.Errorf("extra -sandbox off: %q", got)
	}
}

func TestSpecErrors(t *testing.T) {
	one := devNull(t, 1)
	two := devNull(t, 2)
	for _, tc := range []struct {
		mod  func(*Spec)
		want string
	}{
		{func(s *Spec) { s.Machine = "virt" }, `machine "virt"`},
		{func(s *Spec) { s.Accel = "hvf" }, `accel "hvf"`},
		{func(s *Spec) { s.Kernel = ""; s.Initrd = ""; s.Append = "" }, "nothing to boot"},
		{func(s *Spec) { s.RunDir = "" }, "no run directory"},
		{func(s *Spec) { s.NICs = []NIC{{ID: "n0"}} }, "nic n0: no tap queue"},
		{func(s *Spec) { s.NICs = []NIC{{ID: "n0", Queues: one}, {ID: "n0", Queues: one}} }, "used twice"},
		{func(s *Spec) { s.NICs = []NIC{{ID: "n,0", Queues: one}} }, "id must start"},
		{func(s *Spec) { s.NICs = []NIC{{ID: "n0", Queues: one, MAC: "zz"}} }, "mac"},
		{func(s *Spec) { s.NICs = []NIC{{ID: "n0", Queues: one, Vhost: "yes"}} }, "vhost"},
		{func(s *Spec) { s.NICs = []NIC{{ID: "n0", Model: "e1000e", Queues: two}} }, "e1000e has one queue"},
		{func(s *Spec) { s.CPUs = 1000 }, "cpus"},
		{func(s *Spec) { s.RunDir = "/" + strings.Repeat("d", 100) }, "too long for unix sockets"},
		{func(s *Spec) { s.ControlSocket = "/tmp/ctl.sock" }, "not in the run dir"},
	} {
		s := baseSpec(t)
		tc.mod(&s)
		_, err := BuildCmdline(s, handles(t, Host{}))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "vm r1") {
			t.Errorf("want error with %q naming vm r1, got %v", tc.want, err)
		}
	}
}

// TestCmdlineDisks: every disk reaches QEMU as fd sets in order; an
// overlay names its base's fd set in place of the path it records,
// snapshot mode is QEMU's snapshot=on, and only a persistent disk's image
// is handed over writable.
func TestCmdlineDisks(t *testing.T) {
	s := baseSpec(t)
	s.Disks = []Disk{
		{Path: "/img/base,1.qcow2", Format: "qcow2"}, // overlay by default
		{Path: "/img/snap.raw", Mode: DiskSnapshot},
		{Path: "/img/data.raw", Mode: DiskPersistent},
		{Path: "/img/ro.iso", Mode: DiskPersistent, ReadOnly: true},
	}
	f := devNull(t, 7)
	h := Host{Disks: []DiskFiles{
		{TopRW: f[0], TopRO: f[1], Base: f[2]},
		{TopRO: f[3]},
		{TopRW: f[4], TopRO: f[5]},
		{TopRO: f[6]},
	}}
	c := build(t, s, h)
	// Console 3, QMP 4; the disks' files follow in order.
	wantFds := []string{"fd=5,set=1", "fd=6,set=1", "fd=7,set=2", "fd=8,set=3", "fd=9,set=5", "fd=10,set=5", "fd=11,set=7"}
	if got := argsAfter(c.Args, "-add-fd"); !slices.Equal(got, wantFds) {
		t.Errorf("add-fd %q, want %q", got, wantFds)
	}
	wantDrives := []string{
		"id=vmnet-disk0,if=virtio,file=/dev/fdset/1,format=qcow2,backing.driver=qcow2,backing.file.filename=/dev/fdset/2",
		"id=vmnet-disk1,if=virtio,file=/dev/fdset/3,format=raw,snapshot=on",
		"id=vmnet-disk2,if=virtio,file=/dev/fdset/5,format=raw",
		"id=vmnet-disk3,if=virtio,file=/dev/fdset/7,format=raw,readonly=on",
	}
	if got := argsAfter(c.Args, "-drive"); !slices.Equal(got, wantDrives) {
		t.Errorf("drives\n%q\nwant\n%q", got, wantDrives)
	}
	for i, want := range []*os.File{f[0], f[1], f[2], f[3], f[4], f[5], f[6]} {
		if c.Files[2+i] != want {
			t.Errorf("inherited fd %d is not the disk file %d", 5+i, i)
		}
	}
	if strings.Contains(strings.Join(c.Args, " "), "/img/") {
		t.Errorf("an image path reached QEMU's command line: %q", c.Args)
	}
	if got := c.Spec.Disks[0].Overlay; got != "/run/vmnet/r1/disk-0.qcow2" {
		t.Errorf("overlay %q, want it in the run dir", got)
	}

	// microvm has no PCI: virtio-blk-device on a bare drive.
	m := baseSpec(t)
	m.Machine = MachineMicroVM
	m.Disks = s.Disks[1:2]
	c = build(t, m, Host{Disks: h.Disks[1:2]})
	if got := argsAfter(c.Args, "-drive"); !slices.Equal(got, []string{"id=vmnet-disk0,if=none,file=/dev/fdset/1,format=raw,snapshot=on"}) ||
		!slices.Contains(argsAfter(c.Args, "-device"), "virtio-blk-device,drive=vmnet-disk0") {
		t.Errorf("microvm disk: %q", c.Args)
	}

	// A disk whose files were not opened, or a writable one opened
	// read-only, is refused rather than handed to QEMU by path.
	for _, bad := range []Host{{}, {Disks: []DiskFiles{{TopRO: f[0]}}}} {
		p := baseSpec(t)
		p.Disks = []Disk{{Path: "/img/data.raw", Mode: DiskPersistent}}
		if _, err := BuildCmdline(p, handles(t, bad)); err == nil {
			t.Errorf("disk without its files accepted: %+v", bad)
		}
	}
	for _, d := range []Disk{{Path: "/x", Mode: "copy"}, {Path: "/x", Format: "raw,file=/etc/shadow"}, {Format: "raw"},
		{Path: "/x", Overlay: "/elsewhere/o.qcow2"}} {
		p := baseSpec(t)
		p.Disks = []Disk{d}
		if _, err := BuildCmdline(p, handles(t, Host{Disks: h.Disks[:1]})); err == nil {
			t.Errorf("disk %+v accepted", d)
		}
	}
}

// TestCmdlineAgent: the guest agent gets a virtio-serial port named
// org.qemu.guest_agent.0 on vmnet's socket.
func TestCmdlineAgent(t *testing.T) {
	s := baseSpec(t)
	s.AgentSocket = s.RunDir + "/agent.sock"
	if _, err := BuildCmdline(s, handles(t, Host{})); err == nil {
		t.Error("agent socket without its listening fd accepted")
	}
	h := handles(t, Host{})
	h.Handles.Agent = devNull(t, 1)[0]
	mk := func(s Spec) *Cmdline {
		t.Helper()
		c, err := BuildCmdline(s, h)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := mk(s)
	devs := strings.Join(argsAfter(c.Args, "-device"), " ")
	if !strings.Contains(devs, "virtio-serial-pci,id=vmnet-vser") || !strings.Contains(devs, "virtserialport,bus=vmnet-vser.0,chardev=vmnet-agent,name=org.qemu.guest_agent.0") {
		t.Errorf("devices %q", devs)
	}
	if !slices.ContainsFunc(argsAfter(c.Args, "-chardev"), func(a string) bool {
		return strings.HasPrefix(a, "socket,id=vmnet-agent,fd=") && strings.HasSuffix(a, ",server=on,wait=off")
	}) {
		t.Errorf("chardevs %q", argsAfter(c.Args, "-chardev"))
	}
	s.Machine = MachineMicroVM
	c = mk(s)
	if d := strings.Join(argsAfter(c.Args, "-device"), " "); !strings.Contains(d, "virtio-serial-device") {
		t.Errorf("microvm devices %q", d)
	}
	s.AgentSocket = "/elsewhere/agent.sock"
	if _, err := BuildCmdline(s, h); err == nil || !strings.Contains(err.Error(), "not in the run dir") {
		t.Errorf("agent socket outside the run dir: %v", err)
	}
}
