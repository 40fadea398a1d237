// Package tests holds end-to-end tests: they build the vmnet binary, boot
// real guests under QEMU inside private network namespaces, and check the
// results through the kernel and independent tools.
package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/netns"
)

var vmnetBin string

func TestMain(m *testing.M) {
	// Labs keep state under /run/vmnet and tests tear them down: never
	// against the machine's real /run.
	testenv.PrivateRun()
	dir, err := os.MkdirTemp("", "vmnet-e2e-")
	if err != nil {
		panic(err)
	}
	vmnetBin = filepath.Join(dir, "vmnet")
	if out, err := exec.Command("go", "build", "-o", vmnetBin, "../cmd/vmnet").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build vmnet: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is what one vmnet invocation did.
type result struct {
	status         int
	stdout, stderr string
	took           time.Duration
}

// vmnetIn runs the vmnet binary with --netns pointing at ns.
func vmnetIn(t *testing.T, ns netns.Handle, args ...string) result {
	t.Helper()
	return vmnetAt(t, nsArg(ns), "", args...)
}

// requireGuests checks what booting a guest needs.
func requireGuests(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireProgram(t, "qemu-system-x86_64")
	if runtime.GOARCH != "amd64" {
		testenv.Missing(t, "guest tests need an amd64 host")
	}
}

// links lists the interfaces in ns, as `ip` sees them.
func links(t *testing.T, ns netns.Handle) string {
	t.Helper()
	var out []byte
	testenv.Do(t, ns, func() error {
		var err error
		out, err = exec.Command("ip", "-o", "link", "show").CombinedOutput()
		return err
	})
	return string(out)
}

// linkSettings lists, one line per interface in ns, what vmnet sets on
// it (name, admin state, MTU, MAC, master, alias), leaving out what the
// kernel changes by itself as ports come up (operstate, LOWER_UP): a
// bridge whose first port starts forwarding turns from UNKNOWN to UP at
// any moment, which is not a change anyone made.
func linkSettings(t *testing.T, ns netns.Handle) string {
	t.Helper()
	var out []byte
	testenv.Do(t, ns, func() error {
		var err error
		out, err = exec.Command("ip", "-j", "link", "show").Output()
		return err
	})
	var ls []struct {
		Name   string   `json:"ifname"`
		Flags  []string `json:"flags"`
		MTU    int      `json:"mtu"`
		MAC    string   `json:"address"`
		Master string   `json:"master"`
		Alias  string   `json:"ifalias"`
	}
	if err := json.Unmarshal(out, &ls); err != nil {
		t.Fatalf("ip -j link show: %v\n%s", err, out)
	}
	var b strings.Builder
	for _, l := range ls {
		fmt.Fprintf(&b, "%s up=%v mtu %d mac %s master %q alias %q\n", l.Name, slices.Contains(l.Flags, "UP"), l.MTU, l.MAC, l.Master, l.Alias)
	}
	return b.String()
}

// onlyLoopback fails t when anything but lo is left in ns.
func onlyLoopback(t *testing.T, ns netns.Handle) {
	t.Helper()
	out := strings.TrimSpace(links(t, ns))
	if n := strings.Count(out, "\n") + 1; n != 1 || !strings.Contains(out, ": lo:") {
		t.Errorf("interfaces left behind:\n%s", out)
	}
}
