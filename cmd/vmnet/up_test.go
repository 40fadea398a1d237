package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
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
