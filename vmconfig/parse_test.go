package vmconfig

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func TestGoodConfigsLoad(t *testing.T) {
	files, _ := filepath.Glob("testdata/good/*.toml")
	files = append(files, "testdata/example.toml")
	if len(files) < 4 {
		t.Fatalf("only %d good configs", len(files))
	}
	for _, f := range files {
		lab, err := Load(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		checkResolved(t, lab)
	}
}

// checkResolved asserts what every loaded Lab promises downstream code.
func checkResolved(t *testing.T, lab *Lab) {
	t.Helper()
	if lab.Name == "" || !filepath.IsAbs(lab.StateDir) {
		t.Errorf("lab %q: state dir %q", lab.Name, lab.StateDir)
	}
	for _, n := range lab.Networks {
		if n.Bridge == "" || len(n.Bridge) > IfNameMax || n.MTU == 0 || n.DefaultPVID == 0 {
			t.Errorf("network %+v not resolved", n)
		}
	}
	for _, vm := range lab.VMs {
		if vm.CPUs < 1 || vm.MemoryMiB < 1 || vm.Machine == "" || vm.Accel == "" || vm.QEMU == "" || !filepath.IsAbs(vm.Console) {
			t.Errorf("vm %+v not resolved", vm)
		}
		for _, p := range []string{vm.Kernel, vm.Initrd, vm.Disk} {
			if p != "" && !filepath.IsAbs(p) {
				t.Errorf("vm %s: relative path %q", vm.Name, p)
			}
		}
		for _, n := range vm.NICs {
			if len(n.MAC) != 6 || n.MAC[0]&1 != 0 || n.IfName == "" || len(n.IfName) > IfNameMax ||
				n.Queues < 1 || n.Model == "" || n.Vhost == "" || n.MTU == 0 {
				t.Errorf("vm %s nic %d not resolved: %+v", vm.Name, n.Index, n)
			}
			if (n.Network == "") == (n.Link == nil) && n.Network != "" {
				t.Errorf("vm %s nic %d has both a network and a link", vm.Name, n.Index)
			}
		}
	}
	for _, l := range lab.Links {
		for _, e := range []Endpoint{l.A, l.B} {
			if e.Kind == KindTap && (e.Queues == 0 || e.VnetHdr == Unset) {
				t.Errorf("link %d: tap endpoint not resolved: %+v", l.Index, e)
			}
		}
	}
}

func TestExampleResolved(t *testing.T) {
	lab, err := Load("testdata/example.toml")
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := filepath.Abs("testdata")
	if got, want := lab.Summary(), "lab demo: 2 networks, 3 VMs, 5 NICs, 2 links, 1 host"; got != want {
		t.Errorf("Summary = %q, want %q", got, want)
	}
	if len(lab.Warnings) != 0 {
		t.Errorf("warnings: %v", lab.Warnings)
	}
	wan := lab.Networks[1]
	if wan.Bridge != "demo-wan" || wan.BridgeExplicit || wan.MTU != 1500 || wan.DefaultPVID != 1 {
		t.Errorf("wan = %+v", wan)
	}
	if lan := lab.Networks[0]; lan.Bridge != "demo-lan" || !lan.BridgeExplicit {
		t.Errorf("lan names its bridge; BridgeExplicit must say so: %+v", lan)
	}
	r, h1 := lab.VMs[0], lab.VMs[1]
	if r.CPUs != 4 || r.MemoryMiB != 1024 || r.Kernel != dir+"/boot/vmlinuz" || r.DiskFormat != "qcow2" ||
		r.Console != dir+"/logs/router.console" || r.Accel != "tcg" {
		t.Errorf("router = %+v", r)
	}
	if h1.CPUs != 2 || h1.MemoryMiB != 512 || h1.Append != "console=ttyS0" || h1.Console != "/tmp/vmnet-demo/h1.console" {
		t.Errorf("h1 = %+v", h1)
	}
	n0, n1 := r.NICs[0], r.NICs[1]
	if n0.MAC.String() != "52:54:00:12:34:56" || n0.OffloadsAuto || !reflect.DeepEqual(n0.Offloads, []string{"csum", "tso4", "tso6"}) ||
		n0.VLAN != 10 || !reflect.DeepEqual(n0.Tagged, []int{20, 30}) || n0.IfName != "demo-rtr-lan" {
		t.Errorf("router nic 0 = %+v", n0)
	}
	if !reflect.DeepEqual(n1.MAC, DeriveMAC("demo", "router", 1)) || n1.IfName != "demo-router-1" || n1.Queues != 4 ||
		!n1.VnetHdr || !n1.OffloadsAuto || n1.Model != "virtio-net-pci" || n1.Vhost != "auto" {
		t.Errorf("router nic 1 = %+v", n1)
	}
	if h1.NICs[0].Model != "virtio-net-device" || h1.NICs[0].Link != lab.Links[0] || r.NICs[2].Link != lab.Links[0] {
		t.Errorf("h1 nic 0 = %+v", h1.NICs[0])
	}
	want := Endpoint{Kind: KindTap, Name: "demo-ext", Queues: 2, VnetHdr: On}
	if lab.Links[1].A != want || lab.Links[0].PCAP != dir+"/logs/r-h1.pcap" || lab.Links[0].Datapath != DatapathAuto || lab.Links[1].Datapath != DatapathAuto {
		t.Errorf("links = %+v %+v", lab.Links[0], lab.Links[1])
	}
}

// TestExampleDocumentsEveryKey keeps example.toml complete: every key the
// parser knows appears in it.
func TestExampleDocumentsEveryKey(t *testing.T) {
	data, err := os.ReadFile("testdata/example.toml")
	if err != nil {
		t.Fatal(err)
	}
	sc := scanKeys(data)
	seen := map[string]bool{}
	for _, e := range sc.events {
		seen[strings.Join(e.segs, ".")] = true
	}
	// Keys that mean something only between VMs on two hosts are shown in
	// the two-host example; example.toml has one host.
	two, err := os.ReadFile("../examples/two-hosts.toml")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range scanKeys(two).events {
		if k := strings.Join(e.segs, "."); k == "link.port" || k == "link.key" {
			seen[k] = true
		}
	}
	groups := map[string][]string{"lab": labKeys, "defaults": vmKeys[:1], "network": networkKeys, "vm": append(vmKeys, vmOnlyKeys...),
		"vm.nic": nicKeys, "vm.disk": diskKeys, "link": linkKeys, "host": hostKeys}
	for table, keys := range groups {
		for _, k := range keys {
			if k == "nic" {
				continue
			}
			if (table == "network" || table == "vm.nic") && contains(ImpairmentKeys, k) && (seen[table+".delay"] || seen[table+".loss"]) {
				continue // documented once, on [[link]]; the example shows that they apply here
			}
			if !seen[table+"."+k] && !(table == "vm" && seen["defaults."+k]) {
				t.Errorf("example.toml does not show %s.%s", table, k)
			}
		}
	}
}

// fakeFiles makes every path whose base name starts with "ok" exist.
func fakeFiles(path string) bool { return strings.HasPrefix(filepath.Base(path), "ok") }

func parse(t *testing.T, doc string) (*Lab, Problems) {
	t.Helper()
	lab, err := Parse("/cfg/lab.toml", []byte(doc), Options{FileExists: fakeFiles})
	if err == nil {
		return lab, lab.Warnings
	}
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("error %T is not Problems: %v", err, err)
	}
	return nil, ps
}

const head = "[lab]\nname = \"t\"\n[[network]]\nname = \"n\"\n"

func TestParseProblems(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string // "line:col: substring", "line:col: warning: substring"; nil = clean
	}{
		{"minimal", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\n", nil},
		{"syntax", "[lab]\nname = \"x\nfoo = 1\n", []string{"2:10: TOML syntax: strings cannot contain newlines"}},
		{"syntax col", "[lab]\nname = \"x\"\nbad = [1,\n  2 x]\n", []string{"4:5: TOML syntax: expected a comma"}},
		{"duplicate key", "[lab]\nname = \"x\"\nname = \"y\"\n", []string{"3:1: TOML syntax: Key 'lab.name' has already been defined"}},
		{"duplicate indented key", "[lab]\nname = \"x\"\n[[vm]]\n  name = \"a\"\n  name = \"b\"\n", []string{"5:3: TOML syntax: Key 'vm.name' has already been defined"}},
		{"no lab", "[[network]]\nname = \"n\"\n", []string{"1:1: missing [lab] table"}},
		{"lab no name", "[lab]\nstate_dir = \"s\"\n", []string{"1:1: [lab]: name is required"}},
		{"lab bad name", "[lab]\nname = \"a b\"\n", []string{"2:1: [lab]: lab name \"a b\""}},
		{"lab name dotdot", "[lab]\nname = \"..\"\n", []string{"2:1: [lab]: lab name \"..\""}},
		{"state_dir is the lab file's directory", "[lab]\nname = \"a\"\nstate_dir = \".\"\n", []string{"3:1: [lab]: state_dir \".\" is /cfg, which holds the lab file"}},
		{"state_dir above the lab file", "[lab]\nname = \"a\"\nstate_dir = \"..\"\n", []string{"3:1: [lab]: state_dir \"..\" is /, which holds the lab file"}},
		{"state_dir below the lab file", "[lab]\nname = \"a\"\nstate_dir = \"./state\"\n", nil},
		{"lab not table", "lab = 1\n", []string{"1:1: [lab] must be a table, not an integer"}},
		{"vm not array", head + "[vm]\nname = \"a\"\n", []string{"5:1: vm must be an array of tables"}},
		{"typo suggestion", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\ncpu = 1\n", []string{`8:1: vm "a": unknown key "cpu"; did you mean "cpus"?`}},
		{"nic key in vm", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\nqueues = 1\n", []string{`8:1: vm "a": unknown key "queues"; queues is a NIC key: put it in a [[vm.nic]] table`}},
		{"nic typo", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[[vm.nic]]\nnetwrk = \"n\"\n", []string{
			`9:1: vm "a": nic 0: unknown key "netwrk"; did you mean "network"?`,
			`8:1: warning: vm "a": nic 0: has no network`}},
		{"initrd without kernel", head + "[[vm]]\nname = \"a\"\ninitrd = \"ok-i\"\nappend = \"x\"\n", []string{
			"7:1: vm \"a\": initrd needs kernel"}},
		{"append without kernel on a disk", head + "[[vm]]\nname = \"a\"\ndisk = \"ok-d\"\nappend = \"x\"\n", []string{
			"8:1: vm \"a\": append needs kernel"}},
		{"memory forms", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\nmemory = \"1.5G\"\n[[vm]]\nname = \"b\"\nkernel = \"ok\"\nmemory = 0\n[[vm]]\nname = \"c\"\nkernel = \"ok\"\nmemory = 1.5\n", []string{
			"8:1: vm \"a\": memory \"1.5G\"", "12:1: vm \"b\": memory 0 is out of range", "16:1: vm \"c\": memory must be MiB as an integer"}},
		{"root user", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\nuser = \"root\"\n", []string{"8:1: warning: vm \"a\": user = \"root\" runs QEMU as root"}},
		{"uid 0 in defaults", head + "[defaults]\nuser = \"0\"\n[[vm]]\nname = \"a\"\nkernel = \"ok\"\n", []string{"6:1: warning: [defaults]: user = \"0\" runs QEMU as root"}},
		{"qemu path", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\nqemu = \"bin/qemu\"\n", []string{"8:1: vm \"a\": qemu binary /cfg/bin/qemu does not exist"}},
		{"gateway outside", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\ngateway = \"10.9.9.9\"\n[[vm.nic]]\nnetwork = \"n\"\naddress = \"10.0.0.2/24\"\n", []string{
			"8:1: warning: vm \"a\": gateway 10.9.9.9 is not inside any NIC address"}},
		{"two gateways one family", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\ngateway = [\"10.0.0.1\", \"10.0.0.2\"]\n", []string{
			"8:24: vm \"a\": gateway 10.0.0.2: only one gateway per address family", "8:1: warning: vm \"a\": gateway 10.0.0.1 is not inside"}},
		{"defaults error once", head + "[defaults]\nkernel = \"missing\"\n[[vm]]\nname = \"a\"\n[[vm]]\nname = \"b\"\n", []string{"6:1: [defaults]: kernel file /cfg/missing does not exist"}},
		{"defaults cross check names vm", head + "[defaults]\nkernel = \"ok\"\ninitrd = \"ok-i\"\n[[vm]]\nname = \"a\"\nkernel = \"ok\"\n", nil},
		{"defaults queues warning names vm", head + "[defaults]\nkernel = \"ok\"\nmachine = \"microvm\"\n[[vm]]\nname = \"a\"\n[[vm.nic]]\nnetwork = \"n\"\nmodel = \"virtio-net-pci\"\n", []string{
			"12:1: vm \"a\": nic 0: model virtio-net-pci is a PCI device but machine microvm"}},
		{"virtio-net-device on pc", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[[vm.nic]]\nnetwork = \"n\"\nmodel = \"virtio-net-device\"\n", []string{
			"10:1: vm \"a\": nic 0: model virtio-net-device needs machine = \"microvm\""}},
		{"offload rules", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[[vm.nic]]\nnetwork = \"n\"\noffloads = [\"csum\", \"tso_ecn\", \"csum\"]\nvnet_hdr = false\n", []string{
			"10:1: vm \"a\": nic 0: offload tso_ecn needs tso4 or tso6", "10:1: vm \"a\": nic 0: offloads need vnet_hdr = true",
			"10:32: vm \"a\": nic 0: offload \"csum\" is listed twice"}},
		{"offloads bad type", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[[vm.nic]]\nnetwork = \"n\"\noffloads = 3\n", []string{
			"10:1: vm \"a\": nic 0: offloads must be \"auto\", one offload or a list"}},
		{"offloads one unknown", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[[vm.nic]]\nnetwork = \"n\"\noffloads = \"all\"\n", []string{
			"10:1: vm \"a\": nic 0: unknown offload \"all\""}},
		{"address outside the network", head + "addresses = [\"10.0.0.1/24\", \"fd00::1/64\"]\n[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[[vm.nic]]\nnetwork = \"n\"\naddress = [\"10.0.1.2/24\", \"fd00::2/64\"]\n", []string{
			"11:12: warning: vm \"a\": nic 0: address 10.0.1.2/24 is outside every subnet of network \"n\" (10.0.0.0/24)"}},
		{"address outside one of several", head + "addresses = [\"10.0.0.1/24\", \"10.0.9.1/24\"]\n[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[[vm.nic]]\nnetwork = \"n\"\naddress = \"10.0.7.2/24\"\n", []string{
			"11:1: warning: vm \"a\": nic 0: address 10.0.7.2/24 is outside every subnet of network \"n\" (10.0.0.0/24, 10.0.9.0/24)"}},
		{"address in the second subnet", head + "addresses = [\"10.0.0.1/24\", \"10.0.9.1/24\"]\n[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[[vm.nic]]\nnetwork = \"n\"\naddress = \"10.0.9.2/24\"\n", nil},
		{"address without network addresses", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[[vm.nic]]\nnetwork = \"n\"\naddress = [\"10.0.1.2/24\", \"fd00::2/64\"]\n", nil},
		{"address of a family the network lacks", head + "addresses = \"10.0.0.1/24\"\n[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[[vm.nic]]\nnetwork = \"n\"\naddress = [\"10.0.0.2/24\", \"fd00::2/64\"]\n", nil},
		{"vhost on e1000", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[[vm.nic]]\nnetwork = \"n\"\nmodel = \"e1000\"\nvhost = \"on\"\n", []string{
			"11:1: vm \"a\": nic 0: vhost = \"on\" needs a virtio model"}},
		{"vlan pvid also tagged", "[lab]\nname = \"t\"\n[[network]]\nname = \"n\"\nvlan_filtering = true\n[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[[vm.nic]]\nnetwork = \"n\"\nvlan = 5\ntagged = [5, 6, 6]\n", []string{
			"12:11: vm \"a\": nic 0: VLAN 5 is both", "12:17: vm \"a\": nic 0: tagged VLAN 6 is listed twice"}},
		{"vlan on link nic", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[[vm.nic]]\ntagged = [5]\n[[link]]\na = \"vm:a:0\"\nb = \"tap:x\"\n", []string{
			"9:1: vm \"a\": nic 0: tagged needs a network"}},
		{"nic mtu differs", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[[vm.nic]]\nnetwork = \"n\"\nmtu = 9000\n", []string{
			"10:1: warning: vm \"a\": nic 0: mtu 9000 differs from network \"n\" mtu 1500"}},
		{"default pvid without filtering", head + "default_pvid = 3\n", []string{"5:1: warning: network \"n\": default_pvid has no effect"}},
		{"derived MAC clash with explicit", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[[vm.nic]]\nnetwork = \"n\"\n[[vm.nic]]\nnetwork = \"n\"\nmac = \"" +
			DeriveMAC("t", "a", 0).String() + "\"\n", []string{"12:1: vm \"a\": nic 1: mac " + DeriveMAC("t", "a", 0).String() + " is already used at line 8"}},
		{"link datapath", head + "[[link]]\na = \"tap:x\"\nb = \"tap:y\"\ndatapath = \"userspace\"\n", nil},
		{"link bad datapath", head + "[[link]]\na = \"tap:x\"\nb = \"tap:y\"\ndatapath = \"kernel\"\n", []string{
			"8:1: link 0: unknown datapath \"kernel\": use one of auto, userspace"}},
		{"link same ends", head + "[[link]]\na = \"tap:x\"\nb = \"tap:x\"\n", []string{"7:1: link 0: both ends are tap:x"}},
		{"link tap clashes with nic tap", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[[vm.nic]]\nnetwork = \"n\"\n[[link]]\na = \"tap:t-a-0\"\nb = \"udp:127.0.0.1:1,remote=127.0.0.1:2\"\n", []string{
			"11:1: link 0: interface name \"t-a-0\" is already used at line 8"}},
		{"link tap other netns ok", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[[vm.nic]]\nnetwork = \"n\"\n[[link]]\na = \"tap:t-a-0,netns=x\"\nb = \"udp:127.0.0.1:1,remote=127.0.0.1:2\"\n", nil},
		{"udp local reused", head + "[[link]]\na = \"tap:x\"\nb = \"udp:127.0.0.1:1,remote=127.0.0.1:2\"\n[[link]]\na = \"tap:y\"\nb = \"udp:127.0.0.1:1,remote=127.0.0.1:3\"\n", []string{
			"10:1: link 1: local UDP address 127.0.0.1:1 is already used at line 7"}},
		{"link bad endpoint", head + "[[link]]\na = \"vlan:x\"\nb = \"tap:y\"\npcap = \"\"\n", []string{
			"6:1: link 0: a = \"vlan:x\": unknown kind \"vlan\"", "8:1: link 0: pcap is empty"}},
		{"inline nic array", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\nnic = [{network = \"n\"}, {network = \"m\", queues = 0}]\n", []string{
			"8:26: vm \"a\": nic 1: network \"m\" is not defined", "8:41: vm \"a\": nic 1: queues = 0 is out of range"}},
		{"nic plain table", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[vm.nic]\nnetwork = \"n\"\n", []string{"8:1: nic must be an array of tables, written [[vm.nic]], not a table"}},
		{"nic not table", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\nnic = [1]\n", []string{"8:8: nic 0 must be a table, not an integer"}},
		{"type errors", head + "mtu = \"big\"\nstp = 1\naddresses = [1]\n[[vm]]\nname = 7\nextra_args = 1\n", []string{
			"5:1: network \"n\": mtu must be an integer, not a string", "6:1: network \"n\": stp must be true or false",
			"7:14: network \"n\": addresses[0] must be a string, not an integer", "9:1: vm 0: name must be a string", "10:1: vm 0: extra_args must be a string or a list of strings"}},
		{"mac all zero", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[[vm.nic]]\nnetwork = \"n\"\nmac = \"00:00:00:00:00:00\"\n", []string{"10:1: vm \"a\": nic 0: mac \"00:00:00:00:00:00\": the all-zero MAC"}},
		{"eui64 mac", head + "[[vm]]\nname = \"a\"\nkernel = \"ok\"\n[[vm.nic]]\nnetwork = \"n\"\nmac = \"02:00:00:00:00:00:00:01\"\n", []string{"10:1: vm \"a\": nic 0: mac \"02:00:00:00:00:00:00:01\": want six hex bytes"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, ps := parse(t, tc.doc)
			var got []string
			for _, p := range ps {
				got = append(got, strings.TrimPrefix(p.String(), "/cfg/lab.toml:"))
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d problems, want %d:\n%s", len(got), len(tc.want), strings.Join(got, "\n"))
			}
			// Problems are sorted by position; within one position keep the
			// expectations in any order.
			for _, w := range tc.want {
				found := false
				for _, g := range got {
					if strings.HasPrefix(g, w) || strings.HasPrefix(g, w[:strings.Index(w, ": ")+2]) && strings.Contains(g, w[strings.Index(w, ": ")+2:]) {
						found = true
					}
				}
				if !found {
					t.Errorf("missing %q in:\n%s", w, strings.Join(got, "\n"))
				}
			}
		})
	}
}

func TestProblemsSortedWithWarnings(t *testing.T) {
	lab, ps := parse(t, head+"[[vm]]\nname = \"a\"\n[[vm.nic]]\nnetwork = \"n\"\nqueues = 3\n[[vm.nic]]\nnetwork = \"n\"\nmac = \"02:00:00:00:00:01\"\nqueues = 2\n")
	if lab == nil || len(ps) != 2 || ps.HasErrors() || ps[0].Pos.Line != 9 || ps[1].Pos.Line != 13 {
		t.Fatalf("lab %v, problems %v", lab, ps)
	}
	if ps[0].String() != `/cfg/lab.toml:9:1: warning: vm "a": nic 0: queues = 3 is more than cpus = 1; the guest only uses 1 queue pairs` {
		t.Errorf("got %q", ps[1])
	}
}

func TestDefaults(t *testing.T) {
	lab, ps := parse(t, "[lab]\nname = \"d\"\n[[network]]\nname = \"n\"\n[[vm]]\nname = \"a\"\nkernel = \"ok\"\ncpus = 3\n[[vm.nic]]\nnetwork = \"n\"\n[[vm.nic]]\nnetwork = \"n\"\nmodel = \"e1000\"\n")
	if lab == nil {
		t.Fatal(ps)
	}
	vm := lab.VMs[0]
	if vm.MemoryMiB != DefaultMemory || vm.Machine != "pc" || vm.Accel != "auto" || vm.QEMU != DefaultQEMU ||
		vm.Console != "/run/vmnet/d/a.console" || lab.StateDir != "/run/vmnet/d" {
		t.Errorf("vm = %+v, state %s", vm, lab.StateDir)
	}
	n0, n1 := vm.NICs[0], vm.NICs[1]
	if n0.Queues != 3 || n1.Queues != 1 || !n0.VnetHdr || n0.Vhost != "auto" || n0.MTU != 1500 || n0.IfName != "d-a-0" || n1.IfName != "d-a-1" {
		t.Errorf("nics = %+v %+v", n0, n1)
	}
	if lab.Networks[0].Bridge != "d-n" {
		t.Errorf("bridge %q", lab.Networks[0].Bridge)
	}
}

func TestDeriveMAC(t *testing.T) {
	// The derivation is part of the on-disk contract: guests keep their MAC
	// (and DHCP leases) across vmnet versions. Golden values computed
	// with Python's hashlib: sha256("lab\0vm\0index")[:6], bit 1 set, bit 0
	// cleared.
	for _, tc := range []struct {
		lab, vm string
		i       int
		want    string
	}{
		{"demo", "router", 1, "c6:02:b4:16:bf:e8"},
		{"lab", "vm", 0, "92:a6:8b:cb:6c:2b"},
	} {
		m := DeriveMAC(tc.lab, tc.vm, tc.i)
		if m.String() != tc.want {
			t.Errorf("DeriveMAC(%q, %q, %d) = %s, want %s", tc.lab, tc.vm, tc.i, m, tc.want)
		}
	}
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		m := DeriveMAC("lab", "vm", i)
		if len(m) != 6 || m[0]&1 != 0 || m[0]&2 == 0 {
			t.Fatalf("MAC %s is not locally administered unicast", m)
		}
		if seen[m.String()] {
			t.Fatalf("MAC %s repeats", m)
		}
		seen[m.String()] = true
	}
	// Different names must not collide by concatenation ("ab"+"c" vs "a"+"bc").
	if DeriveMAC("ab", "c", 0).String() == DeriveMAC("a", "bc", 0).String() {
		t.Error("MAC derivation is ambiguous")
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"512": 512, "512M": 512, "512MiB": 512, "512MB": 512, "1G": 1024, "2GiB": 2048,
		"1T": 1 << 20, "1048576K": 1024, "2g": 2048, "256m": 256} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "M", "1.5G", "-1M", "1X", "1000K", "1Q", "99999999999T", "1 G B"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want error", in, got)
		}
	}
}

func TestSummary(t *testing.T) {
	lab := &Lab{Name: "x", Networks: []*Network{{}}, VMs: []*VM{{NICs: []*NIC{{}}}, {}}}
	if got := lab.Summary(); got != "lab x: 1 network, 2 VMs, 1 NIC, 0 links" {
		t.Errorf("Summary = %q", got)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("testdata/does-not-exist.toml")
	if err == nil || !strings.Contains(err.Error(), "testdata/does-not-exist.toml") || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("err = %v", err)
	}
}

// A file saved with Windows line endings means the same and reports the
// same positions.
func TestCRLF(t *testing.T) {
	data, err := os.ReadFile("testdata/broken.toml")
	if err != nil {
		t.Fatal(err)
	}
	_, lf := Parse("testdata/broken.toml", data, Options{})
	_, crlf := Parse("testdata/broken.toml", []byte(strings.ReplaceAll(string(data), "\n", "\r\n")), Options{})
	if lf == nil || !reflect.DeepEqual(lf, crlf) {
		t.Errorf("CRLF problems differ:\n%v\n---\n%v", lf, crlf)
	}
	data, err = os.ReadFile("testdata/example.toml")
	if err != nil {
		t.Fatal(err)
	}
	a, err1 := Parse("testdata/example.toml", data, Options{})
	b, err2 := Parse("testdata/example.toml", []byte(strings.ReplaceAll(string(data), "\n", "\r\n")), Options{})
	if err1 != nil || err2 != nil || !reflect.DeepEqual(a, b) {
		t.Errorf("CRLF example differs: %v %v", err1, err2)
	}
}

func TestFuzzSeedsMeanSomething(t *testing.T) {
	for _, name := range []string{"crlf", "inline", "endpoints", "defaults", "dotted"} {
		data, err := os.ReadFile("testdata/fuzz/FuzzParse/" + name)
		if err != nil {
			t.Fatal(err)
		}
		// Decode the corpus file's []byte("...") literal.
		lit := strings.TrimSuffix(strings.TrimPrefix(strings.SplitN(string(data), "\n", 2)[1], "[]byte("), ")\n")
		doc, err := strconv.Unquote(lit)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse("/seed/"+name, []byte(doc), Options{FileExists: fakeFiles}); err != nil {
			t.Errorf("seed %s does not load: %v", name, err)
		}
	}
}

func BenchmarkParseExample(b *testing.B) {
	data, err := os.ReadFile("testdata/example.toml")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("testdata/example.toml", data, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// Within one line, problems come in column order even when the checks run
// in another order (network is checked before queues).
func TestProblemsSortedByColumn(t *testing.T) {
	_, ps := parse(t, head+"[[vm]]\nname = \"a\"\nkernel = \"ok\"\nnic = [{queues = 0, network = \"m\"}]\n")
	if len(ps) != 2 || ps[0].Pos.Col != 9 || ps[1].Pos.Col != 21 {
		t.Fatalf("got %v", ps)
	}
}

// A NIC takes its network's qdisc unless it names its own; a NIC without
// a network gets noqueue.
func TestQdiscResolved(t *testing.T) {
	lab, probs := parse(t, `[lab]
name = "q"
[[network]]
name = "a"
[[network]]
name = "b"
qdisc = "default"
[[vm]]
name = "v"
  [[vm.nic]]
  network = "a"
  [[vm.nic]]
  network = "b"
  [[vm.nic]]
  network = "b"
  qdisc = "noqueue"
  [[vm.nic]]
  network = "a"
  qdisc = "default"
`)
	if len(probs) != 0 {
		t.Fatal(probs)
	}
	var got []string
	for _, n := range lab.VMs[0].NICs {
		got = append(got, n.Qdisc)
	}
	if want := "noqueue default noqueue default"; strings.Join(got, " ") != want {
		t.Errorf("NIC qdiscs %v, want %s", got, want)
	}
	if lab.Networks[0].Qdisc != "noqueue" || lab.Networks[1].Qdisc != "default" {
		t.Errorf("network qdiscs %s %s", lab.Networks[0].Qdisc, lab.Networks[1].Qdisc)
	}
	_, probs = parse(t, "[lab]\nname = \"q\"\n[[network]]\nname = \"a\"\nqdisc = \"fq\"\n")
	if len(probs) != 1 || probs[0].Pos.Line != 5 || !strings.Contains(probs[0].Msg, "noqueue") {
		t.Errorf("qdisc = \"fq\": %v", probs)
	}
}

// TestStateRoot: a lab without state_dir keeps its state (and default
// console logs) under the root the caller gives, one per network
// namespace; state_dir overrides it.
func TestStateRoot(t *testing.T) {
	doc := "[lab]\nname = \"d\"\n[[vm]]\nname = \"a\"\nkernel = \"ok\"\n"
	lab, err := Parse("/cfg/lab.toml", []byte(doc), Options{FileExists: fakeFiles, StateRoot: "/run/vmnet/ns-7"})
	if err != nil {
		t.Fatal(err)
	}
	if lab.StateDir != "/run/vmnet/ns-7/d" || lab.VMs[0].Console != "/run/vmnet/ns-7/d/a.console" {
		t.Errorf("state %s, console %s", lab.StateDir, lab.VMs[0].Console)
	}
	lab, err = Parse("/cfg/lab.toml", []byte(strings.Replace(doc, "\n[[vm]]", "\nstate_dir = \"st\"\n[[vm]]", 1)),
		Options{FileExists: fakeFiles, StateRoot: "/run/vmnet/ns-7"})
	if err != nil {
		t.Fatal(err)
	}
	if lab.StateDir != "/cfg/st" {
		t.Errorf("state_dir = \"st\" gave %s", lab.StateDir)
	}
}
