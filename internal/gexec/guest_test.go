package gexec_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmnet/vmnet/internal/testenv"
)

// guestOnly are the tests that need a kernel feature the host lacks; they
// skip on such a host naming the feature, so here they must run (and
// pass) inside a guest. Their whole packages run there, so that a new
// test that skips on the host for a missing feature is caught too.
var guestOnly = map[string][]string{
	"./bridge/":         {"TestVLANs", "TestPortVLANsNeedFiltering", "TestVLANReuseRestored"},
	"./tap/":            {"TestProbe", "TestCreateSeenByIPAndEthtool", "TestImpairment"}, // a second kernel (6.1, no USO); netem
	"./internal/gexec/": {"TestVhostFdsPerQueue", "TestKernel8021Q", "TestKernelNetem"},
	// Only the named test: the whole package is too slow under TCG.
	"./internal/link/": {"TestKernelMissingFallback", "TestVXLANMissingFallback"}, // no sch_ingress, cls_u32, act_mirred in the image
}

// guestOnlyAlone are the packages of guestOnly whose named tests run alone
// (go test -run), not the whole package.
var guestOnlyAlone = map[string]bool{"./internal/link/": true}

// missingFeature matches the skip messages of tests that need something
// the kernel lacks (bridge/, tap/, this package) or a missing prerequisite
// (internal/testenv).
var missingFeature = regexp.MustCompile(`this kernel lacks|prerequisite missing`)

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
	root := moduleRoot(t)
	vmnet := buildVmnet(t)

	var pkgs, whole []string
	for p := range guestOnly {
		pkgs = append(pkgs, p)
		if !guestOnlyAlone[p] {
			whole = append(whole, p)
		}
	}
	sort.Strings(pkgs)
	sort.Strings(whole)
	runs := [][]string{append([]string{"test", "-json", "-count=1", "-timeout=10m", "-exec", vmnet + " exec"}, whole...)}
	for _, p := range pkgs {
		if guestOnlyAlone[p] {
			runs = append(runs, []string{"test", "-json", "-count=1", "-timeout=10m", "-exec", vmnet + " exec",
				"-run", "^(" + strings.Join(guestOnly[p], "|") + ")$", p})
		}
	}
	var out []byte
	var stderr bytes.Buffer
	var runErr error
	for _, args := range runs {
		cmd := exec.Command(goTool, args...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "CI=true")
		cmd.Stderr = &stderr
		start := time.Now()
		o, err := cmd.Output()
		t.Logf("go %s: %.1fs", strings.Join(args, " "), time.Since(start).Seconds())
		out = append(out, o...)
		if err != nil && runErr == nil {
			runErr = err
		}
	}

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
	var keys []string
	for k := range result {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch {
		case result[k] == "fail":
			t.Errorf("%s failed in the guest:\n%s", k, output[k])
		case result[k] == "skip" && missingFeature.MatchString(output[k]):
			t.Errorf("%s skipped in the guest for something the guest kernel or image lacks:\n%s", k, output[k])
		case result[k] == "skip":
			t.Logf("%s skipped in the guest: %s", k, strings.TrimSpace(lastLine(output[k])))
		}
	}
	if runErr != nil && !t.Failed() {
		t.Errorf("go test: %v\n%s\n%s", runErr, stderr.String(), out)
	}
}

// lastLine is the skip message of a test's output: the line before "--- SKIP".
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) >= 2 {
		return lines[len(lines)-2]
	}
	return out
}

// moduleRoot is the directory of go.mod, two levels up from this package.
func moduleRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root: %v", err)
	}
	return root
}

var (
	vmnetOnce sync.Once
	vmnetPath string
	vmnetErr  error
)

// buildVmnet builds the vmnet command once per test binary.
func buildVmnet(t *testing.T) string {
	t.Helper()
	goTool := testenv.RequireProgram(t, "go")
	root := moduleRoot(t)
	vmnetOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gexec-vmnet-")
		if err != nil {
			vmnetErr = err
			return
		}
		tempDirs = append(tempDirs, dir)
		vmnetPath = filepath.Join(dir, "vmnet")
		build := exec.Command(goTool, "build", "-o", vmnetPath, "./cmd/vmnet")
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			vmnetErr = fmt.Errorf("go build ./cmd/vmnet: %v\n%s", err, out)
		}
	})
	if vmnetErr != nil {
		t.Fatal(vmnetErr)
	}
	return vmnetPath
}

// The command's contract with go test: stdout is the program's output
// only, the exit status is the program's, and failures to run it at all
// have their own statuses with the reason on stderr.
func TestCLI(t *testing.T) {
	needGuest(t)
	vmnet := buildVmnet(t)
	prog := staticProgram(t)
	dir := t.TempDir()
	run := func(args ...string) (string, string, int) {
		cmd := exec.Command(vmnet, args...)
		cmd.Dir = dir
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return out.String(), errb.String(), cmd.ProcessState.ExitCode()
	}
	// Flags after PROGRAM belong to it, even ones vmnet exec also has.
	out, stderr, code := run("exec", "--cpus=1", prog, "-test.v=true", "--cpus=7", "exit=3")
	if code != 3 || !strings.HasPrefix(out, `args=["-test.v=true" "--cpus=7" "exit=3"]`+"\n") || !strings.HasSuffix(out, "to stderr, no newline") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	for _, l := range strings.Split(strings.TrimSpace(stderr), "\n") {
		if l != "" && !strings.HasPrefix(l, "vmnet image: ") { // an image build (recipe changed) says so
			t.Errorf("stderr line %q: want nothing but image build steps", l)
		}
	}
	dyn := testenv.RequireProgram(t, "true")
	if _, stderr, code := run("exec", dyn); code != 125 || !strings.Contains(stderr, "CGO_ENABLED=0") {
		t.Errorf("dynamic program: exit %d, stderr %q; want 125 and the CGO_ENABLED=0 hint", code, stderr)
	}
	if _, stderr, code := run("exec", "--boot-timeout=200ms", prog); code != 124 || !strings.Contains(stderr, "no VMNET-READY within") {
		t.Errorf("boot timeout: exit %d, stderr %q; want 124", code, stderr)
	}
	if _, stderr, code := run("exec", "--memory=lots", prog); code != 2 || !strings.Contains(stderr, "--memory") && !strings.Contains(stderr, "-memory") {
		t.Errorf("bad flag: exit %d, stderr %q; want 2", code, stderr)
	}
}
