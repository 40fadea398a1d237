package netns_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/netns"
	"golang.org/x/sys/unix"
)

func loopbackOnly(t *testing.T) {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	if len(ifs) != 1 || ifs[0].Name != "lo" {
		t.Fatalf("fresh namespace should hold only lo, has %v", ifs)
	}
}

func TestNewAndDo(t *testing.T) {
	ns := testenv.NetNS(t)
	before, _ := netns.Current()
	defer before.Close()
	testenv.Do(t, ns, func() error {
		cur, err := netns.Current()
		if err != nil {
			return err
		}
		defer cur.Close()
		if !cur.Equal(ns) {
			t.Error("Do did not enter the namespace")
		}
		loopbackOnly(t)
		return nil
	})
	after, _ := netns.Current()
	defer after.Close()
	if !after.Equal(before) {
		t.Fatal("namespace not restored after Do")
	}
}

func TestDoPrivate(t *testing.T) {
	testenv.RequireRoot(t)
	if err := netns.DoPrivate(func() error { loopbackOnly(t); return nil }); err != nil {
		t.Fatal(err)
	}
}

func TestOpenMissing(t *testing.T) {
	_, err := netns.Open("vmnet-test-does-not-exist")
	if err == nil {
		t.Fatal("expected an error for a missing namespace")
	}
	t.Log(err)
}

// DoInitial leaves whatever namespace the caller entered: a child process
// started from it lives where vmnet started, with the host's interfaces.
func TestDoInitialLeavesTheCallersNamespace(t *testing.T) {
	ns := testenv.NetNS(t)
	start, err := netns.Current()
	if err != nil {
		t.Fatal(err)
	}
	defer start.Close()
	testenv.Do(t, ns, func() error {
		var out []byte
		err := netns.DoInitial(func() error {
			cur, err := netns.Current()
			if err != nil {
				return err
			}
			defer cur.Close()
			if !cur.Equal(start) {
				t.Error("DoInitial did not run in the namespace the process started in")
			}
			out, err = exec.Command("readlink", "/proc/self/ns/net").Output()
			return err
		})
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(start), &st); err != nil {
			return err
		}
		want := fmt.Sprintf("net:[%d]", st.Ino)
		if got := strings.TrimSpace(string(out)); got != want {
			t.Errorf("a child started by DoInitial is in %s, want the start namespace %s", got, want)
		}
		cur, err := netns.Current()
		if err != nil {
			return err
		}
		defer cur.Close()
		if !cur.Equal(ns) {
			t.Error("DoInitial did not return the thread to the caller's namespace")
		}
		return nil
	})
}

// StartedOffline is about the namespace the process started in: the same
// on a thread moved into a fresh namespace (no routes there), and true in
// a process started by `unshare -n` (this test binary again).
func TestStartedOffline(t *testing.T) {
	if os.Getenv("VMNET_TEST_STARTED_OFFLINE") == "1" {
		fmt.Printf("started-offline=%v\n", netns.StartedOffline())
		return
	}
	testenv.RequireRoot(t)
	testenv.RequireProgram(t, "unshare")
	here := netns.StartedOffline()
	testenv.Do(t, testenv.NetNS(t), func() error {
		if got := netns.StartedOffline(); got != here {
			t.Errorf("StartedOffline on a thread in a fresh namespace = %v, on the main thread %v: it must not depend on the caller's namespace", got, here)
		}
		return nil
	})
	cmd := exec.Command("unshare", "-n", os.Args[0], "-test.run=^TestStartedOffline$")
	cmd.Env = append(os.Environ(), "VMNET_TEST_STARTED_OFFLINE=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("unshare -n: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "started-offline=true") {
		t.Errorf("a process started in a new network namespace: %s, want started-offline=true", out)
	}
}
