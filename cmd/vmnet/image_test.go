package main

import (
	"os"
	"strings"
	"testing"

	"github.com/vmnet/vmnet/internal/testenv"
)

// TestImageBuildNamed: `vmnet image build debian-12` prints key=value
// lines naming files that exist (building the image unless the cache has
// it, as CI's first test run does), and `vmnet image list` shows it.
// Unknown names and --modules with a name are usage errors.
func TestImageBuildNamed(t *testing.T) {
	for _, args := range [][]string{{"image", "build", "debian-13"}, {"image", "build", "debian-12", "--modules", "8021q"}, {"image", "build", "a", "b"}} {
		if st, _, stderr := vmnet(t, args...); st != exitUsage || !strings.Contains(stderr, "image build") {
			t.Errorf("vmnet %q: status %d, stderr %q", args, st, stderr)
		}
	}
	testenv.RequireRoot(t)
	testenv.RequireProgram(t, "mmdebstrap")
	st, out, stderr := vmnet(t, "image", "build", "debian-12")
	if st != exitOK {
		t.Fatalf("status %d: %s", st, stderr)
	}
	kv := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("line %q is not key=value", line)
		}
		kv[k] = v
	}
	for _, k := range []string{"disk", "kernel", "initrd"} {
		if _, err := os.Stat(kv[k]); err != nil {
			t.Errorf("%s=%s: %v", k, kv[k], err)
		}
	}
	if kv["name"] != "debian-12" || kv["format"] != "raw" || !strings.Contains(kv["cmdline"], "root=/dev/vda") {
		t.Errorf("output %q", out)
	}
	st, out, _ = vmnet(t, "image", "list")
	if st != exitOK || !strings.Contains(out, "debian-12") {
		t.Errorf("image list: status %d, output %q", st, out)
	}
}
