package qemu

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/testenv"
)

// victim is a root-owned file outside every vmnet directory that a
// planted link points at; unchanged reports whether root left it alone.
type victim struct {
	path string
	body string
}

func newVictim(t *testing.T) victim {
	t.Helper()
	v := victim{path: filepath.Join(t.TempDir(), "victim"), body: "precious\n"}
	if err := os.WriteFile(v.path, []byte(v.body), 0o644); err != nil {
		t.Fatal(err)
	}
	return v
}

func (v victim) check(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(v.path)
	if err != nil {
		t.Fatalf("victim: %v", err)
	}
	st, _ := os.Stat(v.path)
	sys := st.Sys().(*syscall.Stat_t)
	if string(b) != v.body || st.Mode().Perm() != 0o644 || sys.Uid != 0 || sys.Gid != 0 {
		t.Errorf("victim %s changed: %q mode %v owner %d:%d", v.path, b, st.Mode(), sys.Uid, sys.Gid)
	}
}

// An unprivileged user's spec: QEMU as nobody, a readable kernel, no guest
// is ever booted (every case fails before QEMU starts).
func plantSpec(t *testing.T) Spec {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireProgram(t, DefaultBinary)
	dir := t.TempDir()
	k := filepath.Join(dir, "kernel")
	if err := os.WriteFile(k, []byte("not a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	return Spec{Name: "planted", Kernel: k, RunDir: filepath.Join(dir, "run"), User: &User{UID: 65534, GID: 65534}}
}

func startErr(t *testing.T, s Spec) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	vm, err := Start(ctx, s)
	if err == nil {
		vm.Stop(ctx)
		t.Fatal("Start succeeded")
	}
	t.Log(err)
	return err
}

// Scenario 7 (issue 10): no root file operation follows a link that
// QEMU's user could plant. The old code chmod'ed and chowned the run
// directory through a symlink, left it to QEMU's user, chowned
// console.sock by path and truncated a console log through a link.
func TestPlantedLinks(t *testing.T) {
	t.Run("run dir is a symlink", func(t *testing.T) {
		s := plantSpec(t)
		target := t.TempDir()
		os.Chmod(target, 0o755)
		if err := os.Symlink(target, s.RunDir); err != nil {
			t.Fatal(err)
		}
		if err := startErr(t, s); !strings.Contains(err.Error(), "symlink") {
			t.Errorf("error does not name the link: %v", err)
		}
		st, _ := os.Stat(target)
		if st.Mode().Perm() != 0o755 || st.Sys().(*syscall.Stat_t).Uid != 0 {
			t.Errorf("link target changed: mode %v uid %d", st.Mode(), st.Sys().(*syscall.Stat_t).Uid)
		}
	})

	t.Run("run dir belongs to QEMU's user", func(t *testing.T) {
		// What an older vmnet left: a run dir chowned to QEMU's user, in
		// which that user planted links named like vmnet's files.
		s := plantSpec(t)
		v := newVictim(t)
		os.Mkdir(s.RunDir, 0o700)
		for _, n := range []string{"console.sock", QMPSocketName, PidfileName, "shell.sock"} {
			os.Symlink(v.path, filepath.Join(s.RunDir, n))
		}
		os.Chown(s.RunDir, 65534, 65534)
		if err := startErr(t, s); !strings.Contains(err.Error(), "belongs to uid 65534") {
			t.Errorf("error does not say whose the dir is: %v", err)
		}
		v.check(t)
		if st, _ := os.Stat(s.RunDir); st.Sys().(*syscall.Stat_t).Uid != 65534 {
			t.Errorf("vmnet took over a directory it did not make")
		}
	})

	t.Run("console log is a symlink", func(t *testing.T) {
		s := plantSpec(t)
		v := newVictim(t)
		s.ConsoleLog = filepath.Join(t.TempDir(), "vm.console")
		os.Symlink(v.path, s.ConsoleLog)
		if err := startErr(t, s); !strings.Contains(err.Error(), "console log") || !strings.Contains(err.Error(), "symlink") {
			t.Errorf("error: %v", err)
		}
		v.check(t)
		// The run directory vmnet made is root's and private.
		st, err := os.Lstat(s.RunDir)
		if err != nil || st.Mode().Perm() != 0o700 || st.Sys().(*syscall.Stat_t).Uid != 0 {
			t.Errorf("run dir: %v %v", st.Mode(), err)
		}
		if ents, _ := os.ReadDir(s.RunDir); len(ents) != 0 {
			t.Errorf("run dir not cleaned up: %v", ents)
		}
	})

	t.Run("sockets and pidfile", func(t *testing.T) {
		testenv.RequireRoot(t)
		v := newVictim(t)
		dir := t.TempDir()
		p := filepath.Join(dir, "qemu.pid")
		os.Symlink(v.path, p)
		if err := writePidfile(p, 42); err != nil {
			t.Fatal(err)
		}
		if st, err := os.Lstat(p); err != nil || !st.Mode().IsRegular() {
			t.Errorf("pidfile: %v %v", st, err)
		}
		v.check(t)
		sock := filepath.Join(dir, "x.sock")
		os.Symlink(v.path, sock)
		if _, err := ListenUnix(sock, 0o600); err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Errorf("ListenUnix over a symlink: %v", err)
		}
		v.check(t)
		if _, err := CreateFile(sock, 0o644, false); err == nil {
			t.Errorf("CreateFile wrote through a symlink")
		}
		v.check(t)
	})
}

// A socket vmnet binds has its final mode from the start, and RootDir
// takes write access away from others on vmnet's own directory.
func TestRootDirAndSocketMode(t *testing.T) {
	testenv.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "d")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o777)
	if err := RootDir(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o711 {
		t.Errorf("mode %v, want 0711", st.Mode())
	}
	if err := RootDir(dir, 0o775); err == nil {
		t.Errorf("RootDir accepted a group-writable mode")
	}
	old := syscall.Umask(0)
	f, err := ListenUnix(filepath.Join(dir, "s.sock"), 0o600)
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if st, _ := os.Stat(filepath.Join(dir, "s.sock")); st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v with umask 0, want 0600", st.Mode())
	}
	// A stale socket of an earlier run is replaced.
	f.Close()
	f2, err := ListenUnix(filepath.Join(dir, "s.sock"), 0o600)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	f2.Close()
}

// KVM is checked as QEMU's user, not as root: accel kvm with a user who
// cannot open /dev/kvm is refused before QEMU starts, saying what to do.
func TestKVMCheckedAsUser(t *testing.T) {
	s := plantSpec(t)
	if _, err := os.Stat("/dev/kvm"); err != nil {
		testenv.Missing(t, "/dev/kvm: %v", err)
	}
	if allowed(s.User, "/dev/kvm", 6) == nil {
		t.Skip("uid 65534 may open /dev/kvm on this host; nothing to refuse")
	}
	s.Accel = AccelKVM
	if err := startErr(t, s); !strings.Contains(err.Error(), "cannot open /dev/kvm") || !strings.Contains(err.Error(), "accel auto or tcg") {
		t.Errorf("accel kvm as a user without /dev/kvm: %v", err)
	}
}

// setACL writes an access ACL the way setfacl does (the kernel's xattr
// format), mask included; entries are tag, perm, id, in tag order.
func setACL(t *testing.T, path string, named uint32, perm, mask uint16) {
	t.Helper()
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range []struct {
		tag, perm uint16
		id        uint32
	}{{aclUserObj, 6, ^uint32(0)}, {aclUser, perm, named}, {aclGroupObj, 0, ^uint32(0)}, {aclMask, mask, ^uint32(0)}, {aclOther, 0, ^uint32(0)}} {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	if err := unix.Setxattr(path, "system.posix_acl_access", b, 0); err != nil {
		testenv.Missing(t, "POSIX ACLs on %s: %v", path, err)
	}
}

// allowed reads ACLs: a named-user entry grants what the mode bits deny,
// limited by the mask.
func TestAllowedACL(t *testing.T) {
	testenv.RequireRoot(t)
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, nil, 0o600)
	u := &User{UID: 65534, GID: 65534}
	if allowed(u, p, 6) == nil {
		t.Fatal("mode 0600 root file allowed to uid 65534")
	}
	setACL(t, p, 65534, 6, 6)
	if err := allowed(u, p, 6); err != nil {
		t.Errorf("ACL u:65534:rw not honoured: %v", err)
	}
	setACL(t, p, 65534, 6, 4)
	if allowed(u, p, 6) == nil || allowed(u, p, 4) != nil {
		t.Errorf("ACL mask r-- not honoured")
	}
	if err := allowed(&User{UID: 1234, GID: 4321, Groups: []uint32{65534}}, p, 4); err == nil {
		t.Errorf("uid 1234 has no ACL entry and is not in the file's group")
	}
}
