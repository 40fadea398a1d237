// Package testenv gives tests what they need from the host: root, devices,
// programs, and a private network namespace per test. Outside CI a missing
// prerequisite skips the test; under CI (CI=true) it fails it.
package testenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/vmnet/vmnet/netns"
)

// CI reports whether the tests run under CI, where nothing may be skipped.
func CI() bool { return os.Getenv("CI") == "true" }

// Missing skips t outside CI and fails it under CI.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if CI() {
		t.Fatalf("prerequisite missing under CI: "+format, args...)
	}
	t.Skipf("prerequisite missing: "+format, args...)
}

// RequireRoot needs CAP_NET_ADMIN (root) and /dev/net/tun.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "needs root (CAP_NET_ADMIN)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		Missing(t, "/dev/net/tun: %v", err)
	}
}

// RequireProgram needs an executable on PATH and returns its path.
func RequireProgram(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, "program %s not on PATH (apt-get install it)", name)
	}
	return p
}

// NetNS returns a fresh private network namespace that is released when
// the test ends. Run code in it with netns.Do, or open netlink handles in
// it with netlink.NewHandleAt.
func NetNS(t testing.TB) netns.Handle {
	t.Helper()
	h := NetNSUntilExit(t)
	t.Cleanup(func() { h.Close() })
	return h
}

// NetNSUntilExit is NetNS for a package that makes many namespaces:
// the namespace stays until the test binary exits. The kernel tears a
// namespace down in a worker after its last reference goes, which under
// TCG takes a third of the guest CPU the namespace cost (one with a
// bridge and two taps: 23 of 77 ms); a guest that runs the tests (`vmnet
// exec`) powers off without doing that work. Tests that must see a
// namespace go use NetNS.
func NetNSUntilExit(t testing.TB) netns.Handle {
	t.Helper()
	RequireRoot(t)
	h, err := netns.New()
	if err != nil {
		t.Fatalf("new network namespace: %v", err)
	}
	return h
}

// Do runs fn inside ns on a locked thread and fails the test on error.
func Do(t testing.TB, ns netns.Handle, fn func() error) {
	t.Helper()
	if err := netns.Do(ns, fn); err != nil {
		t.Fatal(err)
	}
}

// Running reports whether pid is a live process, not a zombie: a child
// the test killed stays signalable until it is reaped, so kill(pid, 0)
// cannot tell.
func Running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}
