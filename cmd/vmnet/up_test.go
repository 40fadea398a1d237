package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vmnet/vmnet/internal/logcap"
)

// The detached supervisor's log is capped: everything it prints goes
// through capLog's writer, and what the runtime appends on its own
// descriptor stays at the end.
func TestSupervisorLogCapped(t *testing.T) {
	path := filepath.Join(t.TempDir(), "supervisor.log")
	// As detach opens it for the child.
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	e := &env{stdout: f, stderr: f}
	const limit = 64 << 10
	if err := e.capLog(limit); err != nil {
		t.Fatal(err)
	}
	for i := range 20000 {
		fmt.Fprintf(e.stderr, "vmnet: vm a: step %d took 0.1s\n", i)
		if i%1000 == 0 {
			fmt.Fprintf(e.stdout, "lab x is up %d\n", i)
		}
	}
	f.WriteString("panic: the runtime writes to fd 2 directly\n")
	b, _ := os.ReadFile(path)
	if len(b) > limit+100 {
		t.Fatalf("supervisor log is %d bytes, cap %d", len(b), limit)
	}
	if !strings.HasPrefix(string(b), "[vmnet: ") || !strings.Contains(string(b), "bytes of older output dropped") {
		t.Errorf("log does not say what it dropped: %q", b[:min(len(b), 100)])
	}
	if !bytes.HasSuffix(b, []byte("vmnet: vm a: step 19999 took 0.1s\npanic: the runtime writes to fd 2 directly\n")) {
		t.Errorf("log does not end with the newest output: %q", b[max(len(b)-200, 0):])
	}

	// On a terminal or pipe nothing changes.
	var buf bytes.Buffer
	e = &env{stdout: &buf, stderr: &buf}
	if err := e.capLog(logcap.DefaultMax); err != nil || e.stderr != &buf {
		t.Errorf("capLog replaced a non-file stderr: %v", err)
	}
}

// TestSupervisorLogTimestamps (issue 15): the detached supervisor logs
// through log/slog, each line timestamped, into the capped log.
func TestSupervisorLogTimestamps(t *testing.T) {
	path := filepath.Join(t.TempDir(), "supervisor.log")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	e := &env{stdout: f, stderr: f}
	if err := e.capLog(4 << 10); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.stderr.(*logcap.File); !ok {
		t.Fatalf("the supervisor's stderr is a %T, not the capped log", e.stderr)
	}
	log := e.logger()
	for i := range 200 {
		log.Info("vm state", "vm", "a", "state", "booting", "i", i)
	}
	log.Debug("not without --verbose")
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(b) > 4<<10+100 || !strings.Contains(lines[0], "older output dropped") {
		t.Errorf("log of %d bytes is not capped at 4 KiB: %q", len(b), lines[0])
	}
	last := lines[len(lines)-1]
	if !regexp.MustCompile(`^time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\S* level=INFO msg="vm state" vm=a state=booting i=199$`).MatchString(last) {
		t.Errorf("last line %q is not a timestamped slog line", last)
	}
	if strings.Contains(string(b), "not without --verbose") {
		t.Error("debug line logged without --verbose")
	}
}
