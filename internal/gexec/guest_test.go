package gexec_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vmnet/vmnet/internal/testenv"
)

// guestOnly are the tests that need a kernel feature the host lacks; they
// skip on such a host naming the feature, so here they must run (and
// pass) inside a guest.
var guestOnly = map[string][]string{
	"./bridge/":         {"TestVLANs", "TestPortVLANsNeedFiltering"},
	"./internal/gexec/": {"TestVhostFdsPerQueue", "TestKernel8021Q", "TestKernelNetem"},
}

// guestRun selects them (and nothing that boots guests itself).
const guestRun = "^(TestVLANs|TestPortVLANsNeedFiltering|TestVhostFdsPerQueue|TestKernel8021Q|TestKernelNetem)$"

type testEvent struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

// TestGuestOnly runs the guest-only tests with
// `go test -exec 'vmnet exec'` under CI=true and fails unless every one
// of them ran and passed in the guest. It is how CI covers what the host
// kernel cannot show.
func TestGuestOnly(t *testing.T) {
	needGuest(t)
	if testing.Short() {
		t.Skip("boots guests; not in -short mode")
	}
	goTool := testenv.RequireProgram(t, "go")
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root: %v", err)
	}
	vmnet := filepath.Join(t.TempDir(), "vmnet")
	build := exec.Command(goTool, "build", "-o", vmnet, "./cmd/vmnet")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/vmnet: %v\n%s", err, out)
	}

	var pkgs []string
	for p := range guestOnly {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	args := append([]string{"test", "-json", "-count=1", "-timeout=10m", "-exec", vmnet + " exec", "-run", guestRun}, pkgs...)
	cmd := exec.Command(goTool, args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "CI=true")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	out, runErr := cmd.Output()
	t.Logf("go %s: %.1fs", strings.Join(args, " "), time.Since(start).Seconds())

	result := map[string]string{}   // "pkg Test" -> pass, fail, skip
	output := map[string]string{}   // "pkg Test" -> its output
	elapsed := map[string]float64{} // package -> seconds
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev testEvent
		if json.Unmarshal(sc.Bytes(), &ev) != nil {
			continue
		}
		pkg := "./" + strings.TrimPrefix(ev.Package, "github.com/vmnet/vmnet/") + "/"
		k := pkg + " " + ev.Test
		switch ev.Action {
		case "output":
			output[k] += ev.Output
			if ev.Test == "" {
				output[pkg] += ev.Output
			}
		case "pass", "fail", "skip":
			if ev.Test != "" {
				result[k] = ev.Action
			} else {
				elapsed[pkg] = ev.Elapsed
			}
		}
	}
	for _, pkg := range pkgs {
		t.Logf("%s: %.1fs in the guest (go test's package time: boot, run, power-off)", pkg, elapsed[pkg])
		for _, name := range guestOnly[pkg] {
			k := pkg + " " + name
			switch result[k] {
			case "pass":
				t.Logf("%s %s: passed in the guest", pkg, name)
			case "":
				t.Errorf("%s %s: did not run in the guest; package output:\n%s", pkg, name, output[pkg])
			default:
				t.Errorf("%s %s: %s in the guest (under CI a guest-only test must pass there):\n%s", pkg, name, result[k], output[k])
			}
		}
	}
	for k, r := range result {
		if r == "fail" {
			t.Errorf("%s failed in the guest:\n%s", k, output[k])
		}
	}
	if runErr != nil && !t.Failed() {
		t.Errorf("go test: %v\n%s\n%s", runErr, stderr.String(), out)
	}
}
