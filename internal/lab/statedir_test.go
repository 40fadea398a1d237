package lab

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/vmconfig"
)

// inPrivateNS runs fn on a thread inside a fresh network namespace (Down
// deletes tagged interfaces: never in the host's), passing its identity.
func inPrivateNS(t *testing.T, fn func(ns NetNS)) {
	t.Helper()
	testenv.Do(t, testenv.NetNS(t), func() error {
		ns, err := CurrentNetNS()
		if err != nil {
			return err
		}
		fn(ns)
		return nil
	})
}

// files lists what is in dir, for comparing before and after.
func files(t *testing.T, dir string) string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			out = append(out, strings.TrimPrefix(p, dir))
		}
		return nil
	})
	return strings.Join(out, " ")
}

// TestStateDirIsVmnets (scenario 4): a state_dir that exists and is not
// vmnet's is refused and left as it was, the lab file's directory
// included; a marked directory loses only the files vmnet makes; a second
// lab on the same state_dir is refused.
func TestStateDirIsVmnets(t *testing.T) {
	testenv.RequirePrivateRun(t)
	inPrivateNS(t, func(ns NetNS) { stateDirIsVmnets(t, ns) })
}

func stateDirIsVmnets(t *testing.T, ns NetNS) {
	user := t.TempDir()
	os.WriteFile(filepath.Join(user, "lab.toml"), []byte("[lab]\nname = \"a\"\n"), 0o644)
	os.WriteFile(filepath.Join(user, "disk.qcow2"), []byte("precious"), 0o644)
	os.WriteFile(filepath.Join(user, stateFile), []byte("{}"), 0o644) // named like ours, still not ours
	before := files(t, user)

	// state_dir = "." as the old code accepted it (vmconfig now refuses
	// it; the runtime check must hold on its own).
	err := ClaimStateDir(&vmconfig.Lab{Name: "a", StateDir: user}, ns)
	if err == nil || !strings.Contains(err.Error(), "is not a vmnet state directory") || !strings.Contains(err.Error(), user) {
		t.Fatalf("claiming an existing user directory: %v", err)
	}
	if err := RemoveStateDir(user, "a", ns); err != nil {
		t.Errorf("RemoveStateDir of an unmarked directory: %v", err)
	}
	if err := Down(context.Background(), "a", user, ns, t.Logf); err != nil {
		t.Errorf("Down with an unmarked state dir: %v", err)
	}
	if after := files(t, user); after != before {
		t.Fatalf("user directory changed:\nbefore %s\nafter  %s", before, after)
	}

	// vmnet's own directory: created, marked, refused to another lab.
	dir := filepath.Join(t.TempDir(), "state")
	a := &vmconfig.Lab{Name: "a", StateDir: dir}
	if err := ClaimStateDir(a, ns); err != nil {
		t.Fatal(err)
	}
	if m, err := ReadMarker(dir); err != nil || m.Lab != "a" || m.NetNS.ID != ns.ID {
		t.Fatalf("marker: %+v %v", m, err)
	}
	if err := ClaimStateDir(a, ns); err != nil {
		t.Errorf("claiming its own directory again: %v", err)
	}
	err = ClaimStateDir(&vmconfig.Lab{Name: "b", StateDir: dir}, ns)
	if err == nil || !strings.Contains(err.Error(), "belongs to lab a") {
		t.Errorf("second lab on the same state_dir: %v", err)
	}
	// A lab called a with another state_dir in the same namespace.
	err = ClaimStateDir(&vmconfig.Lab{Name: "a", StateDir: filepath.Join(t.TempDir(), "other")}, ns)
	if err == nil || !strings.Contains(err.Error(), "already up in this network namespace") {
		t.Errorf("second lab a in one namespace: %v", err)
	}
	if target, err := os.Readlink(filepath.Join(StateRoot(ns), "a")); err != nil || target != dir {
		t.Errorf("state root entry of lab a: %q %v", target, err)
	}

	// Teardown removes what vmnet made and keeps the rest.
	writeState(&State{Lab: "a", StateDir: dir, VMs: []VMState{{Name: "r1"}}})
	os.WriteFile(filepath.Join(dir, "lock"), nil, 0o600)
	os.MkdirAll(filepath.Join(dir, "vm-r1"), 0o700)
	os.WriteFile(filepath.Join(dir, "vm-r1", "qemu.pid"), []byte("1\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "r1.console"), nil, 0o600)
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("mine"), 0o600)
	err = RemoveStateDir(dir, "a", ns)
	if err == nil || !strings.Contains(err.Error(), "notes.txt") {
		t.Errorf("RemoveStateDir with a user file: %v", err)
	}
	if got := files(t, dir); got != " /.vmnet-lab /notes.txt" {
		t.Errorf("left after teardown: %q, want the marker and the user's file", got)
	}
	os.Remove(filepath.Join(dir, "notes.txt"))
	if err := RemoveStateDir(dir, "a", ns); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(dir); !os.IsNotExist(err) {
		t.Errorf("state dir left: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(StateRoot(ns), "a")); !os.IsNotExist(err) {
		t.Errorf("state root entry left: %v", err)
	}
}

// TestStateDirPerNamespace (scenario 11): the default state directory
// depends on the network namespace, and a marker from another namespace
// is refused with its namespace named.
func TestStateDirPerNamespace(t *testing.T) {
	testenv.RequirePrivateRun(t)
	inPrivateNS(t, func(here NetNS) { stateDirPerNamespace(t, here) })
}

func stateDirPerNamespace(t *testing.T, here NetNS) {
	other := testenv.NetNS(t)
	var there NetNS
	testenv.Do(t, other, func() error {
		var err error
		there, err = CurrentNetNS()
		return err
	})
	if there.ID == here.ID || StateRoot(there) == StateRoot(here) {
		t.Fatalf("two namespaces, one key: %v %v", here, there)
	}
	for _, ns := range []NetNS{here, there} {
		cfg, err := vmconfig.Parse("lab.toml", []byte("[lab]\nname = \"demo\"\n"), vmconfig.Options{StateRoot: StateRoot(ns)})
		if err != nil {
			t.Fatal(err)
		}
		if err := ClaimStateDir(cfg, ns); err != nil {
			t.Fatalf("lab demo in %v: %v", ns, err)
		}
		t.Cleanup(func() { RemoveStateDir(cfg.StateDir, "demo", ns) })
	}
	es := FindElsewhere("demo", here)
	if len(es) != 1 || es[0].Marker.NetNS.ID != there.ID {
		t.Fatalf("FindElsewhere = %+v", es)
	}
	msg := NotHere("demo", "down", es).Error()
	if !strings.Contains(msg, "lab demo is not in this network namespace; it is up in namespace net:[") ||
		!strings.Contains(msg, "vmnet --netns net:[") {
		t.Errorf("NotHere: %s", msg)
	}
	shared := &vmconfig.Lab{Name: "x", StateDir: filepath.Join(t.TempDir(), "s")}
	if err := ClaimStateDir(shared, there); err != nil {
		t.Fatal(err)
	}
	if err := ClaimStateDir(shared, here); err == nil || !strings.Contains(err.Error(), "another network namespace") {
		t.Errorf("one state_dir from two namespaces: %v", err)
	}
	if err := Down(context.Background(), "x", shared.StateDir, here, nil); err == nil || !strings.Contains(err.Error(), "not in this network namespace") {
		t.Errorf("Down from the wrong namespace: %v", err)
	}
	if _, err := os.Stat(shared.StateDir); err != nil {
		t.Errorf("Down from the wrong namespace removed the state dir: %v", err)
	}
}

// decoy starts a long-running process whose argv is args (args[0] is
// what ps shows) and stops it when the test ends.
func decoy(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("/bin/sh")
	cmd.Args = append([]string{args[0], "-c", "sleep 600; :"}, args[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// TestQEMUMatchedExactly (scenario 1): a process is a lab's QEMU only
// when its pid has the recorded start time and one of its arguments is a
// path inside the lab's directories; mentioning the directory as a
// substring or reusing the pid is not enough.
func TestQEMUMatchedExactly(t *testing.T) {
	dir := t.TempDir()
	run := filepath.Join(dir, "vm-a")
	start := func(c *exec.Cmd) uint64 {
		for range 50 {
			if st, err := procStart(c.Process.Pid); err == nil {
				return st
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatal("no start time")
		return 0
	}
	real := decoy(t, "qemu-system-x86_64", "-pidfile", run+"/qemu.pid", "-qmp", "unix:"+run+"/qmp.sock,server=on,wait=off")
	realStart := start(real)
	sub := decoy(t, "qemu-system-x86_64", "-name", "x"+dir+"/vm-a/y", "-append", "root="+dir+"-other/vm-a/qmp.sock")
	dots := decoy(t, "qemu-system-x86_64", "-pidfile", dir+"/../elsewhere/qemu.pid")
	for _, c := range []struct {
		name string
		vm   VMState
		want bool
	}{
		{"recorded pid and start time", VMState{Name: "a", PID: real.Process.Pid, PIDStart: realStart, RunDir: run}, true},
		{"pid reused (other start time)", VMState{Name: "a", PID: real.Process.Pid, PIDStart: realStart + 1, RunDir: run}, false},
		{"no start time recorded", VMState{Name: "a", PID: real.Process.Pid, RunDir: run}, false},
		{"directory only as a substring", VMState{Name: "a", PID: sub.Process.Pid, PIDStart: start(sub), RunDir: run}, false},
		{"path leaving the directory", VMState{Name: "a", PID: dots.Process.Pid, PIDStart: start(dots), RunDir: run}, false},
		{"our own pid", VMState{Name: "a", PID: os.Getpid(), PIDStart: 1, RunDir: run}, false},
	} {
		if got := qemuOf(c.vm, dir); got != c.want {
			t.Errorf("%s: qemuOf = %v, want %v", c.name, got, c.want)
		}
	}
	// The real one is stopped by Down; the decoys live on.
	if testing.Short() || os.Geteuid() != 0 {
		return
	}
	testenv.RequirePrivateRun(t)
	inPrivateNS(t, func(ns NetNS) { downStopsOnlyTheLabsQEMU(t, dir, ns, real, realStart, sub, dots) })
}

func downStopsOnlyTheLabsQEMU(t *testing.T, dir string, ns NetNS, real *exec.Cmd, realStart uint64, sub, dots *exec.Cmd) {
	start, _ := procStart(sub.Process.Pid)
	run := filepath.Join(dir, "vm-a")
	cfg := &vmconfig.Lab{Name: "qm", StateDir: filepath.Join(dir, "state")}
	if err := ClaimStateDir(cfg, ns); err != nil {
		t.Fatal(err)
	}
	writeState(&State{Lab: "qm", StateDir: cfg.StateDir, VMs: []VMState{
		{Name: "a", PID: real.Process.Pid, PIDStart: realStart, RunDir: run},
		{Name: "b", PID: sub.Process.Pid, PIDStart: start, RunDir: run},
	}})
	var down error
	testenv.Do(t, testenv.NetNS(t), func() error {
		nsHere, err := CurrentNetNS()
		if err != nil {
			return err
		}
		down = Down(context.Background(), "qm", cfg.StateDir, nsHere, t.Logf)
		return nil
	})
	if down == nil || !strings.Contains(down.Error(), "not in this network namespace") {
		t.Errorf("Down from another namespace: %v", down)
	}
	if err := Down(context.Background(), "qm", cfg.StateDir, ns, t.Logf); err != nil {
		t.Fatal(err)
	}
	real.Wait()
	if real.ProcessState == nil || !real.ProcessState.Exited() && real.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
		t.Errorf("the lab's process was not stopped: %v", real.ProcessState)
	}
	for _, c := range []*exec.Cmd{sub, dots} {
		if !testenv.Running(c.Process.Pid) {
			t.Errorf("decoy %v was killed", c.Args)
		}
	}
	if _, err := os.Stat(cfg.StateDir); !os.IsNotExist(err) {
		t.Errorf("state dir left: %v", err)
	}
}

// TestDownByNameAfterCrash: with its own state_dir, a lab is found by
// name through its entry in the namespace's state root; Down by that
// entry (no supervisor left to clean up) removes the real directory and
// the entry.
func TestDownByNameAfterCrash(t *testing.T) {
	testenv.RequirePrivateRun(t)
	inPrivateNS(t, func(ns NetNS) {
		dir := filepath.Join(t.TempDir(), "own")
		cfg := &vmconfig.Lab{Name: "c", StateDir: dir}
		if err := ClaimStateDir(cfg, ns); err != nil {
			t.Fatal(err)
		}
		writeState(&State{Lab: "c", StateDir: dir, Supervisor: 0})
		entry := filepath.Join(StateRoot(ns), "c")
		if err := Down(context.Background(), "c", entry, ns, t.Logf); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{dir, entry} {
			if _, err := os.Lstat(p); !os.IsNotExist(err) {
				t.Errorf("%s left: %v", p, err)
			}
		}
	})
}

// TestStateRootGoesWithItsLastLab: down of the last lab in a namespace
// removes the namespace's ns-* directory; while another lab is up there it
// stays, and a later claim recreates it.
func TestStateRootGoesWithItsLastLab(t *testing.T) {
	testenv.RequirePrivateRun(t)
	inPrivateNS(t, func(here NetNS) {
		var cfgs []*vmconfig.Lab
		for _, name := range []string{"one", "two"} {
			cfg, err := vmconfig.Parse("lab.toml", []byte("[lab]\nname = \""+name+"\"\n"), vmconfig.Options{StateRoot: StateRoot(here)})
			if err != nil {
				t.Fatal(err)
			}
			if err := ClaimStateDir(cfg, here); err != nil {
				t.Fatal(err)
			}
			cfgs = append(cfgs, cfg)
		}
		if err := RemoveStateDir(cfgs[0].StateDir, "one", here); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(StateRoot(here)); err != nil {
			t.Fatalf("state root removed while lab two is up: %v", err)
		}
		if err := RemoveStateDir(cfgs[1].StateDir, "two", here); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(StateRoot(here)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("state root left after the last lab went down: %v", err)
		}
		if err := ClaimStateDir(cfgs[0], here); err != nil {
			t.Fatalf("claim after the root went: %v", err)
		}
		RemoveStateDir(cfgs[0].StateDir, "one", here)
	})
}
