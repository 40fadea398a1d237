package vmconfig

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestBroken loads testdata/broken.toml, which holds every kind of mistake,
// and wants exactly these problems, in this order. Each expectation also
// names the text found at its line:col, so a wrong position cannot pass
// by accident.
func TestBroken(t *testing.T) {
	const file = "testdata/broken.toml"
	type want struct {
		at   string // line:col
		text string // the file at line:col starts with this
		sev  Severity
		msg  string // substring of the message
	}
	wants := []want{
		{"4:1", "colour", Error, `[lab]: unknown key "colour"`},
		{"7:1", "name", Error, "[defaults]: name cannot have a default"},
		{"8:1", "kernel", Error, "testdata/boot/no-such-vmlinuz does not exist"},
		{"9:1", "cpus", Error, "cpus must be an integer, not a string"},
		{"13:14", `"10.0.0.1/33"`, Error, `addresses: "10.0.0.1/33" is not an address with prefix length`},
		{"18:1", "name", Error, `network "lan" is defined twice (first at line 11)`},
		{"21:1", "name", Error, `derived bridge name "broken-averyverylongnetwork" is 27 bytes, more than Linux allows (15): set bridge`},
		{"25:1", "bridge", Error, `interface name "br/0" contains '/'`},
		{"29:1", "bridge", Error, `interface name "has space" contains whitespace`},
		{"33:1", "bridge", Error, `interface name "br:1" contains ':'`},
		{"37:1", "bridge", Error, `interface name "broken-lan" is already used at line 12`},
		{"42:1", "mtu", Error, "mtu 1200 is below 1280, the minimum for IPv6"},
		{"44:1", "transparent", Error, "contradicts stp = true"},
		{"45:1", "default_pvid", Error, "default_pvid = 0 is out of range: use 1 to 4094"},
		{"50:1", "machine", Error, `unknown machine "pc2": use one of pc, q35, microvm`},
		{"51:1", "accel", Error, `unknown accel "hvf": use one of auto, kvm, tcg`},
		{"52:1", "initrd", Error, "testdata/boot/no-such-initrd does not exist"},
		{"53:1", "disk", Error, "testdata/no-such-disk.img does not exist"},
		{"54:1", "memory", Error, `memory "12X"`},
		{"55:1", "gateway", Error, `gateway "10.0.0.300" is not an IP address`},
		{"58:1", "queues", Error, `vm "a": nic 0: queues = 0 is out of range: use 1 to 256`},
		{"59:1", "mac", Error, "multicast bit"},
		{"61:1", "network", Error, `network "wan" is not defined (defined networks: lan,`},
		{"62:1", "queues", Error, "queues = 300 is out of range"},
		{"63:1", "model", Error, `unknown model "ne2k"`},
		{"64:21", `"lro"`, Error, `unknown offload "lro"`},
		{"65:1", "vlan", Error, "vlan = 0 is out of range: use 1 to 4094"},
		{"66:11", "5000", Error, "tagged[0] = 5000 is not a VLAN id"},
		{"69:1", "queues", Warning, "queues = 4 is more than cpus = 2; the guest only uses 2 queue pairs"},
		{"71:1", "ifname", Error, `interface name "an-interface-name-too-long" is 26 bytes; Linux allows at most 15`},
		{"72:27", `"10.0.0.256/24"`, Error, `address: "10.0.0.256/24" is not an address`},
		{"73:1", "speed", Error, `vm "a": nic 2: unknown key "speed"`},
		{"74:1", "vlan", Error, `vlan needs vlan_filtering = true on network "lan"`},
		{"77:1", "mac", Error, "mac 52:54:00:00:00:01 is already used at line 70"},
		{"79:1", "offloads", Error, `offload tso4 needs csum: add "csum" to offloads`},
		{"80:12", `"10.0.0.1/24"`, Error, "address 10.0.0.1 is already used at line 13"},
		{"81:1", "[[vm.nic]]", Warning, `vm "a": nic 4: has no network and no [[link]] uses it`},
		{"82:1", "ifname", Error, `interface name "dup0" is already used at line 78`},
		{"85:1", "name", Error, `VM "a" is defined twice (first at line 47)`},
		{"91:1", "model", Error, "model e1000 is a PCI device but machine microvm has no PCI bus"},
		{"92:1", "queues", Error, "queues = 2 needs a virtio model"},
		{"96:1", "[[vm.nic]]", Error, `derived tap name "broken-averyverylongvmname-0" is 28 bytes, more than Linux allows (15): set ifname`},
		{"103:1", "mac", Error, `mac "52:54:00:zz:00:01": want six hex bytes`},
		{"104:1", "vhost", Error, `unknown vhost "sometimes": use one of auto, on, off`},
		{"106:1", "[[vm]]", Error, "vm 5: name is required"},
		{"108:1", "tagged", Error, `unknown key "tagged"`},
		{"111:1", "a", Error, `vm:nosuch:0: there is no VM named "nosuch"`},
		{"112:1", "b", Error, `vm:a:9: VM "a" has 5 NICs`},
		{"115:1", "a", Error, `vm:a:0: that NIC is on network "lan"; a NIC used by a link must have no network`},
		{"116:1", "b", Error, "queues=0: want a number from 1 to 256"},
		{"119:1", "a", Error, "udp endpoint needs remote=ADDR:PORT"},
		{"121:1", "c", Error, `link 2: unknown key "c"`},
		{"123:1", "[[link]]", Error, "link 3: b is required"},
		{"124:1", "a", Error, "vm:small:0: that NIC is already used by the link at line 118"},
		{"126:1", "[foo]", Error, `unknown key "foo"`},
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	lab, err := Load(file)
	if lab != nil {
		t.Fatalf("Load returned a lab for a broken config")
	}
	var probs Problems
	if !errors.As(err, &probs) {
		t.Fatalf("Load error is %T %v, want Problems", err, err)
	}
	for i := 0; i < max(len(probs), len(wants)); i++ {
		if i >= len(wants) {
			t.Errorf("unexpected problem: %s", probs[i])
			continue
		}
		w := wants[i]
		var line, col int
		fmt.Sscanf(w.at, "%d:%d", &line, &col)
		if l := lines[line-1]; col < 1 || col > len(l) || !strings.HasPrefix(l[col-1:], w.text) {
			t.Errorf("test bug: %s:%s does not start with %q (line is %q)", file, w.at, w.text, l)
		}
		if i >= len(probs) {
			t.Errorf("missing problem: %s:%s: %s", file, w.at, w.msg)
			continue
		}
		p := probs[i]
		prefix := file + ":" + w.at + ": "
		if w.sev == Warning {
			prefix += "warning: "
		}
		if s := p.String(); !strings.HasPrefix(s, prefix) || !strings.Contains(s, w.msg) || p.Severity != w.sev {
			t.Errorf("problem %d:\n got %s\nwant %s...%s", i, s, prefix, w.msg)
		}
	}
	// The error text is every problem, one per line, in order.
	if got := strings.Count(err.Error(), "\n") + 1; got != len(probs) {
		t.Errorf("Error() has %d lines for %d problems", got, len(probs))
	}
}
