package lab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmnet/vmnet/images"
	"github.com/vmnet/vmnet/internal/qemu"
	"github.com/vmnet/vmnet/internal/snapshot"
	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/tap"
	"golang.org/x/sys/unix"
)

// syncBuffer collects console output and log lines from several guests.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) logf(format string, args ...any) { fmt.Fprintf(s, format+"\n", args...) }

func warmTestImage(t *testing.T) *images.Image {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireProgram(t, "qemu-system-x86_64")
	img, err := images.Ensure(context.Background(), images.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &img
}

// snapshots lists the complete snapshots in dir.
func snapshots(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(dir, e.Name(), snapshot.FileMeta)); err == nil {
			got = append(got, e.Name())
		}
	}
	return got
}

// rarpProto is ETH_P_RARP in network byte order, for a packet socket.
const rarpProto = unix.ETH_P_RARP>>8 | (unix.ETH_P_RARP&0xff)<<8

// TestWarmClones: two guests of one lab restored from one snapshot get
// their own MACs, addresses (link-local ones too), host names and random bytes, keep TSO, and
// ping each other; QEMU does not announce them (RARP) from the MAC of the
// saved guest.
func TestWarmClones(t *testing.T) {
	testenv.RequirePrivateRun(t)
	img := warmTestImage(t)
	ns := testenv.NetNS(t)
	snaps := t.TempDir()
	cfg := labOf(t, fmt.Sprintf(`[lab]
name = "wc"
state_dir = %q
[[network]]
name = "n"
addresses = ["10.77.0.1/24"]
[[vm]]
name = "a"
accel = "tcg"
  [[vm.nic]]
  network = "n"
  mac = "52:54:00:77:00:02"
  address = ["10.77.0.2/24"]
[[vm]]
name = "b"
accel = "tcg"
  [[vm.nic]]
  network = "n"
  mac = "52:54:00:77:00:03"
  address = ["10.77.0.3/24"]
`, filepath.Join(t.TempDir(), "state")))
	var log syncBuffer
	runDir := t.TempDir()
	out := map[string]string{}
	rarps := 0
	testenv.Do(t, ns, func() error {
		// QEMU announces a guest that arrived by migration with RARP
		// frames from the MAC it was saved with, which every clone
		// shares: restored guests must not (counted on every interface
		// of the lab's namespace, from before the restores).
		rarp, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(rarpProto))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		defer unix.Close(rarp)
		defer func() {
			buf := make([]byte, 2048)
			for {
				if _, _, err := unix.Recvfrom(rarp, buf, 0); err != nil {
					return
				}
				rarps++
			}
		}()
		l, err := New(cfg, Options{RunDir: runDir, Image: img, SnapshotDir: snaps, Logf: log.logf})
		if err != nil {
			return err
		}
		defer l.Close()
		defer func() {
			tctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			l.Teardown(tctx)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := l.Up(ctx, 2*time.Minute); err != nil {
			return err
		}
		for vm, peer := range map[string]string{"a": "10.77.0.3", "b": "10.77.0.2"} {
			var b bytes.Buffer
			res, err := Shell(ctx, runDir, vm, "grep -c vmnet.warm /proc/cmdline; cat /sys/class/net/eth0/address; ip -4 -o addr show dev eth0 | awk '{print $4}'; hostname; "+
				"head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; ethtool -k eth0 | grep '^tcp-segmentation-offload'; ping -c 1 -W 10 "+peer+" >/dev/null && echo ping-ok; "+
				"cat /proc/sys/kernel/randomize_va_space; ip -6 -o addr show dev eth0 scope link | awk '{print $4}'", &b)
			if err != nil {
				return fmt.Errorf("vm %s: %w", vm, err)
			}
			if res.Status != 0 {
				return fmt.Errorf("vm %s: status %d: %s", vm, res.Status, b.String())
			}
			out[vm] = b.String()
			// QEMU re-applied the restored guest's offloads to its new tap.
			info, err := tap.Describe("wc-" + vm + "-0")
			if err != nil {
				return err
			}
			if info.Offloads == nil || *info.Offloads&tap.OffloadTSO4 == 0 {
				return fmt.Errorf("vm %s: tap %s has offloads %v, want TSO (tso4) as the guest negotiated", vm, info.Name, info.Offloads)
			}
		}
		return nil
	})
	t.Logf("log:\n%s", log.String())
	if got := snapshots(t, snaps); len(got) != 1 {
		t.Fatalf("snapshots %v, want exactly one for the two guests of one shape", got)
	}
	lines := map[string][]string{}
	for vm, o := range out {
		lines[vm] = strings.Split(strings.TrimSpace(o), "\n")
		t.Logf("vm %s:\n%s", vm, o)
		if len(lines[vm]) != 9 {
			t.Fatalf("vm %s: want 9 lines, got %q", vm, o)
		}
	}
	a, b := lines["a"], lines["b"]
	want := map[string][]string{
		"a": {"1", "52:54:00:77:00:02", "10.77.0.2/24", "a"},
		"b": {"1", "52:54:00:77:00:03", "10.77.0.3/24", "b"},
	}
	for vm, w := range want {
		for i, s := range w {
			if lines[vm][i] != s {
				t.Errorf("vm %s: line %d is %q, want %q (restored: 1, MAC, address, host name)", vm, i, lines[vm][i], s)
			}
		}
		if lines[vm][5] != "tcp-segmentation-offload: on" {
			t.Errorf("vm %s: %q, want TSO on", vm, lines[vm][5])
		}
		if lines[vm][6] != "ping-ok" {
			t.Errorf("vm %s: no ping to its peer", vm)
		}
		// No ASLR in the test image: under TCG every program started
		// would have its code translated anew (images/init.sh).
		if lines[vm][7] != "0" {
			t.Errorf("vm %s: kernel.randomize_va_space is %q, want 0", vm, lines[vm][7])
		}
		// The NICs of the saved guest came up without IPv6 addresses:
		// each clone's link-local address is made from its own MAC.
		if ll := map[string]string{"a": "fe80::5054:ff:fe77:2/64", "b": "fe80::5054:ff:fe77:3/64"}[vm]; lines[vm][8] != ll {
			t.Errorf("vm %s: link-local address %q, want %s (from its MAC)", vm, lines[vm][8], ll)
		}
		// -v tells what each boot cost the host.
		if !strings.Contains(log.String(), "vm "+vm+": QEMU CPU time to ready") {
			t.Errorf("vm %s: the log has no QEMU CPU time to ready", vm)
		}
	}
	if rarps != 0 {
		t.Errorf("%d RARP frames on the lab's network: restored guests must not be announced from the saved MAC", rarps)
	}
	if len(a[4]) != 64 || a[4] == b[4] {
		t.Errorf("random bytes of the clones: %q and %q, want 32 different bytes each", a[4], b[4])
	}
}

// warmRun is one `vmnet run` of a test-image guest with the given queue
// count and snapshot directory; it returns the command's output and the
// log lines.
func warmRun(t *testing.T, img *images.Image, snaps string, queues int, cmd string) (string, string, error) {
	cfg := labOf(t, fmt.Sprintf(`[lab]
name = "wr"
state_dir = %q
[[network]]
name = "n"
addresses = ["10.78.0.1/24"]
[[vm]]
name = "v"
accel = "tcg"
  [[vm.nic]]
  network = "n"
  queues = %d
  address = ["10.78.0.2/24"]
`, filepath.Join(t.TempDir(), "state"), queues))
	var console, log syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	st, err := Run(ctx, cfg, "v", cmd, RunOptions{BootTimeout: 2 * time.Minute, Timeout: time.Minute,
		Options: Options{Image: img, SnapshotDir: snaps, Logf: log.logf, Console: &console}})
	if err == nil && st != 0 {
		err = fmt.Errorf("command exited %d", st)
	}
	return console.String(), log.String(), err
}

// TestWarmRunSnapshots: concurrent runs of one shape from an empty cache
// both succeed and write one snapshot; a corrupt snapshot falls back to a
// cold boot, says so and is replaced; a guest of another shape (another
// queue count) never uses it.
func TestWarmRunSnapshots(t *testing.T) {
	testenv.RequirePrivateRun(t)
	img := warmTestImage(t)
	snaps := t.TempDir()
	const probe = "grep -c vmnet.warm /proc/cmdline; ping -c 1 -W 10 10.78.0.1 >/dev/null && echo ping-ok"

	var wg sync.WaitGroup
	var outs, logs [2]string
	var errs [2]error
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], logs[i], errs[i] = warmRun(t, img, snaps, 1, probe)
		}()
	}
	wg.Wait()
	for i := range 2 {
		if errs[i] != nil || !strings.Contains(outs[i], "ping-ok") {
			t.Fatalf("concurrent run %d: %v\nconsole: %s\nlog: %s", i, errs[i], outs[i], logs[i])
		}
	}
	got := snapshots(t, snaps)
	if len(got) != 1 {
		t.Fatalf("after two concurrent runs of one shape: snapshots %v, want one", got)
	}
	if saves := strings.Count(logs[0]+logs[1], "save a snapshot"); saves != 1 {
		t.Errorf("%d runs saved a snapshot, want 1; logs:\n%s\n%s", saves, logs[0], logs[1])
	}

	dir := filepath.Join(snaps, got[0])
	checkSnapshotFiles(t, dir)

	// A corrupt state file: the run boots cold once, says why, and
	// replaces the snapshot.
	before, err := os.ReadFile(filepath.Join(dir, snapshot.FileMeta))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, snapshot.FileState), []byte("not a saved guest"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, log, err := warmRun(t, img, snaps, 1, probe)
	if err != nil || !strings.Contains(out, "ping-ok") {
		t.Fatalf("run with a corrupt snapshot: %v\nconsole: %s\nlog: %s", err, out, log)
	}
	if !strings.Contains(log, "could not be restored") || !strings.Contains(log, "does not have the recorded checksum") {
		t.Errorf("the log does not say why the snapshot was not used:\n%s", log)
	}
	after, err := os.ReadFile(filepath.Join(dir, snapshot.FileMeta))
	if err != nil || bytes.Equal(before, after) {
		t.Errorf("the corrupt snapshot was not replaced (%v)", err)
	}
	if got := snapshots(t, snaps); len(got) != 1 {
		t.Errorf("snapshots after the replacement: %v, want one", got)
	}

	// A state file QEMU refuses (its checksum recorded as if it were
	// good): QEMU's reason is reported, and the snapshot replaced.
	before = after
	junk := bytes.Repeat([]byte("not a saved guest "), 200)
	if err := os.WriteFile(filepath.Join(dir, snapshot.FileState), junk, 0o644); err != nil {
		t.Fatal(err)
	}
	var m snapshot.Metadata
	if err := json.Unmarshal(before, &m); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(junk)
	m.StateSHA256 = hex.EncodeToString(sum[:])
	b, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(dir, snapshot.FileMeta), b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, log, err = warmRun(t, img, snaps, 1, probe)
	if err != nil || !strings.Contains(out, "ping-ok") {
		t.Fatalf("run with a state QEMU refuses: %v\nconsole: %s\nlog: %s", err, out, log)
	}
	if !strings.Contains(log, "could not be restored") || !strings.Contains(log, "QEMU refused the saved state") {
		t.Errorf("the log does not say why the snapshot was not used:\n%s", log)
	}
	if after, err := os.ReadFile(filepath.Join(dir, snapshot.FileMeta)); err != nil || bytes.Equal(b, after) {
		t.Errorf("the refused snapshot was not replaced (%v)", err)
	}

	// A RAM file corrupted in place at its size (as a compromised QEMU
	// could, through the read-write file QEMU 7.2 needs): the run is not
	// restored from it, says which file, boots cold once and replaces
	// the snapshot.
	before, err = os.ReadFile(filepath.Join(dir, snapshot.FileMeta))
	if err != nil {
		t.Fatal(err)
	}
	ram := filepath.Join(dir, snapshot.FileRAM)
	f, err := os.OpenFile(ram, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteAt(bytes.Repeat([]byte{0xcc}, 4096), 1<<20)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(ram, st.ModTime(), st.ModTime()); err != nil { // only the change time tells
		t.Fatal(err)
	}
	out, log, err = warmRun(t, img, snaps, 1, probe)
	if err != nil || !strings.Contains(out, "ping-ok") {
		t.Fatalf("run with a corrupt RAM file: %v\nconsole: %s\nlog: %s", err, out, log)
	}
	if !strings.Contains(log, "could not be restored") || !strings.Contains(log, "the RAM file "+ram+" does not have the recorded checksum") {
		t.Errorf("the log does not say that the RAM file %s was corrupt:\n%s", ram, log)
	}
	if after, err := os.ReadFile(filepath.Join(dir, snapshot.FileMeta)); err != nil || bytes.Equal(before, after) {
		t.Errorf("the snapshot with a corrupt RAM file was not replaced (%v)", err)
	}
	checkSnapshotFiles(t, dir)

	// Another queue count is another shape: a new snapshot, the old one
	// untouched.
	out, log, err = warmRun(t, img, snaps, 2, probe+"; ethtool -l eth0 | grep -m1 Combined")
	if err != nil || !strings.Contains(out, "ping-ok") {
		t.Fatalf("run with 2 queues: %v\nconsole: %s\nlog: %s", err, out, log)
	}
	if !strings.Contains(log, "save a snapshot") {
		t.Errorf("a guest with 2 queues did not save a snapshot of its own shape:\n%s", log)
	}
	if got := snapshots(t, snaps); len(got) != 2 {
		t.Errorf("snapshots after a run of another shape: %v, want two", got)
	}
}

// checkSnapshotFiles: a saved snapshot is root's: its directory is
// root's alone (QEMU's user gets the files by descriptor, never by path),
// and the state and metadata are root-owned and writable by root only.
// The RAM file is the exception QEMU 7.2 forces: it opens the file
// read-write even for a private mapping (and readonly=on makes the
// guest's RAM a ROM), so QEMU's user owns it, nobody else may write it,
// and every restore checks it against the digest recorded at save time.
func checkSnapshotFiles(t *testing.T, dir string) {
	t.Helper()
	u, err := qemu.ResolveUser("")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		uid  uint32
		mode os.FileMode
	}{{"", 0, 0o700}, {snapshot.FileState, 0, 0o644}, {snapshot.FileMeta, 0, 0o644}, {snapshot.FileRAM, u.UID, 0o600}} {
		p := filepath.Join(dir, c.name)
		fi, err := os.Stat(p)
		if err != nil {
			t.Error(err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != c.uid || fi.Mode().Perm() != c.mode {
			t.Errorf("%s: owner %d, mode %v; want owner %d, mode %v", p, st.Uid, fi.Mode().Perm(), c.uid, c.mode)
		}
	}
}
