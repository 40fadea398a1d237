package vmconfig

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
)

// resolver builds the Lab and does the checks across objects.
type resolver struct {
	p        *parser
	lab      *Lab
	labOK    bool
	ifnames  map[string]string // netns + "\x00" + name -> where it was first used
	macs     map[string]string
	addrs    map[netip.Addr]string
	networks map[string]*Network
	vms      map[string]*VM
	nicPaths map[*NIC]string
	udp      map[netip.AddrPort]string

	hosts     map[string]*Host
	hostAddrs map[netip.Addr]string // address -> host name
	hostsOK   bool                  // the [[host]] tables parsed without error
	vniPaths  map[*Network]string
	vniSet    map[*Network]bool
	mtuPaths  map[*Network]string
	linkPaths map[*Link]string
	linkOpts  map[*Link][2]string // paths of port and key of a [[link]], "" when not given
	diskPaths map[*Disk]string    // where each disk is set in the file
}

func (r *resolver) where(path string) string {
	pos := r.p.at(path)
	return fmt.Sprintf("line %d", pos.Line)
}

// claimIfName reports a name used twice in one namespace.
func (r *resolver) claimIfName(netns, name, path, what string) {
	k := netns + "\x00" + name
	if first, dup := r.ifnames[k]; dup {
		r.p.errorf(path, "%sinterface name %q is already used at %s: names must be unique", what, name, first)
		return
	}
	r.ifnames[k] = r.where(path)
}

func (r *resolver) claimAddr(a netip.Addr, path, what string) {
	if first, dup := r.addrs[a]; dup {
		r.p.errorf(path, "%saddress %s is already used at %s", what, a, first)
		return
	}
	r.addrs[a] = r.where(path)
}

// objectName reads the name every named table has (required, of the
// names grammar, unique among the tables of its kind: first tells where a
// name was defined first) and, on success, makes later messages about
// the table name it ("network \"lan\": ..."). kind is the word for
// messages ("VM"), label the one that prefixes them ("vm").
func (r *resolver) objectName(t *table, kind, label string, first func(string) (Pos, bool)) (string, bool) {
	name := t.str("name")
	if !name.set {
		if _, has := t.m["name"]; !has {
			r.p.errorf(t.path, "%sname is required", t.what)
		}
		return "", false
	}
	if err := checkName(kind, name.v); err != nil {
		t.errorf("name", "%v", err)
		return "", false
	}
	if pos, dup := first(name.v); dup {
		t.errorf("name", "%s %q is defined twice (first at line %d): rename one", kind, name.v, pos.Line)
		return "", false
	}
	t.what = fmt.Sprintf("%s %q: ", label, name.v)
	return name.v, true
}

func (r *resolver) network(t *table) {
	n := &Network{Pos: r.p.at(t.path)}
	var ok bool
	n.Name, ok = r.objectName(t, "network", "network", func(name string) (Pos, bool) {
		if first := r.networks[name]; first != nil {
			return first.Pos, true
		}
		return Pos{}, false
	})
	bridge := t.str("bridge")
	switch {
	case bridge.set:
		if err := checkIfName(bridge.v); err != nil {
			t.errorf("bridge", "bridge: %v", err)
		} else {
			n.Bridge, n.BridgeExplicit = bridge.v, true
		}
	case ok && r.labOK:
		n.Bridge = r.lab.Name + "-" + n.Name
		if len(n.Bridge) > IfNameMax {
			t.errorf("name", "derived bridge name %q is %d bytes, more than Linux allows (%d): set bridge = \"...\" or shorten the lab or network name",
				n.Bridge, len(n.Bridge), IfNameMax)
			n.Bridge = ""
		}
	}
	if n.Bridge != "" {
		where := "name" // a derived bridge name comes from the network name
		if bridge.set {
			where = "bridge"
		}
		r.claimIfName("", n.Bridge, t.key(where), t.what)
	}
	mtu := t.integer("mtu", 68, 65535)
	n.MTU = DefaultMTU
	if mtu.set {
		n.MTU = mtu.v
	}
	addrs := t.prefixes("addresses")
	n.Addresses = addrs.v
	for i, a := range n.Addresses {
		r.claimAddr(a.Addr(), indexPath(addrs.path, i), t.what)
		if a.Addr().Is6() && !a.Addr().Is4In6() && n.MTU < 1280 {
			t.errorf("mtu", "mtu %d is below 1280, the minimum for IPv6 address %s: raise mtu or drop the address", n.MTU, a)
		}
	}
	n.VLANFiltering = t.boolean("vlan_filtering").v
	pvid := t.integer("default_pvid", 1, 4094)
	n.DefaultPVID = 1
	if pvid.set {
		n.DefaultPVID = pvid.v
		if !n.VLANFiltering {
			t.warnf("default_pvid", "default_pvid has no effect without vlan_filtering = true")
		}
	}
	n.STP = t.boolean("stp").v
	n.Transparent = t.boolean("transparent").v
	if n.STP && n.Transparent {
		t.errorf("transparent", "transparent = true forwards STP frames like a wire, which contradicts stp = true: drop one of them")
	}
	n.Qdisc = pick(t.enum("qdisc", qdiscs), "noqueue")
	var im Impairment
	if r.impairKeys(t, &im) {
		if err := im.Check(); err != nil {
			t.errorf(firstImpairKey(t), "%v", err)
		} else {
			n.Impairment = &im
		}
	}
	vni := t.integer("vni", 1, MaxVNI)
	switch {
	case vni.set:
		n.VNI = vni.v
		r.vniSet[n] = true
		r.vniPaths[n] = vni.path
	case ok && r.labOK:
		n.VNI = DeriveVNI(r.lab.Name, n.Name)
		r.vniPaths[n] = t.key("name")
	}
	r.mtuPaths[n] = t.path
	if mtu.set {
		r.mtuPaths[n] = mtu.path
	}
	t.finish(networkKeys)
	if ok {
		r.networks[n.Name] = n
		r.lab.Networks = append(r.lab.Networks, n)
	}
}

func (r *resolver) vm(t *table, defaults vmFields) {
	p := r.p
	vm := &VM{Pos: p.at(t.path)}
	var ok bool
	vm.Name, ok = r.objectName(t, "VM", "vm", func(name string) (Pos, bool) {
		if first := r.vms[name]; first != nil {
			return first.Pos, true
		}
		return Pos{}, false
	})
	r.vmHost(t, vm)
	own := p.readVMFields(t)
	// What to boot comes from one place: a VM's own image replaces the
	// default kernel, initrd and disk, and its own kernel or disk
	// replaces a default image.
	if own.image.set {
		defaults.kernel, defaults.initrd, defaults.disk, defaults.diskFormat = field[string]{}, field[string]{}, field[string]{}, field[string]{}
	}
	if own.kernel.set || own.disk.set {
		defaults.image = field[string]{}
	}
	f := own.or(defaults)
	// Messages about merged values name the VM even when the key is in
	// [defaults], where t.what would not.
	what := t.what
	errorf := func(path, format string, args ...any) { p.errorf(path, what+format, args...) }
	warnf := func(path, format string, args ...any) { p.warnf(path, what+format, args...) }

	vm.CPUs = pick(f.cpus, DefaultCPUs)
	vm.MemoryMiB = pick(f.memory, DefaultMemory)
	vm.Kernel, vm.Initrd, vm.Append = f.kernel.v, f.initrd.v, f.appendArgs.v
	vm.Machine = pick(f.machine, DefaultMachine)
	vm.Accel = pick(f.accel, DefaultAccel)
	vm.Boot = pick(f.boot, DefaultBoot)
	vm.QEMU = pick(f.qemu, DefaultQEMU)
	vm.User = f.user.v
	vm.ExtraArgs = f.extraArgs.v
	vm.Command = f.command.v
	vm.Gateways = f.gateways.v
	if !f.kernel.set {
		if f.initrd.set {
			errorf(f.initrd.path, "initrd needs kernel: QEMU only loads an initrd together with -kernel")
		}
	}
	r.disks(vm, f, errorf)
	if !f.kernel.set {
		// Without kernel and boot disk the VM boots vmnet's test image,
		// whose kernel command line append extends.
		if f.appendArgs.set && vm.Disk != "" {
			errorf(f.appendArgs.path, "append needs kernel: QEMU only passes a command line together with -kernel, not to a disk boot")
		}
	}
	vm.Image, vm.UserData, vm.DNS = f.image.v, f.userData.v, f.dns.v
	if vm.Image != "" {
		for _, k := range []struct {
			set  bool
			path string
			name string
		}{{f.kernel.set, f.kernel.path, "kernel"}, {vm.Disk != "", r.diskPaths[firstDisk(vm)], "a boot disk"}, {f.initrd.set, f.initrd.path, "initrd"}} {
			if k.set {
				errorf(k.path, "%s and image = %q both say what to boot: keep one", k.name, vm.Image)
			}
		}
		if f.command.set {
			errorf(f.command.path, "command runs only in vmnet's test image, not in image = %q: use `vmnet run` or `vmnet sh`", vm.Image)
		}
	}
	if vm.Image != "" {
		vm.ImageMode = pick(f.diskMode, DiskOverlay)
		if vm.ImageMode == DiskPersistent {
			errorf(f.diskMode.path, "disk_mode = %q would write vmnet's cached image %s, which every VM of that image shares: use overlay (the default) or snapshot", DiskPersistent, vm.Image)
		}
	}
	vm.CloudInit = pick(f.cloudInit, vm.Image == ImageDebian12)
	if vm.UserData != "" && !vm.CloudInit {
		errorf(f.userData.path, "user_data needs a cloud-init seed: use image = %q or set cloud_init = true for your own cloud image", ImageDebian12)
	}
	if len(vm.DNS) > 0 && !vm.CloudInit {
		errorf(f.dns.path, "dns is given to the guest through cloud-init: use image = %q or set cloud_init = true", ImageDebian12)
	}
	switch {
	case f.readiness.set:
		vm.Readiness = f.readiness.v
	case vm.Image == ImageDebian12:
		vm.Readiness = ReadyAgent
	case vm.Kernel == "" && vm.Disk == "":
		vm.Readiness = ReadyConsole
	default:
		vm.Readiness = ReadyNone
	}
	if vm.Readiness == ReadyConsole && (vm.Kernel != "" || vm.Disk != "" || vm.Image != "") {
		errorf(f.readiness.path, "readiness = \"console\" waits for the ready marker of vmnet's test image, which this VM does not boot: use agent, ssh or none")
	}
	if f.console.set {
		vm.Console = f.console.v
	} else if ok {
		vm.Console = filepath.Join(r.lab.StateDir, vm.Name+".console")
	}

	var nics []*table
	if v, has := t.get("nic"); has {
		nics = p.tables(t.key("nic"), "nic", v)
	}
	for i, nt := range nics {
		nt.what = fmt.Sprintf("%snic %d: ", what, i)
		if nic := r.nic(nt, vm, i); nic != nil {
			vm.NICs = append(vm.NICs, nic)
		}
	}
	for _, gw := range vm.Gateways {
		reachable := false
		for _, nic := range vm.NICs {
			for _, a := range nic.Addresses {
				if a.Masked().Contains(gw) {
					reachable = true
				}
			}
		}
		if !reachable {
			warnf(f.gateways.path, "gateway %s is not inside any NIC address of this VM; the guest cannot reach it", gw)
		}
	}
	hints := map[string]string{}
	for _, k := range nicKeys {
		if !contains(vmKeys, k) {
			hints[k] = fmt.Sprintf("%s is a NIC key: put it in a [[vm.nic]] table", k)
		}
	}
	t.finishHint(append(append([]string{}, vmOnlyKeys...), vmKeys...), hints)
	if ok {
		r.vms[vm.Name] = vm
		r.lab.VMs = append(r.lab.VMs, vm)
	}
}

// disks resolves a VM's disks: disk = "..." (its boot disk) or the
// [[vm.disk]] tables, each with the VM's disk_format and disk_mode as
// defaults (the format otherwise follows the file name's extension).
// firstDisk is the VM's first disk, or nil.
func firstDisk(vm *VM) *Disk {
	if len(vm.Disks) == 0 {
		return nil
	}
	return vm.Disks[0]
}

func (r *resolver) disks(vm *VM, f vmFields, errorf func(path, format string, args ...any)) {
	mode := pick(f.diskMode, DiskOverlay)
	if f.disk.set {
		d := &Disk{Path: f.disk.v, Format: f.diskFormat.v, Mode: mode, Boot: true, Pos: r.p.at(f.disk.path)}
		if d.Format == "" {
			d.Format = diskFormatOf(d.Path)
		}
		vm.Disks = append(vm.Disks, d)
		r.diskPaths[d] = f.disk.path
	}
	for i, dt := range f.disks.v {
		if !dt.path.set {
			continue
		}
		d := &Disk{Path: dt.path.v, Format: dt.format.v, Mode: pick(dt.mode, mode), ReadOnly: dt.readOnly.v, Boot: dt.boot.v, Pos: dt.pos}
		if d.Format == "" {
			d.Format = pick(f.diskFormat, diskFormatOf(d.Path))
		}
		if d.ReadOnly {
			d.Mode = ""
		}
		if d.Boot {
			switch {
			case i > 0:
				errorf(dt.boot.path, "disk %d: only the first [[vm.disk]] can be the boot disk (it is attached first, as vda); move this table to the top", i)
			case f.kernel.set:
				errorf(dt.boot.path, "disk %d: boot = true, but the VM boots the kernel it names; remove boot or kernel", i)
			}
		}
		vm.Disks = append(vm.Disks, d)
		r.diskPaths[d] = dt.path.path
	}
	if len(vm.Disks) > 0 && vm.Disks[0].Boot {
		vm.Disk, vm.DiskFormat = vm.Disks[0].Path, vm.Disks[0].Format
	}
	if f.disk.set && f.kernel.set {
		// A kernel boots; the disk is then simply the guest's vda.
		vm.Disks[0].Boot = false
	}
	// One image attached twice to one VM and written through one of the
	// attachments: the write corrupts what the other one caches (and
	// QEMU's image lock refuses it anyway).
	for i, d := range vm.Disks {
		for _, e := range vm.Disks[:i] {
			if e.Path == d.Path && (d.Writes() || e.Writes()) {
				errorf(r.diskPaths[d], "disk %s is attached twice and written (mode persistent) through one of them; attach it once", d.Path)
			}
		}
	}
}

// finishDisks refuses an image that one VM writes (mode persistent) and
// another VM of the lab uses in any way: QEMU would refuse the second
// one's start (image locking), and without the lock the image breaks.
func (r *resolver) finishDisks() {
	type use struct {
		vm   *VM
		path string
	}
	writer := map[string]use{}
	for _, vm := range r.lab.VMs {
		for _, d := range vm.Disks {
			if _, ok := writer[d.Path]; d.Writes() && !ok {
				writer[d.Path] = use{vm, r.diskPaths[d]}
			}
		}
	}
	for _, vm := range r.lab.VMs {
		for _, d := range vm.Disks {
			w, ok := writer[d.Path]
			if !ok || w.vm == vm {
				continue
			}
			how := "reads"
			if d.Writes() {
				how = "writes"
			}
			r.p.errorf(r.diskPaths[d], "vm %q: disk %s is written by vm %q (mode persistent, %s) and this VM %s it too: two running VMs cannot share an image one of them writes; give each VM its own copy, or use mode overlay (the default) or snapshot in both",
				vm.Name, d.Path, w.vm.Name, r.where(w.path), how)
		}
	}
}

func pick[T any](f field[T], def T) T {
	if f.set {
		return f.v
	}
	return def
}

func diskFormatOf(path string) string {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".qcow2", ".qcow":
		return "qcow2"
	case ".vmdk":
		return "vmdk"
	case ".vdi":
		return "vdi"
	case ".vhdx":
		return "vhdx"
	}
	return "raw"
}

func isVirtio(model string) bool { return strings.HasPrefix(model, "virtio-") }

// DeriveMAC returns the default MAC of a NIC: stable across runs and
// machines, locally administered and unicast.
func DeriveMAC(lab, vm string, index int) net.HardwareAddr {
	sum := sha256.Sum256([]byte(lab + "\x00" + vm + "\x00" + strconv.Itoa(index)))
	mac := net.HardwareAddr(sum[:6:6])
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}

func (r *resolver) nic(t *table, vm *VM, index int) *NIC {
	p := r.p
	n := &NIC{VM: vm.Name, Index: index, Pos: p.at(t.path)}
	network := t.str("network")
	if !network.set {
		if r.nicPaths == nil {
			r.nicPaths = map[*NIC]string{}
		}
		r.nicPaths[n] = t.path
	}
	var nw *Network
	if network.set {
		nw = r.networks[network.v]
		if nw == nil {
			var names []string
			for _, nn := range r.lab.Networks {
				names = append(names, nn.Name)
			}
			hint := "no networks are defined"
			if len(names) > 0 {
				hint = "defined networks: " + strings.Join(names, ", ")
			}
			t.errorf("network", "network %q is not defined (%s): add a [[network]] with that name or fix the name", network.v, hint)
		} else {
			n.Network = nw.Name
		}
	}

	mac := t.str("mac")
	if mac.set {
		hw, err := parseMAC(mac.v)
		if err != nil {
			t.errorf("mac", "mac %q: %v", mac.v, err)
		} else {
			n.MAC = hw
		}
	} else if r.labOK && vm.Name != "" {
		n.MAC = DeriveMAC(r.lab.Name, vm.Name, index)
	}
	if n.MAC != nil {
		path := mac.path
		if !mac.set {
			path = t.path
		}
		if first, dup := r.macs[n.MAC.String()]; dup {
			p.errorf(path, "%smac %s is already used at %s: every NIC needs its own MAC", t.what, n.MAC, first)
		} else {
			r.macs[n.MAC.String()] = r.where(path)
		}
	}

	model := t.enum("model", models)
	n.Model = DefaultModel
	if vm.Machine == "microvm" {
		n.Model = "virtio-net-device"
	}
	if model.set {
		n.Model = model.v
		if vm.Machine == "microvm" && n.Model != "virtio-net-device" {
			t.errorf("model", "model %s is a PCI device but machine microvm has no PCI bus: use model = \"virtio-net-device\" or another machine", n.Model)
		}
		if vm.Machine != "microvm" && n.Model == "virtio-net-device" {
			t.errorf("model", "model virtio-net-device needs machine = \"microvm\"; on %s use virtio-net-pci", vm.Machine)
		}
	}

	queues := t.integer("queues", 1, MaxQueues)
	n.Queues = 1
	if isVirtio(n.Model) {
		n.Queues = min(vm.CPUs, MaxQueues)
	}
	if queues.set {
		n.Queues = queues.v
		if n.Queues > 1 && !isVirtio(n.Model) {
			t.errorf("queues", "queues = %d needs a virtio model; %s has a single queue", n.Queues, n.Model)
		} else if n.Queues > vm.CPUs {
			t.warnf("queues", "queues = %d is more than cpus = %d; the guest only uses %d queue pairs", n.Queues, vm.CPUs, vm.CPUs)
		}
	}

	vh := t.boolean("vnet_hdr")
	n.VnetHdr = !vh.set || vh.v

	n.OffloadsAuto = true
	if v, has := t.get("offloads"); has {
		_, isStr := v.(string)
		_, isList := v.([]any)
		if s, _ := v.(string); s == "auto" {
			// default
		} else if isStr || isList {
			list, paths := t.strList("offloads")
			n.OffloadsAuto = false
			n.Offloads = r.offloads(t, list.v, paths, list.path)
			if len(n.Offloads) > 0 && !n.VnetHdr {
				t.errorf("offloads", "offloads need vnet_hdr = true: the offload metadata travels in the virtio-net header")
			}
		} else {
			t.errorf("offloads", "offloads must be \"auto\", one offload or a list of %s", strings.Join(offloadList, ", "))
		}
	}

	vhost := t.enum("vhost", vhostModes)
	n.Vhost = pick(vhost, "auto")
	if n.Vhost == "on" {
		if !isVirtio(n.Model) {
			t.errorf("vhost", "vhost = \"on\" needs a virtio model, not %s", n.Model)
		} else if !n.VnetHdr {
			t.errorf("vhost", "vhost = \"on\" needs vnet_hdr = true")
		}
	}

	vlan := t.integer("vlan", 1, 4094)
	n.VLAN = vlan.v
	tagged, tpaths := t.vlanList("tagged")
	n.Tagged = tagged.v
	if vlan.set || tagged.set {
		k := "vlan"
		if !vlan.set {
			k = "tagged"
		}
		switch {
		case nw == nil && network.set:
		case nw == nil:
			t.errorf(k, "%s needs a network; a NIC used by a link carries whatever frames the link gives it", k)
		case !nw.VLANFiltering:
			t.errorf(k, "%s needs vlan_filtering = true on network %q", k, nw.Name)
		}
	}
	seen := map[int]bool{}
	for i, v := range n.Tagged {
		if seen[v] {
			p.errorf(tpaths[i], "%stagged VLAN %d is listed twice", t.what, v)
		}
		if vlan.set && v == n.VLAN {
			p.errorf(tpaths[i], "%sVLAN %d is both the untagged vlan (PVID) and tagged: pick one", t.what, v)
		}
		seen[v] = true
	}

	mtu := t.integer("mtu", 68, 65535)
	n.MTU = DefaultMTU
	if nw != nil {
		n.MTU = nw.MTU
	}
	if mtu.set {
		n.MTU = mtu.v
		if nw != nil && n.MTU != nw.MTU {
			t.warnf("mtu", "mtu %d differs from network %q mtu %d; frames larger than the smaller one are dropped", n.MTU, nw.Name, nw.MTU)
		}
	}

	ifname := t.str("ifname")
	switch {
	case ifname.set:
		if err := checkIfName(ifname.v); err != nil {
			t.errorf("ifname", "ifname: %v", err)
		} else {
			n.IfName = ifname.v
		}
	case r.labOK && vm.Name != "":
		n.IfName = fmt.Sprintf("%s-%s-%d", r.lab.Name, vm.Name, index)
		if len(n.IfName) > IfNameMax {
			p.errorf(t.path, "%sderived tap name %q is %d bytes, more than Linux allows (%d): set ifname = \"...\" or shorten the lab or VM name",
				t.what, n.IfName, len(n.IfName), IfNameMax)
			n.IfName = ""
		}
	}
	if n.IfName != "" {
		path := ifname.path
		if !ifname.set {
			path = t.path
		}
		r.claimIfName("", n.IfName, path, t.what)
	}

	qdisc := t.enum("qdisc", qdiscs)
	n.Qdisc = "noqueue"
	if nw != nil {
		n.Qdisc = nw.Qdisc
	}
	n.Qdisc = pick(qdisc, n.Qdisc)
	r.nicImpairment(t, n, nw, network.set, qdisc.set)

	addrs := t.prefixes("address")
	n.Addresses = addrs.v
	for i, a := range n.Addresses {
		r.claimAddr(a.Addr(), indexPath(addrs.path, i), t.what)
		if nw != nil {
			if subnets := outsideSubnets(a, nw.Addresses); subnets != "" {
				r.p.warnf(indexPath(addrs.path, i), "%saddress %s is outside every subnet of network %q (%s): the guest cannot reach the host or other guests there without a router; use an address in %s, or add its subnet to the network's addresses",
					t.what, a, nw.Name, subnets, subnets)
			}
		}
	}
	t.finish(nicKeys)
	return n
}

func (r *resolver) offloads(t *table, list, paths []string, path string) []string {
	want := map[string]bool{}
	for i, o := range list {
		switch {
		case !contains(offloadList, o):
			r.p.errorf(paths[i], "%sunknown offload %q: use \"auto\" or a list of %s", t.what, o, strings.Join(offloadList, ", "))
		case want[o]:
			r.p.errorf(paths[i], "%soffload %q is listed twice", t.what, o)
		}
		want[o] = true
	}
	// The tun driver refuses these combinations (TUNSETOFFLOAD).
	for _, o := range offloadList[1:] {
		if want[o] && !want["csum"] {
			r.p.errorf(path, "%soffload %s needs csum: add \"csum\" to offloads", t.what, o)
		}
	}
	if want["tso_ecn"] && !want["tso4"] && !want["tso6"] {
		r.p.errorf(path, "%soffload tso_ecn needs tso4 or tso6", t.what)
	}
	out := []string{}
	for _, o := range offloadList {
		if want[o] {
			out = append(out, o)
		}
	}
	return out
}

func parseMAC(s string) (net.HardwareAddr, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return nil, errors.New("want six hex bytes like \"52:54:00:12:34:56\"")
	}
	if hw[0]&1 != 0 {
		return nil, errors.New("has the multicast bit set (lowest bit of the first byte): use a unicast MAC such as 52:54:00:xx:xx:xx")
	}
	if string(hw) == "\x00\x00\x00\x00\x00\x00" {
		return nil, errors.New("the all-zero MAC is not usable")
	}
	return hw, nil
}

func (r *resolver) link(t *table) {
	p := r.p
	idx := len(r.lab.Links)
	l := &Link{Pos: p.at(t.path)}
	ok := true
	ends := []*Endpoint{&l.A, &l.B}
	keys := []string{"a", "b"}
	var parsed [2]bool
	for i, k := range keys {
		s := t.str(k)
		if !s.set {
			if _, has := t.m[k]; !has {
				p.errorf(t.path, "%s%s is required: both ends of a link must be given", t.what, k)
			}
			ok = false
			continue
		}
		e, err := parseEndpoint(s.v)
		if err != nil {
			t.errorf(k, "%s = %q: %v", k, s.v, err)
			ok = false
			continue
		}
		*ends[i] = e
		parsed[i] = true
	}
	if ok && l.A == l.B {
		t.errorf("b", "both ends are %s: a link needs two different endpoints", l.A)
		ok = false
		parsed = [2]bool{}
	}
	for i, k := range keys {
		if parsed[i] && !r.endpoint(t, k, ends[i], l) {
			ok = false
		}
	}
	pcap := t.str("pcap")
	if pcap.set {
		if pcap.v == "" {
			t.errorf("pcap", "pcap is empty: remove it or name a file")
		} else {
			l.PCAP = p.abs(pcap.v)
		}
	}
	l.Datapath = pick(t.enum("datapath", Datapaths), DatapathAuto)
	var opts [2]string
	if port := t.integer("port", 1, 65535); port.set {
		l.Port, opts[0] = port.v, t.key("port")
	}
	if key := t.str("key"); key.set {
		if err := checkKeyPath(key.v); err != nil {
			t.errorf("key", "%v", err)
		} else {
			l.Key = p.abs(key.v) // relative to the lab file, like every path in it
		}
		opts[1] = t.key("key")
	}
	r.linkOpts[l] = opts
	l.AtoB, l.BtoA = r.impairments(t)
	t.finish(linkKeys)
	r.linkPaths[l] = t.path
	if ok {
		l.Index = idx
		r.lab.Links = append(r.lab.Links, l)
	}
}

// endpoint checks an endpoint against the rest of the lab and fills in
// defaults.
func (r *resolver) endpoint(t *table, k string, e *Endpoint, l *Link) bool {
	switch e.Kind {
	case KindTap:
		if e.Queues == 0 {
			e.Queues = 1
		}
		if e.VnetHdr == Unset {
			e.VnetHdr = On
		}
		r.claimIfName(e.NetNS, e.Name, t.key(k), t.what)
	case KindUDP:
		if r.udp == nil {
			r.udp = map[netip.AddrPort]string{}
		}
		if first, dup := r.udp[e.Local]; dup {
			t.errorf(k, "local UDP address %s is already used at %s", e.Local, first)
			return false
		}
		r.udp[e.Local] = r.where(t.key(k))
		if e.Key != "" {
			e.Key = r.p.abs(e.Key) // relative to the lab file, like every path in it
		}
	case KindVXLAN:
		// The vxlan device would outlive a supervisor that is killed, and
		// `vmnet down` knows only the lab's own devices.
		t.errorf(k, "%s: vxlan endpoints are for `vmnet link`; in a lab, reach VMs on other hosts with [[host]] entries (their networks then span hosts over VXLAN), or use a udp endpoint", e)
		return false
	case KindVM:
		vm := r.vms[e.Name]
		if vm == nil {
			t.errorf(k, "%s: there is no VM named %q: add a [[vm]] with that name or fix the name", e, e.Name)
			return false
		}
		if e.NIC >= len(vm.NICs) {
			t.errorf(k, "%s: VM %q has %d NICs (indexes from 0): add a [[vm.nic]] without network to it", e, e.Name, len(vm.NICs))
			return false
		}
		nic := vm.NICs[e.NIC]
		if nic.Network != "" {
			t.errorf(k, "%s: that NIC is on network %q; a NIC used by a link must have no network", e, nic.Network)
			return false
		}
		if nic.Link != nil {
			t.errorf(k, "%s: that NIC is already used by the link at line %d", e, nic.Link.Pos.Line)
			return false
		}
		nic.Link = l
	}
	return true
}

// finishLinks warns about NICs that are connected to nothing.
func (r *resolver) finishLinks() {
	for _, vm := range r.lab.VMs {
		for _, n := range vm.NICs {
			if path, unwired := r.nicPaths[n]; unwired && n.Link == nil {
				r.p.warnf(path, "vm %q: nic %d: has no network and no [[link]] uses it (vm:%s:%d): it is not connected to anything",
					vm.Name, n.Index, vm.Name, n.Index)
			}
		}
	}
}

// outsideSubnets returns the network's subnets of a's address family, for
// a message, when a lies outside all of them; "" when a is inside one or
// the network has no address of that family (then vmnet cannot know the
// guest's subnet).
func outsideSubnets(a netip.Prefix, network []netip.Prefix) string {
	var same []string
	for _, n := range network {
		if n.Addr().Is4() != a.Addr().Is4() {
			continue
		}
		if n.Masked().Contains(a.Addr()) {
			return ""
		}
		same = append(same, n.Masked().String())
	}
	return strings.Join(same, ", ")
}

// impairments reads a [[link]]'s impairment keys: those on the link for
// both directions, then a_to_b and b_to_a tables that override them key
// by key. A direction without any key gets nil (no stage).
func (r *resolver) impairments(t *table) (ab, ba *Impairment) {
	var both Impairment
	bothSet := r.impairKeys(t, &both)
	out := [2]*Impairment{}
	for i, k := range DirKeys {
		im, set := both, bothSet
		if v, ok := t.get(k); ok {
			sub := r.p.newTable(t.key(k), t.what+k+": ", v)
			if sub.m != nil {
				set = r.impairKeys(sub, &im) || set
				sub.finish(ImpairmentKeys)
			}
		}
		if !set {
			continue
		}
		if err := im.Check(); err != nil {
			t.errorf(k, "%s: %v", k, err)
			continue
		}
		out[i] = &im
	}
	return out[0], out[1]
}

// nicImpairment reads a [[vm.nic]]'s impairment keys on top of its
// network's. They become tc netem/tbf on the tap, so they need a network:
// a NIC at the end of a [[link]] is impaired on the link.
func (r *resolver) nicImpairment(t *table, n *NIC, nw *Network, hasNetwork, qdiscSet bool) {
	var im Impairment
	inherited := nw != nil && nw.Impairment != nil
	if inherited {
		im = *nw.Impairment
	}
	own := r.impairKeys(t, &im)
	switch {
	case own && !hasNetwork:
		t.errorf(firstImpairKey(t), "impairments on a NIC act on its tap's qdisc and need a network; "+
			"a NIC used by a [[link]] is impaired on the link: move the keys to the [[link]] (or its a_to_b / b_to_a table)")
		return
	case !own && !inherited:
		return
	case own && qdiscSet:
		t.errorf("qdisc", "qdisc and impairments both choose the tap's root qdisc (impairments make it netem or tbf): drop qdisc")
		return
	}
	if err := im.Check(); err != nil {
		t.errorf(firstImpairKey(t), "%v", err)
		return
	}
	n.Impairment = &im
}

// firstImpairKey is the first impairment key t has, for positions.
func firstImpairKey(t *table) string {
	for _, k := range ImpairmentKeys {
		if _, ok := t.m[k]; ok {
			return k
		}
	}
	return ""
}

// impairKeys parses the impairment keys of t into im and reports whether
// any was given.
func (r *resolver) impairKeys(t *table, im *Impairment) bool {
	set := false
	for _, k := range ImpairmentKeys {
		s := t.str(k)
		if !s.set {
			continue
		}
		set = true
		if err := SetImpairment(im, k, s.v); err != nil {
			t.errorf(k, "%s: %v", k, err)
		}
	}
	return set
}
