package tests

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/netns"
)

// vmnetAt runs the vmnet binary with --netns nsArg (a name or a path) in
// the working directory dir ("" for the test's).
func vmnetAt(t *testing.T, nsArg, dir string, args ...string) result {
	t.Helper()
	cmd := exec.Command(vmnetBin, append([]string{"--netns", nsArg}, args...)...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.status = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("vmnet %v: %v", args, err)
	}
	t.Logf("vmnet --netns %s %s: status %d in %v\n%s%s", nsArg, strings.Join(args, " "), r.status, r.took.Round(time.Millisecond), r.stdout, r.stderr)
	return r
}

func nsArg(ns netns.Handle) string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns)) }

// labFile writes a lab file of networks only (no guests: these tests are
// about names, tags and state, and stay fast) into dir.
func labFile(t *testing.T, dir, name, extra string, networks ...string) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[lab]\nname = %q\n%s\n", name, extra)
	for _, n := range networks {
		fmt.Fprintf(&b, "[[network]]\nname = %q\n", n)
	}
	path := filepath.Join(dir, name+".toml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// alias returns the interface alias of name in ns, or "gone".
func alias(t *testing.T, ns netns.Handle, name string) string {
	t.Helper()
	l, ok := kernelAliases(t, ns)[name]
	if !ok {
		return "gone"
	}
	return l
}

func kernelAliases(t *testing.T, ns netns.Handle) map[string]string {
	t.Helper()
	var out []byte
	testenv.Do(t, ns, func() error {
		var err error
		out, err = exec.Command("ip", "-o", "link", "show").Output()
		return err
	})
	m := map[string]string{}
	re := regexp.MustCompile(`^\d+: ([^:@]+)[:@].*?(?:alias (\S+))?$`)
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if s := re.FindStringSubmatch(strings.ReplaceAll(line, "\\", " ")); s != nil {
			m[s[1]] = s[2]
		}
	}
	return m
}

// TestDownBadNames (scenario 1) with the real binary, in a namespace
// where a lab is up: `vmnet down ""`, `.`, `..` only print a usage error.
func TestDownBadNames(t *testing.T) {
	testenv.RequirePrivateRun(t)
	ns := testenv.NetNS(t)
	p := nsArg(ns)
	path := labFile(t, t.TempDir(), "t", "", "lan")
	if r := vmnetAt(t, p, "", "up", path, "--detach"); r.status != 0 {
		t.Fatalf("up: %d %s", r.status, r.stderr)
	}
	t.Cleanup(func() { vmnetAt(t, p, "", "down", "t") })
	if r := vmnetAt(t, p, "", "tap", "create", "adhoc0"); r.status != 0 {
		t.Fatalf("tap create: %s", r.stderr)
	}
	testenv.Do(t, ns, func() error { return exec.Command("ip", "tuntap", "add", "dev", "plain0", "mode", "tap").Run() })
	os.WriteFile("/run/canary", []byte("x"), 0o644)
	decoy := exec.Command("/bin/sh")
	decoy.Args = []string{"qemu-system-x86_64", "-c", "sleep 600; :", "-pidfile", "/run/decoy.pid"}
	if err := decoy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { decoy.Process.Kill(); decoy.Wait() })
	before := kernelAliases(t, ns)

	for _, arg := range []string{"", ".", "..", "-"} {
		r := vmnetAt(t, p, "", "down", "--", arg)
		if r.status != 2 || !strings.Contains(r.stderr, "lab name") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("down %q: status %d, stderr %q; want 2 and one line naming the lab argument", arg, r.status, r.stderr)
		}
	}
	// With a '/', the argument is a lab file: one that cannot be read
	// is an error (exit 1) that changes nothing either.
	for _, arg := range []string{"../..", "/run", "t/"} {
		if r := vmnetAt(t, p, "", "down", "--", arg); r.status != 1 || !strings.Contains(r.stderr, arg) {
			t.Errorf("down %q: status %d, stderr %q; want 1 naming it", arg, r.status, r.stderr)
		}
	}
	if after := kernelAliases(t, ns); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("interfaces changed:\nbefore %v\nafter  %v", before, after)
	}
	if _, err := os.Stat("/run/canary"); err != nil {
		t.Errorf("/run lost a file: %v", err)
	}
	if !testenv.Running(decoy.Process.Pid) {
		t.Error("the decoy QEMU was killed")
	}
	if r := vmnetAt(t, p, "", "status", "t"); r.status != 0 || !strings.Contains(r.stdout, "lan") {
		t.Errorf("lab t damaged: %d %s %s", r.status, r.stdout, r.stderr)
	}
}

// TestLabNamedLikeAdHocTag (scenario 2): a lab called vmnet (the old
// ad-hoc tag) or adhoc gets its own tag; its `down` leaves the ad-hoc tap
// and bridge alone.
func TestLabNamedLikeAdHocTag(t *testing.T) {
	testenv.RequirePrivateRun(t)
	ns := testenv.NetNS(t)
	p := nsArg(ns)
	for _, args := range [][]string{{"tap", "create", "adhoc0"}, {"bridge", "create", "adbr0"}} {
		if r := vmnetAt(t, p, "", args...); r.status != 0 {
			t.Fatalf("%v: %s", args, r.stderr)
		}
	}
	dir := t.TempDir()
	for _, name := range []string{"vmnet", "adhoc"} {
		path := labFile(t, dir, name, "", "lan")
		if r := vmnetAt(t, p, "", "up", path, "--detach"); r.status != 0 {
			t.Fatalf("up %s: %d %s", name, r.status, r.stderr)
		}
		t.Cleanup(func() { vmnetAt(t, p, "", "down", "--ignore-missing", name) })
	}
	for name, want := range map[string]string{"adhoc0": "vmnet:adhoc", "adbr0": "vmnet:adhoc",
		"vmnet-lan": "vmnet:lab:vmnet", "adhoc-lan": "vmnet:lab:adhoc"} {
		if got := alias(t, ns, name); got != want {
			t.Errorf("%s: tag %q, want %q", name, got, want)
		}
	}
	for _, name := range []string{"vmnet", "adhoc"} {
		if r := vmnetAt(t, p, "", "down", name); r.status != 0 {
			t.Fatalf("down %s: %d %s", name, r.status, r.stderr)
		}
	}
	got := kernelAliases(t, ns)
	if _, ok := got["adhoc0"]; !ok {
		t.Error("down of lab vmnet/adhoc deleted the ad-hoc tap adhoc0")
	}
	if _, ok := got["adbr0"]; !ok {
		t.Error("down of lab vmnet/adhoc deleted the ad-hoc bridge adbr0")
	}
	for _, gone := range []string{"vmnet-lan", "adhoc-lan"} {
		if _, ok := got[gone]; ok {
			t.Errorf("%s survived its lab's down", gone)
		}
	}
}

// TestDownIsExact (scenario 3): a typo is an error listing the labs that
// exist (unless --ignore-missing), and a lab name is a name even when a
// file of that name sits in the current directory.
func TestDownIsExact(t *testing.T) {
	testenv.RequirePrivateRun(t)
	ns := testenv.NetNS(t)
	p := nsArg(ns)
	dir := t.TempDir()
	state := filepath.Join(t.TempDir(), "state")
	path := labFile(t, dir, "demo", fmt.Sprintf("state_dir = %q", state), "lan")
	if r := vmnetAt(t, p, "", "up", path, "--detach"); r.status != 0 {
		t.Fatalf("up: %d %s", r.status, r.stderr)
	}
	t.Cleanup(func() { vmnetAt(t, p, "", "down", "--ignore-missing", "demo") })

	r := vmnetAt(t, p, "", "down", "dmeo")
	if r.status != 1 || !strings.Contains(r.stderr, "lab dmeo: no such lab") || !strings.Contains(r.stderr, "are: demo") {
		t.Errorf("down of a typo: status %d, stderr %q; want 1 listing lab demo", r.status, r.stderr)
	}
	if r := vmnetAt(t, p, "", "down", "--ignore-missing", "dmeo"); r.status != 0 {
		t.Errorf("down --ignore-missing of a typo: %d %s", r.status, r.stderr)
	}
	if alias(t, ns, "demo-lan") != "vmnet:lab:demo" {
		t.Fatal("lab demo's bridge is gone after downs of another name")
	}

	// A file called demo (here: the vmnet binary itself) in the current
	// directory is not taken for the lab file.
	cwd := t.TempDir()
	bin, _ := os.ReadFile(vmnetBin)
	os.WriteFile(filepath.Join(cwd, "demo"), bin, 0o755)
	if r := vmnetAt(t, p, cwd, "status", "demo"); r.status != 0 {
		t.Errorf("status demo next to a file demo: %d %s", r.status, r.stderr)
	}
	if r := vmnetAt(t, p, cwd, "down", "demo"); r.status != 0 || !strings.Contains(r.stdout, "lab demo is down") {
		t.Fatalf("down demo next to a file demo: %d %s %s", r.status, r.stdout, r.stderr)
	}
	if _, ok := kernelAliases(t, ns)["demo-lan"]; ok {
		t.Error("lab demo's bridge survived its down")
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("state dir left: %v", err)
	}
	r = vmnetAt(t, p, "", "down", "demo")
	if r.status != 1 || !strings.Contains(r.stderr, "no labs are up in this network namespace") {
		t.Errorf("second down: %d %q, want 1", r.status, r.stderr)
	}
}

// TestStateDirRefused (scenario 4): state_dir = "." is refused before
// anything happens and the lab file's directory stays as it was; so is a
// state_dir that exists and is not vmnet's; a second lab on a state_dir
// in use is refused and the first keeps working.
func TestStateDirRefused(t *testing.T) {
	testenv.RequirePrivateRun(t)
	ns := testenv.NetNS(t)
	p := nsArg(ns)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "disk.qcow2"), []byte("precious"), 0o644)
	mine := filepath.Join(dir, "mine")
	os.Mkdir(mine, 0o755)
	os.WriteFile(filepath.Join(mine, "notes"), []byte("keep"), 0o644)
	snapshot := func() string {
		var out []string
		filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err == nil && !strings.HasSuffix(p, ".toml") {
				out = append(out, p)
			}
			return nil
		})
		return strings.Join(out, "\n")
	}
	before := snapshot()
	for _, c := range []struct{ stateDir, want string }{
		{".", "which holds the lab file"},
		{"..", "which holds the lab file"},
		{"mine", "is not a vmnet state directory"},
	} {
		path := labFile(t, dir, "s", fmt.Sprintf("state_dir = %q", c.stateDir), "lan")
		r := vmnetAt(t, p, "", "up", path, "--detach")
		if r.status != 1 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("state_dir %q: status %d, stderr %q; want 1 and %q", c.stateDir, r.status, r.stderr, c.want)
		}
		vmnetAt(t, p, "", "down", path)
		if got := snapshot(); got != before {
			t.Fatalf("state_dir %q: the lab file's directory changed:\n%s\nwant\n%s", c.stateDir, got, before)
		}
	}
	onlyLoopback(t, ns)

	shared := filepath.Join(t.TempDir(), "shared")
	a := labFile(t, dir, "a", fmt.Sprintf("state_dir = %q", shared), "lan")
	b := labFile(t, dir, "b", fmt.Sprintf("state_dir = %q", shared), "lan")
	if r := vmnetAt(t, p, "", "up", a, "--detach"); r.status != 0 {
		t.Fatalf("up a: %d %s", r.status, r.stderr)
	}
	t.Cleanup(func() { vmnetAt(t, p, "", "down", "--ignore-missing", "a") })
	r := vmnetAt(t, p, "", "up", b, "--detach")
	if r.status != 1 || !strings.Contains(r.stderr, "belongs to lab a") {
		t.Errorf("second lab on a shared state_dir: status %d, stderr %q; want 1 naming lab a", r.status, r.stderr)
	}
	if _, ok := kernelAliases(t, ns)["b-lan"]; ok {
		t.Error("lab b created its bridge on a refused state_dir")
	}
	if r := vmnetAt(t, p, "", "status", "a", "-o", "json"); r.status != 0 || !strings.Contains(r.stdout, `"phase": "up"`) {
		t.Errorf("lab a after b was refused: %d %s %s", r.status, r.stdout, r.stderr)
	}
	if r := vmnetAt(t, p, "", "down", "b"); r.status != 1 {
		t.Errorf("down b (never up): %d", r.status)
	}
	if r := vmnetAt(t, p, "", "down", a); r.status != 0 {
		t.Fatalf("down a: %d %s", r.status, r.stderr)
	}
	if _, err := os.Stat(shared); !os.IsNotExist(err) {
		t.Errorf("shared state dir left after down a: %v", err)
	}
	onlyLoopback(t, ns)
}

// TestSameLabTwoNamespaces (scenario 11): one lab file, brought up in two
// network namespaces, makes two labs; status and down in a third
// namespace say where the lab is, and the command they suggest works.
func TestSameLabTwoNamespaces(t *testing.T) {
	testenv.RequirePrivateRun(t)
	if out, err := exec.Command("ip", "netns", "add", "vmt-one").CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", "vmt-one").Run() })
	one, err := netns.Open("vmt-one")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { one.Close() })
	two, three := testenv.NetNS(t), testenv.NetNS(t)
	path := labFile(t, t.TempDir(), "demo", "", "lan") // default state_dir
	for _, ns := range []string{"vmt-one", nsArg(two)} {
		if r := vmnetAt(t, ns, "", "up", path, "--detach"); r.status != 0 {
			t.Fatalf("up in %s: %d %s", ns, r.status, r.stderr)
		}
		t.Cleanup(func() { vmnetAt(t, ns, "", "down", "--ignore-missing", "demo") })
	}
	for i, ns := range []netns.Handle{one, two} {
		if alias(t, ns, "demo-lan") == "gone" {
			t.Fatalf("bridge demo-lan is missing in namespace %d: the second `up` did not make a lab of its own", i+1)
		}
	}
	for i, ns := range []netns.Handle{one, two} {
		if got := alias(t, ns, "demo-lan"); got != "vmnet:lab:demo" {
			t.Fatalf("bridge demo-lan in namespace %d: tag %q", i+1, got)
		}
	}
	for _, verb := range []string{"status", "down"} {
		r := vmnetAt(t, nsArg(three), "", verb, "demo")
		if r.status != 1 || !strings.Contains(r.stderr, "lab demo is not in this network namespace; it is up in namespace") ||
			!strings.Contains(r.stderr, "vmt-one") {
			t.Errorf("%s in the wrong namespace: status %d, stderr %q", verb, r.status, r.stderr)
		}
	}
	if r := vmnetAt(t, "vmt-one", "", "down", "demo"); r.status != 0 {
		t.Fatalf("down in vmt-one: %d %s", r.status, r.stderr)
	}
	if alias(t, one, "demo-lan") != "gone" || alias(t, two, "demo-lan") != "vmnet:lab:demo" {
		t.Fatalf("down in vmt-one: bridge there %q, in the other namespace %q", alias(t, one, "demo-lan"), alias(t, two, "demo-lan"))
	}
	r := vmnetAt(t, nsArg(three), "", "down", "demo")
	m := regexp.MustCompile("run `vmnet --netns (\\S+) down demo`").FindStringSubmatch(r.stderr)
	if r.status != 1 || m == nil {
		t.Fatalf("down in the wrong namespace: %d %q", r.status, r.stderr)
	}
	if r := vmnetAt(t, m[1], "", "down", "demo"); r.status != 0 {
		t.Fatalf("the suggested `vmnet --netns %s down demo`: %d %s", m[1], r.status, r.stderr)
	}
	onlyLoopback(t, two)
	if r := vmnetAt(t, nsArg(three), "", "down", "demo"); r.status != 1 || !strings.Contains(r.stderr, "no such lab") {
		t.Errorf("down after both are gone: %d %q", r.status, r.stderr)
	}
}
