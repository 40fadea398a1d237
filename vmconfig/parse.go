package vmconfig

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"
)

// Options changes how Parse checks a config.
type Options struct {
	// SkipFileChecks turns off the existence checks of kernel, initrd, disk
	// and qemu paths, for configs checked on another machine than the one
	// that will run them.
	SkipFileChecks bool
	// FileExists replaces the os.Stat based check; tests and fuzzing use it
	// to stay independent of the disk.
	FileExists func(path string) bool
	// Dir resolves relative paths; default: the directory of the file name.
	Dir string
	// StateRoot holds the default state directory, StateRoot/<lab name>,
	// of a lab without state_dir; default DefaultStateRoot. vmnet passes
	// the directory of the network namespace the lab is brought up in.
	StateRoot string
}

// DefaultStateRoot is the StateRoot when Options leave it empty.
const DefaultStateRoot = "/run/vmnet"

// Load reads and parses the config file at path. See Parse.
func Load(path string) (*Lab, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read lab file: %w", err)
	}
	return Parse(path, data, Options{})
}

// LoadWith is Load with options.
func LoadWith(path string, opts Options) (*Lab, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read lab file: %w", err)
	}
	return Parse(path, data, opts)
}

// Parse parses a config. filename is used in positions and, unless
// opts.Dir is set, to resolve relative paths. On any error it returns a nil
// Lab and a Problems value holding every error and warning found, sorted by
// position; otherwise Lab.Warnings holds the warnings.
func Parse(filename string, data []byte, opts Options) (*Lab, error) {
	p := &parser{file: filename, li: newLineIndex(filename, data), opts: opts}
	p.dir = opts.Dir
	if p.dir == "" {
		p.dir = filepath.Dir(filename)
	}
	if abs, err := filepath.Abs(p.dir); err == nil {
		p.dir = abs
	}
	lab := p.parse(data)
	probs := p.probs.sortDedup()
	if probs.HasErrors() {
		return nil, probs
	}
	if abs, err := filepath.Abs(filename); err == nil && filename != "" {
		lab.File = abs
	}
	lab.Warnings = probs
	return lab, nil
}

type parser struct {
	file  string
	dir   string
	li    *lineIndex
	keys  *keyScanner
	opts  Options
	probs Problems
}

// at finds the position of an indexed path, falling back to its parents
// (a missing key is reported at its table).
func (p *parser) at(path string) Pos {
	for path != "" {
		if p.keys != nil {
			if off, ok := p.keys.pos[path]; ok {
				return p.li.pos(off)
			}
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return p.li.pos(0)
}

func (p *parser) errorf(path, format string, args ...any) {
	p.probs = append(p.probs, Problem{Pos: p.at(path), Severity: Error, Msg: fmt.Sprintf(format, args...)})
}

func (p *parser) warnf(path, format string, args ...any) {
	p.probs = append(p.probs, Problem{Pos: p.at(path), Severity: Warning, Msg: fmt.Sprintf(format, args...)})
}

var (
	topKeys     = []string{"lab", "defaults", "host", "network", "vm", "link"}
	labKeys     = []string{"name", "state_dir", "ssh_authorized_keys"}
	networkKeys = append([]string{"name", "bridge", "mtu", "addresses", "vlan_filtering", "default_pvid", "stp", "transparent", "qdisc", "vni"},
		ImpairmentKeys...)
	vmOnlyKeys = []string{"name", "nic", "host"}
	vmKeys     = []string{"cpus", "memory", "kernel", "initrd", "append", "disk", "disk_format", "disk_mode", "machine", "accel",
		"qemu", "user", "extra_args", "console", "command", "gateway", "boot", "image", "readiness", "cloud_init", "user_data", "dns"}
	nicKeys = append([]string{"network", "mac", "queues", "vnet_hdr", "offloads", "model", "vhost", "vlan", "tagged", "mtu",
		"ifname", "address", "qdisc"}, ImpairmentKeys...)
	diskKeys = []string{"path", "format", "mode", "read_only", "boot"}
	linkKeys = append([]string{"a", "b", "pcap", "port", "key", "a_to_b", "b_to_a", "datapath"}, ImpairmentKeys...)

	machines   = []string{"pc", "q35", "microvm"}
	accels     = []string{"auto", "kvm", "tcg"}
	boots      = []string{"warm", "cold"}
	models     = []string{"virtio-net-pci", "virtio-net-device", "e1000e", "e1000", "rtl8139"}
	vhostModes = []string{"auto", "on", "off"}
	qdiscs     = []string{"noqueue", "default"} // tap.Qdiscs
	// Datapaths are the values of a [[link]]'s datapath key.
	Datapaths   = []string{DatapathAuto, DatapathUserspace}
	offloadList = []string{"csum", "tso4", "tso6", "tso_ecn", "ufo", "uso"}
	diskFormats = []string{"raw", "qcow2", "qed", "vmdk", "vdi", "vhdx", "vpc"}
	diskModes   = []string{DiskOverlay, DiskSnapshot, DiskPersistent}
	readinesses = []string{ReadyAgent, ReadyConsole, ReadySSH, ReadyNone}
)

func (p *parser) parse(data []byte) *Lab {
	var doc map[string]any
	if _, err := toml.Decode(string(data), &doc); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			pos := p.li.clamp(pe.Position.Line, pe.Position.Col)
			if strings.Contains(pe.Message, "has already been defined") {
				// toml points past the value; the key is what to fix.
				pos = p.li.firstNonBlank(pos)
			}
			p.probs = append(p.probs, Problem{Pos: pos, Severity: Error, Msg: "TOML syntax: " + pe.Message})
		} else {
			p.probs = append(p.probs, Problem{Pos: p.li.pos(0), Severity: Error, Msg: "TOML: " + err.Error()})
		}
		return nil
	}
	p.keys = scanKeys(data)
	top := &table{p: p, m: doc, used: map[string]bool{}}
	lab := &Lab{}

	labOK := false
	if v, ok := top.get("lab"); !ok {
		p.errorf("", "missing [lab] table: add [lab] with name = \"...\"")
	} else {
		t := p.newTable("lab", "[lab]: ", v)
		name := t.str("name")
		switch {
		case !name.set:
			if t.m != nil {
				p.errorf("lab", "[lab]: name is required: add name = \"...\" (it prefixes bridge and tap names)")
			}
		default:
			if err := checkName("lab", name.v); err != nil {
				p.errorf(name.path, "[lab]: %v", err)
			} else {
				lab.Name, labOK = name.v, true
			}
		}
		sd := t.str("state_dir")
		if sd.set && sd.v == "" {
			t.errorf("state_dir", "state_dir is empty: remove it or name a directory")
		}
		lab.StateDir = p.abs(sd.v)
		if !sd.set || sd.v == "" {
			root := p.opts.StateRoot
			if root == "" {
				root = DefaultStateRoot
			}
			lab.StateDir = filepath.Join(root, lab.Name)
		} else if within(p.dir, lab.StateDir) {
			// vmnet removes its state directory on teardown: never the
			// directory that holds the lab file (and its disk images).
			t.errorf("state_dir", "state_dir %q is %s, which holds the lab file; name a directory of its own that vmnet creates, e.g. %q",
				sd.v, lab.StateDir, "state")
		}
		keys, paths := t.strList("ssh_authorized_keys")
		for i, k := range keys.v {
			if f := strings.Fields(k); len(f) < 2 || !strings.HasPrefix(f[0], "ssh-") && !strings.HasPrefix(f[0], "ecdsa-") && !strings.HasPrefix(f[0], "sk-") {
				p.errorf(paths[i], "[lab]: ssh_authorized_keys[%d] is not an SSH public key (a line of a .pub file, like \"ssh-ed25519 AAAA... user@host\")", i)
				continue
			}
			lab.SSHAuthorizedKeys = append(lab.SSHAuthorizedKeys, strings.TrimSpace(k))
		}
		t.finish(labKeys)
	}

	var defaults vmFields
	if v, ok := top.get("defaults"); ok {
		t := p.newTable("defaults", "[defaults]: ", v)
		defaults = p.readVMFields(t)
		for _, k := range vmOnlyKeys {
			if _, ok := t.m[k]; ok {
				t.used[k] = true
				t.errorf(k, "%s cannot have a default; set it in each [[vm]]", k)
			}
		}
		t.finish(vmKeys)
	}

	r := &resolver{p: p, lab: lab, labOK: labOK, ifnames: map[string]string{}, macs: map[string]string{},
		addrs: map[netip.Addr]string{}, networks: map[string]*Network{}, vms: map[string]*VM{},
		hosts: map[string]*Host{}, hostAddrs: map[netip.Addr]string{}, vniPaths: map[*Network]string{},
		vniSet: map[*Network]bool{}, mtuPaths: map[*Network]string{}, linkPaths: map[*Link]string{},
		linkOpts: map[*Link][2]string{}, diskPaths: map[*Disk]string{}}
	r.hostsOK = true
	if v, ok := top.get("host"); ok {
		for _, t := range p.tables("host", "host", v) {
			r.host(t)
		}
		r.hostsOK = !p.probs.HasErrors()
	}
	if v, ok := top.get("network"); ok {
		for _, t := range p.tables("network", "network", v) {
			r.network(t)
		}
	}
	if v, ok := top.get("vm"); ok {
		for _, t := range p.tables("vm", "vm", v) {
			r.vm(t, defaults)
		}
	}
	if v, ok := top.get("link"); ok {
		for _, t := range p.tables("link", "link", v) {
			r.link(t)
		}
	}
	r.finishLinks()
	r.finishDisks()
	r.finishHosts()
	top.finish(topKeys)
	return lab
}

// within reports whether dir is ancestor or dir itself (both clean and
// absolute).
func within(dir, ancestor string) bool {
	return dir == ancestor || ancestor == "/" || strings.HasPrefix(dir, ancestor+"/")
}

// abs resolves a path from the config against the config's directory.
func (p *parser) abs(path string) string {
	if path == "" || filepath.IsAbs(path) {
		return filepath.Clean(path)
	}
	return filepath.Join(p.dir, path)
}

func (p *parser) exists(path string) bool {
	if p.opts.SkipFileChecks {
		return true
	}
	if p.opts.FileExists != nil {
		return p.opts.FileExists(path)
	}
	_, err := os.Stat(path)
	return err == nil
}

// vmFields are the [[vm]] keys that [defaults] may also set.
type vmFields struct {
	cpus, memory                                 field[int]
	kernel, initrd, appendArgs, disk, diskFormat field[string]
	diskMode                                     field[string]
	disks                                        field[[]diskTable] // [[vm.disk]]; set excludes disk
	machine, accel, qemu, user, console, command field[string]
	boot                                         field[string]
	extraArgs                                    field[[]string]
	gateways                                     field[[]netip.Addr]
	image, readiness, userData                   field[string]
	cloudInit                                    field[bool]
	dns                                          field[[]netip.Addr]
}

func (f vmFields) or(d vmFields) vmFields {
	if f.disk.set || f.disks.set {
		// A VM's own disks replace those of [defaults], in either form.
		d.disk, d.disks = field[string]{}, field[[]diskTable]{}
	}
	return vmFields{
		cpus: f.cpus.or(d.cpus), memory: f.memory.or(d.memory),
		kernel: f.kernel.or(d.kernel), initrd: f.initrd.or(d.initrd), appendArgs: f.appendArgs.or(d.appendArgs),
		disk: f.disk.or(d.disk), diskFormat: f.diskFormat.or(d.diskFormat), diskMode: f.diskMode.or(d.diskMode),
		disks:   f.disks.or(d.disks),
		machine: f.machine.or(d.machine), accel: f.accel.or(d.accel), qemu: f.qemu.or(d.qemu),
		user: f.user.or(d.user), console: f.console.or(d.console), command: f.command.or(d.command),
		extraArgs: f.extraArgs.or(d.extraArgs), gateways: f.gateways.or(d.gateways),
		boot:  f.boot.or(d.boot),
		image: f.image.or(d.image), readiness: f.readiness.or(d.readiness), userData: f.userData.or(d.userData),
		cloudInit: f.cloudInit.or(d.cloudInit), dns: f.dns.or(d.dns),
	}
}

// readVMFields reads and checks the values on their own; checks that need
// several fields happen once defaults are merged.
func (p *parser) readVMFields(t *table) vmFields {
	var f vmFields
	f.cpus = t.integer("cpus", 1, 255)
	f.memory = t.memory("memory")
	file := func(t *table, k string) field[string] {
		s := t.str(k)
		if !s.set {
			return s
		}
		if s.v == "" {
			t.errorf(k, "%s is empty: remove it or name a file", k)
			s.set = false
			return s
		}
		s.v = p.abs(s.v)
		if !p.exists(s.v) {
			t.errorf(k, "%s file %s does not exist (relative paths are relative to the config file's directory)", k, s.v)
		}
		return s
	}
	f.kernel = file(t, "kernel")
	f.initrd = file(t, "initrd")
	f.appendArgs = t.str("append")
	if v, ok := t.m["disk"]; ok && isTableArray(v) {
		t.used["disk"] = true
		f.disks = field[[]diskTable]{set: true, path: t.key("disk")}
		for i, dt := range p.tables(t.key("disk"), "disk", v) {
			dt.what = fmt.Sprintf("%sdisk %d: ", t.what, i)
			f.disks.v = append(f.disks.v, p.readDisk(dt, file))
		}
	} else {
		f.disk = file(t, "disk")
	}
	f.diskFormat = t.enum("disk_format", diskFormats)
	f.diskMode = t.enum("disk_mode", diskModes)
	f.machine = t.enum("machine", machines)
	f.accel = t.enum("accel", accels)
	f.boot = t.enum("boot", boots)
	f.qemu = t.str("qemu")
	if f.qemu.set {
		switch {
		case f.qemu.v == "":
			t.errorf("qemu", "qemu is empty: remove it to use %s from PATH", DefaultQEMU)
			f.qemu.set = false
		case strings.Contains(f.qemu.v, "/"):
			f.qemu.v = p.abs(f.qemu.v)
			if !p.exists(f.qemu.v) {
				t.errorf("qemu", "qemu binary %s does not exist; give a bare name to search PATH", f.qemu.v)
			}
		}
	}
	f.user = t.str("user")
	if f.user.set {
		u := f.user.v
		switch {
		case u == "" || strings.ContainsAny(u, " \t\n:/") || strings.HasPrefix(u, "-"):
			t.errorf("user", "user %q is not a valid user name", u)
			f.user.set = false
		case u == "root" || u == "0":
			t.warnf("user", "user = %q runs QEMU as root without confinement by a user of its own: a guest that escapes QEMU owns the host; remove user to run QEMU as vmnet's unprivileged user", u)
		}
	}
	f.extraArgs, _ = t.strList("extra_args")
	f.console = t.str("console")
	if f.console.set {
		if f.console.v == "" {
			t.errorf("console", "console is empty: remove it to log to the state directory")
			f.console.set = false
		} else {
			f.console.v = p.abs(f.console.v)
		}
	}
	f.command = t.str("command")
	gws, paths := t.strList("gateway")
	f.gateways = field[[]netip.Addr]{path: gws.path, set: gws.set}
	var fam [2]bool
	for i, s := range gws.v {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			p.errorf(paths[i], "%sgateway %q is not an IP address (without prefix length), like \"10.0.0.1\"", t.what, s)
			continue
		}
		a = a.Unmap()
		if fam[b2i(a.Is4())] {
			p.errorf(paths[i], "%sgateway %s: only one gateway per address family", t.what, a)
			continue
		}
		fam[b2i(a.Is4())] = true
		f.gateways.v = append(f.gateways.v, a)
	}
	f.image = t.str("image")
	if f.image.set && !contains(Images, f.image.v) {
		t.errorf("image", "unknown image %q: vmnet builds %s (or boot your own with disk = \"FILE\")", f.image.v, strings.Join(Images, ", "))
		f.image.set = false
	}
	f.readiness = t.enum("readiness", readinesses)
	f.cloudInit = t.boolean("cloud_init")
	f.userData = file(t, "user_data")
	dns, dpaths := t.strList("dns")
	f.dns = field[[]netip.Addr]{path: dns.path, set: dns.set}
	for i, s := range dns.v {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			p.errorf(dpaths[i], "%sdns %q is not an IP address, like \"10.0.0.1\"", t.what, s)
			continue
		}
		f.dns.v = append(f.dns.v, a.Unmap())
	}
	return f
}

// diskTable is one [[vm.disk]] as read, before the VM's defaults apply.
type diskTable struct {
	path, format, mode field[string]
	readOnly, boot     field[bool]
	pos                Pos
}

// isTableArray reports whether v is what [[x]] or x = [{...}] decodes to.
func isTableArray(v any) bool {
	switch v := v.(type) {
	case []map[string]any:
		return true
	case []any:
		return len(v) > 0 && func() bool { _, ok := v[0].(map[string]any); return ok }()
	}
	return false
}

// readDisk reads one [[vm.disk]] table.
func (p *parser) readDisk(t *table, file func(*table, string) field[string]) diskTable {
	d := diskTable{pos: p.at(t.path)}
	d.path = file(t, "path")
	if !d.path.set && t.m != nil {
		if _, ok := t.m["path"]; !ok {
			p.errorf(t.path, "%spath is required: add path = \"IMAGE\"", t.what)
		}
	}
	d.format = t.enum("format", diskFormats)
	d.mode = t.enum("mode", diskModes)
	d.readOnly = t.boolean("read_only")
	d.boot = t.boolean("boot")
	if d.readOnly.v && d.mode.set {
		t.errorf("mode", "a read-only disk is never written, so it has no mode: remove mode or read_only")
	}
	t.finish(diskKeys)
	return d
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
