package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vmnet/vmnet/internal/testenv"
)

const ciLab = "../examples/ci.toml"

func TestRunExitStatus(t *testing.T) {
	requireGuests(t)
	for _, c := range []struct {
		name    string
		args    []string
		status  int
		console string
	}{
		{"zero", []string{"--", "true"}, 0, "VMNET-EXIT=0"},
		{"three", []string{"--", "sh", "-c", `echo "it's me" >&2; exit 3`, "ignored"}, 3, "it's me"},
		{"shell", []string{"--", "echo one && echo two | tr o 0; exit 7"}, 7, "tw0"},
		{"timeout", []string{"--timeout", "15s", "--", "sleep", "600"}, 124, "VMNET-READY"},
		// Marker lines the command prints, even with the run's nonce read
		// from /proc/cmdline, do not make a failing command succeed.
		{"fake-exit", []string{"--", `echo VMNET-EXIT=0; echo "VMNET-EXIT=0 $(sed -n 's/.*vmnet.nonce=\([0-9a-f]*\).*/\1/p' /proc/cmdline)"; exit 5`}, 5, "VMNET-EXIT=5 "},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns := testenv.NetNS(t)
			r := vmnetIn(t, ns, append([]string{"run", ciLab, "ci"}, c.args...)...)
			if r.status != c.status {
				t.Fatalf("status %d, want %d\nstdout:\n%s\nstderr:\n%s", r.status, c.status, r.stdout, r.stderr)
			}
			if !strings.Contains(r.stdout, c.console) {
				t.Errorf("console lacks %q:\n%s", c.console, r.stdout)
			}
			if c.status == 124 && !strings.Contains(r.stderr, "last console lines") {
				t.Errorf("timeout message does not show the console:\n%s", r.stderr)
			}
			onlyLoopback(t, ns)
		})
	}
}

// TestRunNetwork boots the CI guest and checks from inside that it reaches
// the bridge over both families and sees two queue pairs with TSO on.
func TestRunNetwork(t *testing.T) {
	requireGuests(t)
	ns := testenv.NetNS(t)
	r := vmnetIn(t, ns, "run", ciLab, "ci", "--", "sh", "-c",
		"ping -c 2 -W 5 10.80.0.1 && ping -c 2 -W 5 fd80::1 && ethtool -l eth0 && ethtool -k eth0")
	if r.status != 0 {
		t.Fatalf("status %d\nstdout:\n%s\nstderr:\n%s", r.status, r.stdout, r.stderr)
	}
	if !regexp.MustCompile(`(?s)Current hardware settings:.*Combined:\s+2`).MatchString(r.stdout) {
		t.Errorf("guest does not use two queue pairs:\n%s", r.stdout)
	}
	if !strings.Contains(r.stdout, "tcp-segmentation-offload: on") {
		t.Errorf("guest has TSO off:\n%s", r.stdout)
	}
	onlyLoopback(t, ns)
}

func TestRunBadInput(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NetNS(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("[lab]\nname = \"x\"\n\n[[vm]]\nname = \"a\"\nkernel = \"/nonexistent/vmlinux\"\ncpu = 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := vmnetIn(t, ns, "run", bad, "a", "--", "true")
	if r.status != 1 || !strings.Contains(r.stderr, "bad.toml:6:") || !strings.Contains(r.stderr, "bad.toml:7:") {
		t.Errorf("status %d, want 1 with both problems located:\n%s", r.status, r.stderr)
	}
	r = vmnetIn(t, ns, "run", ciLab, "nosuchvm")
	if r.status != 1 || !strings.Contains(r.stderr, "nosuchvm") {
		t.Errorf("status %d for a missing VM:\n%s", r.status, r.stderr)
	}
	r = vmnetIn(t, ns, "validate", ciLab)
	if r.status != 0 || !strings.Contains(r.stdout, "lab ci: 1 network, 1 VM, 1 NIC") {
		t.Errorf("validate: %d %q %q", r.status, r.stdout, r.stderr)
	}
	onlyLoopback(t, ns)
}

// TestRunAsUser boots a guest whose QEMU runs as nobody: the tap is owned
// by nobody, QEMU only receives fds, and the test image is shared with it.
func TestRunAsUser(t *testing.T) {
	requireGuests(t)
	ns := testenv.NetNS(t)
	lab := filepath.Join(t.TempDir(), "user.toml")
	os.WriteFile(lab, []byte(`[lab]
name = "u"
[[network]]
name = "lan"
addresses = ["10.81.0.1/24"]
[[vm]]
name = "a"
accel = "tcg"
user = "nobody"
  [[vm.nic]]
  network = "lan"
  address = ["10.81.0.2/24"]
`), 0o644)
	seen := make(chan string, 1)
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				seen <- ""
				return
			case <-time.After(500 * time.Millisecond):
			}
			out, _ := exec.Command("ps", "-o", "user=,args=", "-C", "qemu-system-x86_64").Output()
			for _, line := range strings.Split(string(out), "\n") {
				if strings.Contains(line, "/vmnet-run-") && strings.Contains(line, "-name a ") {
					seen <- strings.Fields(line)[0]
					return
				}
			}
		}
	}()
	r := vmnetIn(t, ns, "run", lab, "a", "--", "ping -c 2 -W 5 10.81.0.1 && sleep 3")
	close(stop)
	if r.status != 0 {
		t.Fatalf("status %d\n%s\n%s", r.status, r.stdout, r.stderr)
	}
	if user := <-seen; user != "nobody" {
		t.Errorf("QEMU ran as %q, want nobody", user)
	}
	onlyLoopback(t, ns)
}
