package tests

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vmnet/vmnet/internal/qemu"
	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/netns"
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
	seen := watchQEMU("-name\x00ci\x00")
	r := vmnetIn(t, ns, "run", ciLab, "ci", "--", "sh", "-c",
		"ping -c 2 -W 5 10.80.0.1 && ping -c 2 -W 5 fd80::1 && ethtool -l eth0 && ethtool -k eth0")
	if r.status != 0 {
		t.Fatalf("status %d\nstdout:\n%s\nstderr:\n%s", r.status, r.stdout, r.stderr)
	}
	// Scenario 6 (issue 10): a default run's QEMU is vmnet's own
	// unprivileged user, under the seccomp sandbox.
	u, err := user.Lookup(qemu.DedicatedUser())
	if err != nil {
		t.Fatal(err)
	}
	st := seen()
	for _, re := range []string{`(?m)^Uid:\s+` + u.Uid + `\s`, `(?m)^Gid:\s+` + u.Gid + `\s`, `(?m)^Seccomp:\s+2$`} {
		if !regexp.MustCompile(re).MatchString(st) || u.Uid == "0" || u.Gid == "0" {
			t.Errorf("QEMU status lacks %s:\n%s", re, st)
		}
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

// TestRunAsUser boots a guest whose QEMU runs as nobody (user = in the
// lab file) under the seccomp sandbox: the tap is owned by nobody, QEMU
// only receives fds, the test image stays in root's cache.
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
	seen := watchQEMU("-name\x00a\x00")
	r := vmnetIn(t, ns, "run", lab, "a", "--", "ping -c 2 -W 5 10.81.0.1 && sleep 3")
	if r.status != 0 {
		t.Fatalf("status %d\n%s\n%s", r.status, r.stdout, r.stderr)
	}
	st := seen()
	for _, re := range []string{`(?m)^Uid:\s+65534\s`, `(?m)^Gid:\s+65534\s`, `(?m)^Seccomp:\s+2$`} {
		if !regexp.MustCompile(re).MatchString(st) {
			t.Errorf("QEMU status lacks %s:\n%s", re, st)
		}
	}
	onlyLoopback(t, ns)
}

// watchQEMU samples, every 200 ms until the returned function is called,
// the status of a QEMU of a `vmnet run` whose command line contains
// argPart, and returns the last sample (QEMU enters seccomp mode only
// after it parsed its options, so an early sample may predate that).
func watchQEMU(argPart string) func() string {
	stop := make(chan struct{})
	last := make(chan string, 1)
	go func() {
		st := ""
		for {
			select {
			case <-stop:
				last <- st
				return
			case <-time.After(200 * time.Millisecond):
			}
			if s := qemuStatus("/vmnet-run-", argPart); s != "" {
				st = s
			}
		}
	}()
	return func() string {
		close(stop)
		return <-last
	}
}

// qemuStatus returns /proc/PID/status of the first QEMU whose run
// directory (qemu.RunDirEnv in its environment) contains dirPart and
// whose command line contains argPart, or "".
func qemuStatus(dirPart, argPart string) string {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil || !strings.Contains(string(env), "\x00"+qemu.RunDirEnv+"=") && !strings.HasPrefix(string(env), qemu.RunDirEnv+"=") {
			continue
		}
		var dir string
		for _, kv := range strings.Split(string(env), "\x00") {
			if v, ok := strings.CutPrefix(kv, qemu.RunDirEnv+"="); ok {
				dir = v
			}
		}
		cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if strings.Contains(dir, dirPart) && strings.Contains(string(cmd), argPart) {
			st, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
			return string(st)
		}
	}
	return ""
}

// TestRunSideBySide: three CI jobs run the same lab at once on one host
// (here, one test namespace). Each works in a network namespace of its
// own, so their identical bridges, taps, MACs and addresses never meet,
// and none of them shows up in the caller's namespace.
func TestRunSideBySide(t *testing.T) {
	requireGuests(t)
	ns := testenv.NetNS(t)
	const jobs = 3
	var seen []string
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() { // the caller's namespace stays empty while the jobs run
		defer close(watched)
		for {
			select {
			case <-stop:
				return
			case <-time.After(300 * time.Millisecond):
			}
			var out []byte
			netns.Do(ns, func() error {
				out, _ = exec.Command("ip", "-o", "link", "show").Output()
				return nil
			})
			if s := strings.TrimSpace(string(out)); strings.Count(s, "\n") != 0 {
				seen = append(seen, s)
			}
		}
	}()
	t.Run("jobs", func(t *testing.T) { // returns when every parallel job has
		for i := range jobs {
			t.Run(fmt.Sprint(i), func(t *testing.T) {
				t.Parallel()
				r := vmnetIn(t, ns, "run", ciLab, "ci", "--boot-timeout", "6m", "--",
					fmt.Sprintf("ping -c 2 -W 5 10.80.0.1 && ping -c 2 -W 5 fd80::1 && echo job-%d-done", i))
				if r.status != 0 || !strings.Contains(r.stdout, fmt.Sprintf("job-%d-done", i)) {
					t.Errorf("job %d failed: status %d\nstdout:\n%s\nstderr:\n%s", i, r.status, r.stdout, r.stderr)
				}
			})
		}
	})
	close(stop)
	<-watched
	if len(seen) > 0 {
		t.Errorf("runs made interfaces in the caller's namespace:\n%s", seen[0])
	}
	onlyLoopback(t, ns)
}
