package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/spf13/cobra"

	"github.com/vmnet/vmnet/internal/testenv"
)

// oneLine reports whether stderr is a single line with a single "vmnet:"
// prefix.
func oneLine(stderr string) bool {
	s := strings.TrimSpace(stderr)
	return s != "" && !strings.Contains(s, "\n") && strings.Count(s, "vmnet:") <= 1
}

// TestCommandLineMistakes (issue 15, exit codes and refusals): every
// mistake in the command line itself, flag values out of range and
// guesses the old CLI made included, exits 2 with one line that names
// it, and changes nothing in the namespace.
func TestCommandLineMistakes(t *testing.T) {
	ns := testenv.NetNS(t)
	p := nsPath(ns)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"tap", "create", "t0", "--queues", "four"}, `invalid argument "four" for "--queues" flag: not a whole number`},
		{[]string{"tap", "create", "t0", "--queues", "257"}, "--queues 257: want 1..256"},
		{[]string{"tap", "create", "t0", "--queues", "0"}, "--queues 0: want 1..256"},
		{[]string{"tap", "create", ""}, "tap name is empty (the kernel would pick one)"},
		{[]string{"tap", "create", "t0", "--persist=false"}, "always persistent"},
		{[]string{"tap", "create", "t0", "--vnet-hdr-size", "11"}, "--vnet-hdr-size 11: want 12, 10 or 0"},
		{[]string{"tap", "create", "t0", "--mtu", "-5"}, "--mtu -5"},
		{[]string{"tap", "create", "t0", "--qdisc", "fq"}, "--qdisc"},
		{[]string{"bridge", "port", "add", "br0", "p0", "--tagged", "30-20"}, `VLAN range "30-20" runs backwards`},
		{[]string{"bridge", "port", "add", "br0", "p0", "--pvid", "5000"}, "--pvid"},
		{[]string{"bridge", "create", "br0", "--default-pvid", "4095"}, "--default-pvid 4095: want 1..4094"},
		{[]string{"bridge", "create", "br0", "--address", "10.0.0.1"}, `"10.0.0.1": want an address with prefix length`},
		{[]string{"bridge", "create", "br0", "--mcast-snooping", "maybe"}, `want on or off`},
		{[]string{"nic", "add", "lab", "vm", "--network", "n", "--queues", "300"}, "--queues 300"},
		{[]string{"up", "lab.toml", "--ready-timeout", "0"}, "--ready-timeout 0s"},
		{[]string{"up", "lab.toml", "--ready-timeout", "soon"}, "not a duration"},
		{[]string{"up", "lab.toml", "--max-boots", "0"}, "--max-boots 0: want at least 1"},
		{[]string{"sh", "lab", "vm", "--timeout", "-1s", "--", "true"}, "--timeout -1s"},
		{[]string{"exec", "--accel", "warp", "prog"}, `--accel "warp"`},
		{[]string{"exec", "--cpus", "0", "prog"}, "--cpus 0"},
		{[]string{"status", "-o", "yaml"}, `unknown output format "yaml" (choose table, json, dot, mermaid)`},
		{[]string{"version", "-o", "xml"}, `unknown output format "xml"`},
		{[]string{"completion", "tcsh"}, `invalid argument "tcsh"`},
		{[]string{"tpa"}, `unknown verb "tpa" (did you mean "tap"`},
		{[]string{"bridge", "craete", "x"}, `unknown verb "craete" (did you mean "create"?)`},
		{[]string{"help", "stauts"}, `unknown verb "stauts" (did you mean "status"?)`},
		{[]string{"tap", "create", "t0", "--bogus"}, "unknown flag: --bogus"},
	} {
		st, out, stderr := vmnet(t, append([]string{"--netns", p}, c.args...)...)
		if st != exitUsage || !strings.Contains(stderr, c.want) || !oneLine(stderr) || out != "" {
			t.Errorf("vmnet %q: status %d, stdout %q, stderr %q; want status 2 and one line with %q", c.args, st, out, stderr, c.want)
		}
	}
	if out := inNS(t, ns, "ip", "-o", "link"); strings.Contains(out, "t0") || strings.Contains(out, "br0") {
		t.Errorf("a refused command changed the namespace:\n%s", out)
	}
}

// TestRefusalsAgainstTheKernel (issue 15): what depends on the kernel's
// state is refused with status 1 and one line naming both objects:
// --mtu that differs from --bridge's MTU (it would silently become the
// bridge's), and `bridge port del` of an interface that is not a port of
// that bridge (the old CLI said "detached").
func TestRefusalsAgainstTheKernel(t *testing.T) {
	ns := testenv.NetNS(t)
	p := nsPath(ns)
	inNS(t, ns, "ip", "link", "add", "br0", "mtu", "1500", "type", "bridge")
	inNS(t, ns, "ip", "link", "add", "other", "type", "bridge")
	inNS(t, ns, "ip", "tuntap", "add", "dev", "d0", "mode", "tap")
	inNS(t, ns, "ip", "tuntap", "add", "dev", "d1", "mode", "tap")
	inNS(t, ns, "ip", "link", "set", "d1", "master", "other")
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"tap", "create", "t0", "--mtu", "9000", "--bridge", "br0"}, []string{"--mtu 9000", "MTU 1500", "bridge br0", "tap t0"}},
		{[]string{"bridge", "port", "del", "br0", "d0"}, []string{"d0 is not a port of bridge br0"}},
		{[]string{"bridge", "port", "del", "br0", "d1"}, []string{"d1 is not a port of bridge br0"}},
	} {
		st, out, stderr := vmnet(t, append([]string{"--netns", p}, c.args...)...)
		ok := st == exitError && oneLine(stderr) && out == ""
		for _, w := range c.want {
			ok = ok && strings.Contains(stderr, w)
		}
		if !ok {
			t.Errorf("vmnet %q: status %d, stdout %q, stderr %q; want status 1 and one line with %q", c.args, st, out, stderr, c.want)
		}
	}
	out := inNS(t, ns, "ip", "-o", "link")
	if strings.Contains(out, "t0") {
		t.Errorf("the refused tap was created:\n%s", out)
	}
	if !regexp.MustCompile(`d1: .* master other`).MatchString(out) {
		t.Errorf("d1 left bridge other:\n%s", out)
	}
	// The same tap with the bridge's MTU (or none) is fine.
	if st, _, stderr := vmnet(t, "--netns", p, "tap", "create", "t0", "--mtu", "1500", "--bridge", "br0"); st != 0 {
		t.Fatalf("tap create with the bridge's MTU: %d %s", st, stderr)
	}
	if st, out, stderr := vmnet(t, "--netns", p, "bridge", "port", "del", "br0", "t0"); st != 0 || !strings.Contains(out, "detached t0 from bridge br0") {
		t.Errorf("port del of a port: %d %q %q", st, out, stderr)
	}
}

// TestEveryVerbHasExamples walks the command tree: every verb a user can
// see has an Examples section in `vmnet VERB --help` and in `vmnet help
// VERB`, and every example line starts with vmnet (or a shell around it).
func TestEveryVerbHasExamples(t *testing.T) {
	var paths [][]string
	walk(newRoot(&env{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}), func(c *cobra.Command) {
		hidden := false
		for p := c; p != nil; p = p.Parent() {
			hidden = hidden || p.Hidden
		}
		if hidden {
			return
		}
		if c.Example == "" {
			t.Errorf("%s has no examples", c.CommandPath())
		}
		paths = append(paths, strings.Fields(c.CommandPath())[1:])
	})
	if len(paths) < 25 {
		t.Fatalf("walked only %d verbs", len(paths))
	}
	for _, path := range paths {
		for _, args := range [][]string{append(append([]string{}, path...), "--help"), append([]string{"help"}, path...)} {
			st, out, stderr := vmnet(t, args...)
			if st != exitOK || !strings.Contains(out, "Examples:\n") || !strings.Contains(out, "Usage:") {
				t.Errorf("vmnet %q: status %d, stderr %q, no Examples section in:\n%s", args, st, stderr, out)
			}
		}
	}
	// Internal flags stay out of the help.
	for _, c := range []struct{ verb, flag string }{{"up", "--supervised"}, {"link", "--cpuprofile"}, {"tap create", "--persist"}} {
		_, out, _ := vmnet(t, append(strings.Fields(c.verb), "--help")...)
		if strings.Contains(out, c.flag) {
			t.Errorf("vmnet %s --help shows the internal flag %s", c.verb, c.flag)
		}
	}
}

// buildVmnet builds the real binary, as a user gets it.
func buildVmnet(t *testing.T) string {
	t.Helper()
	testenv.RequireProgram(t, "go")
	dir := t.TempDir()
	bin := filepath.Join(dir, "vmnet")
	if out, err := exec.Command("go", "build", "-buildvcs=auto", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestVersionMatchesGoVersionM: `vmnet --version` and `vmnet version -o
// json` say what `go version -m` reads from the same binary.
func TestVersionMatchesGoVersionM(t *testing.T) {
	bin := buildVmnet(t)
	m, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for _, line := range strings.Split(string(m), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[0] == "mod":
			want["module"], want["version"] = f[1], f[2]
		case len(f) >= 2 && f[0] == "build" && strings.HasPrefix(f[1], "vcs.revision="):
			want["revision"] = strings.TrimPrefix(f[1], "vcs.revision=")
		case len(f) >= 2 && f[0] == "build" && strings.HasPrefix(f[1], "vcs.modified="):
			want["modified"] = strings.TrimPrefix(f[1], "vcs.modified=")
		case strings.HasSuffix(f0(f), ":") && len(f) == 2:
			want["go"] = f[1]
		}
	}
	if want["module"] != "github.com/vmnet/vmnet" || want["version"] == "" || want["go"] == "" {
		t.Fatalf("go version -m says %v:\n%s", want, m)
	}
	var got buildInfo
	out, err := exec.Command(bin, "version", "-o", "json").Output()
	if err != nil || json.Unmarshal(out, &got) != nil {
		t.Fatalf("vmnet version -o json: %v %q", err, out)
	}
	if got.Module != want["module"] || got.Version != want["version"] || got.Revision != want["revision"] ||
		got.GoVersion != want["go"] || (want["modified"] == "true") != got.Modified {
		t.Errorf("vmnet version -o json = %+v; go version -m = %v", got, want)
	}
	line := "vmnet " + want["version"]
	if r := want["revision"]; r != "" {
		line += " revision " + r
	}
	for _, args := range [][]string{{"--version"}, {"version"}} {
		out, err := exec.Command(bin, args...).Output()
		if err != nil || !strings.HasPrefix(string(out), line) || !strings.HasSuffix(string(out), want["go"]+"\n") {
			t.Errorf("vmnet %s = %q (%v); want %q ... %s", args[0], out, err, line, want["go"])
		}
	}
	t.Logf("go version -m: %v", want)
}

func f0(f []string) string {
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// TestCompletionLoadsInBash: the bash script parses (bash -n) and, once
// sourced, registers a completion for vmnet; zsh and fish scripts come
// out as well.
func TestCompletionLoadsInBash(t *testing.T) {
	bash := testenv.RequireProgram(t, "bash")
	bin := buildVmnet(t)
	script := filepath.Join(t.TempDir(), "vmnet.bash")
	out, err := exec.Command(bin, "completion", "bash").Output()
	if err != nil || len(out) == 0 {
		t.Fatalf("vmnet completion bash: %v", err)
	}
	if err := os.WriteFile(script, out, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bash, "-n", script).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	cmd := exec.Command(bash, "-c", "source <(vmnet completion bash); complete -p vmnet")
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"))
	got, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(got), "complete") || !strings.HasSuffix(strings.TrimSpace(string(got)), " vmnet") {
		t.Fatalf("complete -p vmnet: %v %q", err, got)
	}
	// What the script asks vmnet for: verbs below tap, formats for -o.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"__complete", "tap", ""}, "create"},
		{[]string{"__complete", "status", "-o", ""}, "dot"},
	} {
		out, err := exec.Command(bin, c.args...).Output()
		if err != nil || !strings.Contains(string(out), c.want) {
			t.Errorf("vmnet %q: %v %q, want %q", c.args, err, out, c.want)
		}
	}
	for _, sh := range []string{"zsh", "fish"} {
		if out, err := exec.Command(bin, "completion", sh).Output(); err != nil || !strings.Contains(string(out), "vmnet") {
			t.Errorf("vmnet completion %s: %v (%d bytes)", sh, err, len(out))
		}
	}
}

// TestNonRootOneLine: a user without CAP_NET_ADMIN gets one line saying
// vmnet needs root for the verbs that need it, not a netlink or setns
// error; verbs that do not need it still work.
func TestNonRootOneLine(t *testing.T) {
	testenv.RequireRoot(t)
	bin := buildVmnet(t)
	// The binary must be reachable by the unprivileged user.
	for d := filepath.Dir(bin); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	nobody := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	for _, c := range []struct {
		args   []string
		status int
		want   string
	}{
		{[]string{"tap", "create", "t0"}, 1, "vmnet tap create needs root (CAP_NET_ADMIN)"},
		{[]string{"bridge", "delete", "br0"}, 1, "vmnet bridge delete needs root (CAP_NET_ADMIN)"},
		{[]string{"down", "demo"}, 1, "vmnet down needs root (CAP_NET_ADMIN)"},
		{[]string{"--netns", "somewhere", "tap", "list"}, 1, "vmnet tap list needs root (CAP_NET_ADMIN)"},
		{[]string{"version"}, 0, ""},
		{[]string{"tap", "create", "t0", "--queues", "0"}, 2, "--queues 0"}, // usage errors come first
	} {
		cmd := exec.Command(bin, c.args...)
		cmd.SysProcAttr = nobody
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		st := 0
		if ee, ok := err.(*exec.ExitError); ok {
			st = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if st != c.status || (c.want != "" && (!strings.Contains(stderr.String(), c.want) || !oneLine(stderr.String()))) ||
			strings.Contains(stderr.String(), "netlink") || strings.Contains(stderr.String(), "setns") {
			t.Errorf("as nobody, vmnet %q: status %d, stderr %q; want %d and one line with %q", c.args, st, stderr.String(), c.status, c.want)
		}
	}
}

// TestCompleteLabNames: the lab verbs complete the labs of the --netns
// namespace (here one known only from its owner tag).
func TestCompleteLabNames(t *testing.T) {
	ns := testenv.NetNS(t)
	p := nsPath(ns)
	if st, _, stderr := vmnet(t, "--netns", p, "bridge", "create", "lb0", "--tag", "vmnet:lab:mylab"); st != 0 {
		t.Fatal(stderr)
	}
	for _, verb := range [][]string{{"down"}, {"status"}, {"sh"}, {"nic", "add"}} {
		args := append(append([]string{"__complete", "--netns", p}, verb...), "")
		st, out, stderr := vmnet(t, args...)
		if st != 0 || !strings.HasPrefix(out, "mylab\n") {
			t.Errorf("vmnet %q: %d %q %q; want mylab offered", args, st, out, stderr)
		}
	}
	// In another namespace the lab is not offered.
	if st, out, _ := vmnet(t, "__complete", "--netns", nsPath(testenv.NetNS(t)), "down", ""); st != 0 || strings.Contains(out, "mylab") || !strings.HasPrefix(out, ":") {
		t.Errorf("in another namespace: %d %q; want no lab offered", st, out)
	}
}

// TestManPages: `make man` (vmnet built with -tags mangen) writes a page
// for every verb a user can see, with its examples, that man can read.
func TestManPages(t *testing.T) {
	testenv.RequireProgram(t, "go")
	dir := t.TempDir()
	bin := filepath.Join(dir, "vmnet-man")
	if out, err := exec.Command("go", "build", "-tags", "mangen", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build -tags mangen: %v\n%s", err, out)
	}
	mandir := filepath.Join(dir, "man")
	if out, err := exec.Command(bin, "gen-man", mandir).CombinedOutput(); err != nil {
		t.Fatalf("gen-man: %v\n%s", err, out)
	}
	n := 0
	walk(newRoot(&env{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}), func(c *cobra.Command) {
		if !c.IsAvailableCommand() && c.HasParent() {
			return
		}
		n++
		page := filepath.Join(mandir, strings.ReplaceAll(c.CommandPath(), " ", "-")+".1")
		b, err := os.ReadFile(page)
		if err != nil || !strings.Contains(string(b), ".SH EXAMPLE") {
			t.Errorf("%s: %v, or no EXAMPLE section", page, err)
		}
	})
	if ents, _ := os.ReadDir(mandir); len(ents) != n {
		t.Errorf("%d man pages for %d verbs", len(ents), n)
	}
	if man, err := exec.LookPath("man"); err == nil {
		out, err := exec.Command(man, "-l", filepath.Join(mandir, "vmnet-tap-create.1")).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "vmnet tap create NAME") {
			t.Errorf("man -l vmnet-tap-create.1: %v\n%s", err, out)
		}
	}
}
