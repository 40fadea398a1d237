package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vmnet/vmnet/internal/testenv"
)

// TestBadNamesChangeNothing (scenario 1): names from the command line are
// checked before anything touches a path, a tag, an interface or a
// process. `vmnet down ""`, `.`, `..` and friends are usage errors (exit
// 2, one line naming the argument); /run, a QEMU-looking process whose
// argv mentions /run/, an untagged tap and an ad-hoc tap all survive.
func TestBadNamesChangeNothing(t *testing.T) {
	testenv.RequirePrivateRun(t)
	ns := testenv.NetNS(t)
	p := nsPath(ns)
	inNS(t, ns, "ip", "tuntap", "add", "dev", "plain0", "mode", "tap")
	if st, _, stderr := vmnet(t, "--netns", p, "tap", "create", "adhoc0"); st != 0 {
		t.Fatalf("tap create: %s", stderr)
	}
	canary := "/run/vmnet-canary"
	if err := os.WriteFile(canary, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll("/run/vmnet", 0o700)
	// What the old `down ..` killed: a "qemu" with /run/ in its argv.
	decoy := exec.Command("/bin/sh")
	decoy.Args = []string{"qemu-system-x86_64", "-c", "sleep 600; :", "-pidfile", "/run/decoy/qemu.pid"}
	if err := decoy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { decoy.Process.Kill(); decoy.Wait() })

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"down", ""}, `lab name is empty`},
		{[]string{"down", "."}, `lab name "."`},
		{[]string{"down", ".."}, `lab name ".."`},
		{[]string{"down", "--ignore-missing", ".."}, `lab name ".."`},
		{[]string{"down", "a b"}, `lab name "a b" contains whitespace`},
		{[]string{"down", "lab\x01"}, `control character`},
		{[]string{"status", ".."}, `lab name ".."`},
		{[]string{"status", "vmnet:adhoc"}, `lab name "vmnet:adhoc"`},
		{[]string{"nic", "add", "..", "vm", "--network", "n"}, `lab name ".."`},
		{[]string{"nic", "add", "lab", "..", "--network", "n"}, `VM name ".."`},
		{[]string{"nic", "add", "lab", "vm", "--network", "../n"}, `network name "../n"`},
		{[]string{"nic", "del", "lab", "vm", ".."}, `NIC name ".."`},
		{[]string{"nic", "del", "", "vm", "nic1"}, `lab name is empty`},
		{[]string{"sh", "..", "vm", "--", "true"}, `lab name ".."`},
		{[]string{"sh", "lab", "-x", "--", "true"}, ``}, // a flag: usage error all the same
		{[]string{"sh", "lab", "", "--", "true"}, `VM name is empty`},
		{[]string{"run", "lab.toml", "..", "--", "true"}, `VM name ".."`},
		{[]string{"tap", "delete", ".."}, `tap name ".."`},
		{[]string{"tap", "create", "name-that-is-far-too-long"}, "name-that-is-far-too-long"},
		{[]string{"tap", "create", "t9", "--tag", "vmnet"}, `--tag: owner "vmnet"`},
		{[]string{"bridge", "delete", "a/b"}, `bridge name "a/b"`},
		{[]string{"bridge", "list", "--tag", "vmnet:lab:.."}, `--tag: owner "vmnet:lab:.."`},
	} {
		st, out, stderr := vmnet(t, append([]string{"--netns", p}, c.args...)...)
		if st != exitUsage || !strings.Contains(stderr, c.want) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || out != "" {
			t.Errorf("vmnet %q: status %d, stdout %q, stderr %q; want status 2 and one line with %q", c.args, st, out, stderr, c.want)
		}
	}
	if _, err := os.Stat(canary); err != nil {
		t.Errorf("/run lost a file: %v", err)
	}
	if _, err := os.Stat("/run/vmnet"); err != nil {
		t.Errorf("/run/vmnet: %v", err)
	}
	if !testenv.Running(decoy.Process.Pid) {
		t.Error("the decoy process was killed")
	}
	out := inNS(t, ns, "ip", "-o", "link")
	for _, name := range []string{"plain0", "adhoc0"} {
		if !strings.Contains(out, name+":") {
			t.Errorf("%s was deleted:\n%s", name, out)
		}
	}
}
