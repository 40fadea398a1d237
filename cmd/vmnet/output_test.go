package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmnet/vmnet/internal/testenv"
)

// TestValidateJSON: validate -o json prints every problem as {file, line,
// column, severity, message}, warnings included, and [] for a clean file;
// the exit status is 1 only when there are errors.
func TestValidateJSON(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("[lab]\nname = \"x\"\n[[network]]\nname = \"n\"\nmtu = 9\naddresses = \"10.0.0.1/24\"\n"+
		"[[vm]]\nname = \"a\"\n[[vm.nic]]\nnetwork = \"n\"\naddress = \"10.1.0.2/24\"\n"), 0o644)
	st, out, errOut := vmnet(t, "validate", "-o", "json", bad)
	var ps []struct {
		File     string `json:"file"`
		Line     int    `json:"line"`
		Column   int    `json:"column"`
		Severity string `json:"severity"`
		Message  string `json:"message"`
	}
	if st != 1 || json.Unmarshal([]byte(out), &ps) != nil || len(ps) != 2 || errOut != "" {
		t.Fatalf("status %d, stdout %q, stderr %q", st, out, errOut)
	}
	if ps[0].File != bad || ps[0].Line != 5 || ps[0].Column != 1 || ps[0].Severity != "error" || !strings.Contains(ps[0].Message, "mtu = 9") ||
		ps[1].Line != 11 || ps[1].Severity != "warning" || !strings.Contains(ps[1].Message, "outside every subnet") {
		t.Errorf("problems: %+v", ps)
	}
	good := filepath.Join(dir, "good.toml")
	os.WriteFile(good, []byte("[lab]\nname = \"x\"\n"), 0o644)
	if st, out, _ := vmnet(t, "validate", "-o", "json", good); st != 0 || out != "[]\n" {
		t.Errorf("clean file: %d %q", st, out)
	}
	if st, _, errOut := vmnet(t, "validate", "-o", "yaml", good); st != exitUsage {
		t.Errorf("-o yaml: %d %s", st, errOut)
	}
}

// TestNoLabsOutput: with no labs, ls and status print an empty list, a
// valid empty graph and an empty flowchart.
func TestNoLabsOutput(t *testing.T) {
	testenv.RequirePrivateRun(t)
	ns := nsPath(testenv.NetNS(t))
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ls", "-o", "json"}, "[]\n"},
		{[]string{"ls"}, "no labs\n"},
		{[]string{"status", "-o", "json"}, "[]\n"},
		{[]string{"status", "-o", "dot"}, "graph \"vmnet\" {\n  node [fontname=\"Helvetica\"];\n  label=\"no labs are up\";\n}\n"},
		{[]string{"status", "-o", "mermaid"}, "flowchart LR\n  none[\"no labs are up\"]\n"},
	} {
		st, out, errOut := vmnet(t, append([]string{"--netns", ns}, tc.args...)...)
		if st != 0 || out != tc.want {
			t.Errorf("%v: %d %q (want %q) %s", tc.args, st, out, tc.want, errOut)
		}
	}
}

// TestOneVmnetPrefix: every message vmnet prints starts with one
// "vmnet" and names no Go function.
func TestOneVmnetPrefix(t *testing.T) {
	for _, args := range [][]string{
		{"up"},
		{"validate", "/nonexistent/lab.toml"},
		{"bridge", "create", "b0", "--address", "zz"},
		{"tap", "create", "t0", "--owner", "no-such-user-here"},
	} {
		_, _, errOut := vmnet(t, args...)
		if !strings.HasPrefix(errOut, "vmnet") || strings.Count(errOut, "vmnet:") > 1 || strings.Contains(errOut, "vmnet: vmnet") ||
			strings.Contains(errOut, "netip.") || strings.Contains(errOut, "unknown user") || strings.Contains(errOut, "vmconfig") {
			t.Errorf("%v: %q", args, errOut)
		}
	}
	for in, want := range map[string]string{
		"vmnet image: lock x: busy": "vmnet image: lock x: busy",
		"vmnet up: missing":         "vmnet up: missing",
		"lab x: is down":            "vmnet: lab x: is down",
		"vmnetd is gone":            "vmnet: vmnetd is gone",
	} {
		if got := errorLine(errors.New(in)); got != want {
			t.Errorf("errorLine(%q) = %q, want %q", in, got, want)
		}
	}
}
