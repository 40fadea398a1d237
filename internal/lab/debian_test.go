package lab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmnet/vmnet/images"
	"github.com/vmnet/vmnet/internal/testenv"
)

// debianReady bounds a debian-12 guest's boot to its agent under TCG on
// a loaded 2-core machine (systemd and two cloud-init stages of Python).
const debianReady = 6 * time.Minute

// debianImage builds (or reuses) the debian-12 image, from the initial
// network namespace: the package download needs the host's network.
func debianImage(t *testing.T) images.Disk {
	t.Helper()
	testenv.RequirePrivateRun(t)
	testenv.RequireRoot(t)
	testenv.RequireProgram(t, "qemu-system-x86_64")
	testenv.RequireProgram(t, "mmdebstrap")
	testenv.RequireProgram(t, "genisoimage")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	d, err := images.EnsureDebian(ctx, images.Options{Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("debian-12 image ready in %v: %s", time.Since(start).Round(time.Second), d.Dir)
	return d
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// TestDebianTwoVMs: two VMs from one debian-12 base image on one bridge
// (d1 ready when its guest agent answers, d2 when its SSH server does).
// cloud-init gives them the lab's names and addresses, they ping each
// other and the host, `vmnet sh` runs through the guest agent and returns
// the command's status (0 and 3), and after teardown the base image is
// unchanged and the agent sockets are gone (`down` removes the VMs'
// directories with their seeds, as for every VM). The teardown stops the
// guests through the ACPI power button (acpid in the image): each console
// shows the kernel's power-off line, which a guest that QEMU quit after
// the grace never prints.
func TestDebianTwoVMs(t *testing.T) {
	d := debianImage(t)
	before := fileSHA(t, d.Disk)
	ns := testenv.NetNS(t)
	runDir := t.TempDir()
	var consoles syncBuffer
	userData := filepath.Join(t.TempDir(), "user-data")
	if err := os.WriteFile(userData, []byte("#cloud-config\nbootcmd:\n  - [sh, -c, 'echo merged > /run/vmnet-user-data']\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := labOf(t, fmt.Sprintf(`[lab]
name = "deb"
state_dir = %q
[defaults]
image = "debian-12"
memory = "512M"
accel = "tcg"
[[network]]
name = "lan"
addresses = ["10.81.0.1/24"]
mtu = 1400
[[vm]]
name = "d1"
gateway = "10.81.0.1"
dns = "10.81.0.53"
user_data = %q
  [[vm.nic]]
  network = "lan"
  address = ["10.81.0.11/24"]
[[vm]]
name = "d2"
gateway = "10.81.0.1"
readiness = "ssh"
  [[vm.nic]]
  network = "lan"
  address = ["10.81.0.12/24"]
`, filepath.Join(t.TempDir(), "state"), userData))
	testenv.Do(t, ns, func() error {
		l, err := New(cfg, Options{RunDir: runDir, Logf: t.Logf, Console: &consoles})
		if err != nil {
			return err
		}
		defer l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), debianReady+time.Minute)
		defer cancel()
		start := time.Now()
		uerr := l.Up(ctx, debianReady)
		t.Logf("both guests ready (guest agent answers) %v after the start", time.Since(start).Round(100*time.Millisecond))
		if uerr == nil {
			sh := func(vm, cmd string) (int, string) {
				t.Helper()
				var out bytes.Buffer
				sctx, scancel := context.WithTimeout(ctx, time.Minute)
				defer scancel()
				res, err := Shell(sctx, runDir, vm, cmd, &out)
				if err != nil {
					t.Errorf("vm %s: %s: %v", vm, cmd, err)
				}
				return res.Status, strings.TrimSpace(out.String())
			}
			if st, out := sh("d1", "hostname; ip -o -4 addr show dev eth0; cat /sys/class/net/eth0/mtu"); st != 0 ||
				!strings.HasPrefix(out, "d1\n") || !strings.Contains(out, "10.81.0.11/24") || !strings.HasSuffix(out, "1400") {
				t.Errorf("d1: status %d, output %q: want hostname d1, 10.81.0.11/24 on eth0, mtu 1400", st, out)
			}
			if st, out := sh("d1", "cat /run/vmnet-user-data /etc/resolv.conf"); st != 0 || !strings.Contains(out, "merged") || !strings.Contains(out, "nameserver 10.81.0.53") {
				t.Errorf("d1: user_data not merged or dns not set: status %d, output %q", st, out)
			}
			if st, out := sh("d1", "ping -c 2 -W 5 10.81.0.12 && ping -c 1 -W 5 10.81.0.1"); st != 0 {
				t.Errorf("d1 cannot ping d2 and the host: status %d\n%s", st, out)
			}
			if st, out := sh("d2", "ping -c 2 -W 5 10.81.0.11"); st != 0 {
				t.Errorf("d2 cannot ping d1: status %d\n%s", st, out)
			}
			if st, out := sh("d2", "echo out; echo err >&2; exit 3"); st != 3 || out != "out\nerr" {
				t.Errorf("exit 3: status %d, output %q", st, out)
			}
			if st, out := sh("d2", "ip route show default; cat /root/.ssh/authorized_keys"); st != 0 || !strings.Contains(out, "via 10.81.0.1") ||
				!strings.Contains(out, "vmnet-lab-deb") {
				t.Errorf("d2 route and keys: status %d, output %q", st, out)
			}
			if _, err := os.Stat(filepath.Join(runDir, LabKeyFile)); err != nil {
				t.Errorf("lab key: %v", err)
			}
		}
		tctx, tcancel := context.WithTimeout(context.Background(), time.Minute)
		defer tcancel()
		stop := time.Now()
		terr := l.Teardown(tctx)
		t.Logf("teardown (both guests stopped) took %v", time.Since(stop).Round(100*time.Millisecond))
		return errors.Join(uerr, terr)
	})
	for _, vm := range []string{"d1", "d2"} {
		if _, err := os.Lstat(filepath.Join(runDir, "vm-"+vm, agentSocket)); err == nil {
			t.Errorf("vm %s: guest agent socket left after teardown", vm)
		}
	}
	if n := strings.Count(consoles.String(), "reboot: Power down"); n != 2 {
		t.Errorf("the consoles show %d kernel power-off lines, want 2: the power button did not power both guests off", n)
	}
	if after := fileSHA(t, d.Disk); after != before {
		t.Errorf("base image %s changed: sha256 %s, was %s", d.Disk, after, before)
	}
}

// TestDebianRun: `vmnet run` with a debian-12 VM runs the command through
// the guest agent and returns its status.
func TestDebianRun(t *testing.T) {
	debianImage(t)
	cfg := labOf(t, fmt.Sprintf(`[lab]
name = "debrun"
state_dir = %q
[[network]]
name = "lan"
addresses = ["10.82.0.1/24"]
[[vm]]
name = "d"
image = "debian-12"
memory = "512M"
accel = "tcg"
  [[vm.nic]]
  network = "lan"
  address = ["10.82.0.2/24"]
`, filepath.Join(t.TempDir(), "state")))
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), debianReady+2*time.Minute)
	defer cancel()
	// The distribution keeps its address space randomization (2); only
	// the throwaway test image turns it off for TCG's sake.
	st, err := Run(ctx, cfg, "d", "ping -c 1 -W 5 10.82.0.1 >/dev/null && echo pinged && cat /proc/sys/kernel/randomize_va_space && exit 7", RunOptions{
		BootTimeout: debianReady, Timeout: time.Minute, Stdout: &out, Options: Options{Logf: t.Logf}})
	if err != nil {
		t.Fatal(err)
	}
	if st != 7 || strings.TrimSpace(out.String()) != "pinged\n2" {
		t.Errorf("status %d, output %q; want 7, pinged and randomization 2", st, out.String())
	}
}

// TestSeedWithoutCloudInit: a cloud-init seed on an image that has no
// cloud-init and no guest agent (vmnet's test image), with readiness
// agent, fails within the readiness timeout with an error that names the
// method and shows the console's last lines.
func TestSeedWithoutCloudInit(t *testing.T) {
	testenv.RequirePrivateRun(t)
	testenv.RequireRoot(t)
	testenv.RequireProgram(t, "qemu-system-x86_64")
	testenv.RequireProgram(t, "genisoimage")
	img, err := images.Ensure(context.Background(), images.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ns := testenv.NetNS(t)
	runDir := t.TempDir()
	cfg := labOf(t, fmt.Sprintf(`[lab]
name = "noci"
state_dir = %q
[[network]]
name = "n"
[[vm]]
name = "v"
accel = "tcg"
kernel = %q
initrd = %q
append = "console=ttyS0"
cloud_init = true
readiness = "agent"
  [[vm.nic]]
  network = "n"
  address = ["10.83.0.2/24"]
`, filepath.Join(t.TempDir(), "state"), img.Kernel, img.Initrd))
	const timeout = 20 * time.Second
	testenv.Do(t, ns, func() error {
		l, err := New(cfg, Options{RunDir: runDir})
		if err != nil {
			return err
		}
		defer l.Close()
		start := time.Now()
		uerr := l.Up(context.Background(), timeout)
		took := time.Since(start)
		if uerr == nil {
			t.Error("a guest without an agent became ready")
		} else {
			msg := uerr.Error()
			for _, want := range []string{"vm v", "readiness agent", "guest agent did not answer", "last console lines", "VMNET-READY"} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q lacks %q", msg, want)
				}
			}
			t.Logf("after %v: %v", took.Round(time.Second), uerr)
		}
		if took > timeout+15*time.Second {
			t.Errorf("failed after %v, readiness timeout %v", took, timeout)
		}
		if _, err := os.Stat(filepath.Join(runDir, "vm-v", seedFile)); err != nil {
			t.Errorf("seed: %v", err)
		}
		tctx, tcancel := context.WithTimeout(context.Background(), time.Minute)
		defer tcancel()
		return l.Teardown(tctx)
	})
}
