package tests

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/netns"
)

// multiHostLab has guest a on host h1 and guest b on host h2, on network
// lan, which therefore spans the hosts over VXLAN, and a [[link]]
// between their second NICs, an encrypted UDP tunnel between the hosts. No state_dir: each
// host keeps the lab's state under its own namespace's directory, so the
// two parts of lab mh on one machine do not collide.
const multiHostLab = `[lab]
name = "mh"
[defaults]
accel = "tcg"
[[host]]
name = "h1"
address = "10.200.0.1"
[[host]]
name = "h2"
address = "10.200.0.2"
[[network]]
name = "lan"
mtu = 1450
[[vm]]
name = "a"
host = "h1"
  [[vm.nic]]
  network = "lan"
  address = ["10.202.0.11/24"]
  [[vm.nic]]
  address = ["10.203.0.11/24"]
[[vm]]
name = "b"
host = "h2"
  [[vm.nic]]
  network = "lan"
  address = ["10.202.0.12/24"]
  [[vm.nic]]
  address = ["10.203.0.12/24"]
[[link]]
a = "vm:a:1"
b = "vm:b:1"
key = "link.key"
`

// TestMultiHostGuests: `vmnet up --host` on two simulated hosts (network
// namespaces on a veth underlay) boots a guest on each; the guests ping
// each other across the VXLAN (ARP crosses, so broadcast works) and
// across the [[link]] (a UDP tunnel between the hosts); `vmnet console`
// and `vmnet logs` work on a's console (consoleSession); status
// on h1 shows the VXLAN device with its peer and counters; `down --host`
// on each host leaves nothing but the underlay there.
func TestMultiHostGuests(t *testing.T) {
	requireGuests(t)
	testenv.RequirePrivateRun(t)
	hosts := testenv.Underlay(t, 2)
	path := filepath.Join(t.TempDir(), "mh.toml")
	if err := os.WriteFile(path, []byte(multiHostLab), 0o644); err != nil {
		t.Fatal(err)
	}
	writeKey(t, filepath.Join(filepath.Dir(path), "link.key"))
	names := []string{"h1", "h2"}
	var wg sync.WaitGroup
	ups := make([]result, 2)
	for i, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ups[i] = vmnetIn(t, h, "up", path, "--host", names[i], "--detach")
		}()
	}
	wg.Wait()
	for i, h := range hosts {
		t.Cleanup(func() { vmnetIn(t, h, "down", "--ignore-missing", "mh") })
		if ups[i].status != 0 {
			t.Fatalf("up --host %s: %d\n%s%s", names[i], ups[i].status, ups[i].stdout, ups[i].stderr)
		}
	}
	if r := vmnetIn(t, hosts[0], "sh", path, "a", "--timeout", "90s", "--", "ping -c 3 -W 5 10.202.0.12"); r.status != 0 {
		t.Fatalf("a on h1 cannot ping b on h2 across the VXLAN: %d\n%s%s", r.status, r.stdout, r.stderr)
	}
	if r := vmnetIn(t, hosts[1], "sh", path, "b", "--timeout", "60s", "--", "ping -c 3 -W 5 10.203.0.11"); r.status != 0 {
		t.Fatalf("b on h2 cannot ping a on h1 across the link: %d\n%s%s", r.status, r.stdout, r.stderr)
	}
	consoleSession(t, hosts[0], "mh", "a")
	if os.Getenv("VMNET_IPERF") != "" {
		iperf(t, hosts, path)
		iperfTo(t, hosts, path, "10.203.0.12") // across the link's encrypted UDP tunnel
	}
	r := vmnetIn(t, hosts[0], "status", "mh", "-o", "json")
	var rep []struct {
		Host   string `json:"host"`
		VXLANs []struct {
			Name      string   `json:"name"`
			Peers     []string `json:"peers"`
			TxPackets uint64   `json:"tx_packets"`
		} `json:"vxlans"`
		VMs []struct{ Name string } `json:"vms"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || len(rep) != 1 || rep[0].Host != "h1" || len(rep[0].VXLANs) != 1 ||
		len(rep[0].VXLANs[0].Peers) != 1 || rep[0].VXLANs[0].Peers[0] != "10.200.0.2" || rep[0].VXLANs[0].TxPackets < 3 ||
		len(rep[0].VMs) != 1 || rep[0].VMs[0].Name != "a" {
		t.Errorf("status on h1: %v\n%s", err, r.stdout)
	}
	if r := vmnetIn(t, hosts[0], "down", "mh", "--host", "h2"); r.status != 1 || !strings.Contains(r.stderr, "holds host h1's part, not host h2's") {
		t.Errorf("down --host h2 on h1: %d %q", r.status, r.stderr)
	}
	for i, h := range hosts {
		if r := vmnetIn(t, h, "down", "mh", "--host", names[i]); r.status != 0 {
			t.Fatalf("down --host %s: %d %s", names[i], r.status, r.stderr)
		}
		onlyUnderlay(t, h)
	}
	if os.Getenv("VMNET_IPERF") != "" {
		oneBridge(t)
	}
}

// oneBridge measures the same two guests on one bridge of one host, the
// reference for iperf's number across hosts.
func oneBridge(t *testing.T) {
	ns := testenv.NetNS(t)
	body := multiHostLab[:strings.Index(multiHostLab, "[[link]]")] // a link on one host takes no key
	body = body[:strings.Index(body, "[[host]]")] + body[strings.Index(body, "[[network]]"):]
	body = strings.ReplaceAll(strings.ReplaceAll(body, "host = \"h1\"\n", ""), "host = \"h2\"\n", "")
	path := filepath.Join(t.TempDir(), "one.toml")
	if err := os.WriteFile(path, []byte(strings.Replace(body, "name = \"mh\"", "name = \"one\"", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := vmnetIn(t, ns, "up", path, "--detach"); r.status != 0 {
		t.Fatalf("up: %d %s", r.status, r.stderr)
	}
	t.Cleanup(func() { vmnetIn(t, ns, "down", "--ignore-missing", "one") })
	iperf(t, []netns.Handle{ns, ns}, path)
}

// writeKey writes a tunnel key file: 32 random bytes, mode 0600.
func writeKey(t *testing.T, path string) {
	t.Helper()
	k := make([]byte, 32)
	rand.Read(k)
	if err := os.WriteFile(path, k, 0o600); err != nil {
		t.Fatal(err)
	}
}

// onlyUnderlay fails t when anything but lo and the underlay's eth0 is
// left in ns.
func onlyUnderlay(t *testing.T, ns netns.Handle) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(links(t, ns)), "\n") {
		if !strings.Contains(line, ": lo:") && !strings.Contains(line, ": eth0@") {
			t.Errorf("left behind: %s", line)
		}
	}
}

// iperf measures TCP throughput from guest a to guest b (hosts[0] and
// hosts[1]), for the record (VMNET_IPERF=1; it is no assertion).
func iperf(t *testing.T, hosts []netns.Handle, path string) { iperfTo(t, hosts, path, "10.202.0.12") }

// iperfTo is iperf to b's address addr.
func iperfTo(t *testing.T, hosts []netns.Handle, path, addr string) {
	if r := vmnetIn(t, hosts[1], "sh", path, "b", "--timeout", "30s", "--", "iperf3 -s -D -1"); r.status != 0 {
		t.Fatalf("iperf3 server: %d %s", r.status, r.stderr)
	}
	r := vmnetIn(t, hosts[0], "sh", path, "a", "--timeout", "60s", "--", "iperf3 -c "+addr+" -t 10")
	t.Logf("iperf3 a -> b %s (%s):\n%s", addr, filepath.Base(path), r.stdout)
}

// TestMultiHostWrongHost: `vmnet up --host h1` on the machine that is
// h2 fails naming the host and its address, before any supervisor
// starts, and creates nothing there.
func TestMultiHostWrongHost(t *testing.T) {
	testenv.RequirePrivateRun(t)
	hosts := testenv.Underlay(t, 2)
	path := filepath.Join(t.TempDir(), "mh.toml")
	if err := os.WriteFile(path, []byte(multiHostLab), 0o644); err != nil {
		t.Fatal(err)
	}
	r := vmnetIn(t, hosts[1], "up", path, "--host", "h1", "--detach")
	if r.status != 1 || !strings.Contains(r.stderr, "host h1: underlay address 10.200.0.1 is not on this host") || strings.Contains(r.stderr, "supervisor.log") {
		t.Errorf("up --host h1 on h2: %d %q", r.status, r.stderr)
	}
	onlyUnderlay(t, hosts[1])
	if r := vmnetIn(t, hosts[1], "status"); r.status != 0 || !strings.Contains(r.stdout, "no labs are up") {
		t.Errorf("status after the refused up: %d %q", r.status, r.stdout)
	}
}
