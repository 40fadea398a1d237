package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmnet/vmnet/internal/qemu"
	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/vmconfig"
)

// labOf parses a lab file body with file checks off.
func labOf(t testing.TB, body string) *vmconfig.Lab {
	t.Helper()
	cfg, err := vmconfig.Parse("lab.toml", []byte(body), vmconfig.Options{SkipFileChecks: true})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func manyNICs(n, queues int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[lab]\nname = \"p\"\nstate_dir = \"/tmp/vmnet-bench-state\"\n[[network]]\nname = \"n\"\nmtu = 9000\n[[vm]]\nname = \"v\"\ncpus = %d\n", queues)
	for range n {
		fmt.Fprintf(&b, "[[vm.nic]]\nnetwork = \"n\"\nqueues = %d\n", queues)
	}
	return b.String()
}

// TestProvisionAndTeardown creates a network and a VM's taps without
// booting it, checks them with iproute2 and tears them down, leaving a
// reused bridge in place.
func TestProvisionAndTeardown(t *testing.T) {
	ns := testenv.NetNS(t)
	cfg := labOf(t, `[lab]
name = "p"
[[network]]
name = "n"
mtu = 9000
addresses = ["10.66.0.1/24"]
[[network]]
name = "old"
bridge = "pre0"
qdisc = "default"
[[vm]]
name = "v"
cpus = 4
  [[vm.nic]]
  network = "n"
  [[vm.nic]]
  network = "old"
  queues = 1
  vnet_hdr = false
`)
	// Only the initial network namespace has this sysctl.
	def, err := os.ReadFile("/proc/sys/net/core/default_qdisc")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Do(t, ns, func() error {
		if out, err := exec.Command("ip", "link", "add", "pre0", "type", "bridge").CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		l, err := New(cfg, Options{RunDir: t.TempDir()})
		if err != nil {
			return err
		}
		defer l.Close()
		if err := l.CreateTaps(cfg.VMs[0]); err != nil {
			return err
		}
		// The taps belong to QEMU's dedicated user (created on first use).
		u, err := qemu.ResolveUser("")
		if err != nil {
			return err
		}
		owner := fmt.Sprintf("user %s group %s", u.Name, u.Name)
		if g, err := user.LookupGroupId(strconv.Itoa(int(u.GID))); err == nil {
			owner = fmt.Sprintf("user %s group %s", u.Name, g.Name)
		}
		out, _ := exec.Command("ip", "-d", "link", "show", "p-v-0").CombinedOutput()
		for _, want := range []string{"master p-n", "mtu 9000", "multi_queue", "vnet_hdr on", "numqueues 4", owner} {
			if !strings.Contains(string(out), want) {
				t.Errorf("p-v-0 lacks %q:\n%s", want, out)
			}
		}
		out, _ = exec.Command("ip", "-d", "link", "show", "p-v-1").CombinedOutput()
		if !strings.Contains(string(out), "master pre0") || !strings.Contains(string(out), "vnet_hdr off") {
			t.Errorf("p-v-1:\n%s", out)
		}
		// noqueue by default; the network's qdisc = "default" keeps the kernel's.
		for tap, want := range map[string]string{"p-v-0": "qdisc noqueue ", "p-v-1": "qdisc " + strings.TrimSpace(string(def)) + " "} {
			if out, _ := exec.Command("tc", "qdisc", "show", "dev", tap).CombinedOutput(); !strings.Contains(string(out), want) {
				t.Errorf("tc qdisc show dev %s: want %q:\n%s", tap, want, out)
			}
		}
		if err := l.Teardown(context.Background()); err != nil {
			return err
		}
		ifs, _ := net.Interfaces()
		var names []string
		for _, i := range ifs {
			names = append(names, i.Name)
		}
		if strings.Join(names, ",") != "lo,pre0" {
			t.Errorf("after teardown: %v, want lo and the reused pre0", names)
		}
		return nil
	})
}

// BenchmarkProvision100NICs creates 100 NICs of 4 queues each on one
// bridge (taps with vnet_hdr and offloads, attached to the bridge): the
// part of `vmnet up` before QEMU. Teardown runs with the timer stopped and
// is reported as its own metric.
func BenchmarkProvision100NICs(b *testing.B) {
	ns := testenv.NetNS(b)
	cfg := labOf(b, manyNICs(100, 4))
	b.ReportAllocs()
	var down time.Duration
	for b.Loop() {
		err := netns.Do(ns, func() error {
			l, err := New(cfg, Options{RunDir: b.TempDir()})
			if err != nil {
				return err
			}
			defer l.Close()
			if err := l.CreateTaps(cfg.VMs[0]); err != nil {
				return err
			}
			b.StopTimer()
			t := time.Now()
			err = l.Teardown(context.Background())
			down += time.Since(t)
			b.StartTimer()
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/100/1000, "ms/nic")
	b.ReportMetric(float64(down.Microseconds())/float64(b.N)/100/1000, "teardown-ms/nic")
}

// Scenario 7 (issue 10): `vmnet sh` takes its lock without following a
// link planted where shell.lock belongs; the old code created (as root)
// whatever file the link named.
func TestShellLockPlantedLink(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	vmDir := filepath.Join(dir, "vm-a")
	if err := os.Mkdir(vmDir, 0o700); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "made-by-root")
	if err := os.Symlink(target, filepath.Join(vmDir, "shell.lock")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := Shell(ctx, dir, "a", "true", io.Discard)
	if err == nil || !errors.Is(err, syscall.ELOOP) {
		t.Errorf("Shell through a planted shell.lock: %v", err)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Errorf("root created the link's target: %v", err)
	}
}
