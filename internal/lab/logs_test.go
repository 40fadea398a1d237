package lab

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLastLines(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{{"a\nb\nc\n", 2, "b\nc\n"}, {"a\nb\nc", 2, "b\nc"}, {"a\nb\n", 5, "a\nb\n"}, {"a\n", 0, ""}, {"", 3, ""}, {"a\nb\nc\n", 1, "c\n"}} {
		if got := string(lastLines([]byte(tc.in), tc.n)); got != tc.want {
			t.Errorf("lastLines(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

// waitFor waits until b holds want.
func waitFor(t *testing.T, b *syncBuffer, want string) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !strings.Contains(b.String(), want); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("no %q in %q", want, b.String())
		}
	}
}

// TestLogs: `vmnet logs` prints the last N lines of a VM's console log;
// with -f it prints what is appended, says so when the log was cut at
// its cap and goes on, and ends by itself once the VM's process is gone,
// after printing what it wrote last. The VM's process is a real process
// recorded in a real state file (pid and start time), as the supervisor
// records QEMU.
func TestLogs(t *testing.T) {
	dir := t.TempDir()
	con := filepath.Join(dir, "vm-v", "console.log")
	os.MkdirAll(filepath.Dir(con), 0o700)
	if err := os.WriteFile(con, []byte("boot 1\nboot 2\nboot 3\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	proc := exec.Command("sleep", "60")
	if err := proc.Start(); err != nil {
		t.Fatal(err)
	}
	defer proc.Process.Kill()
	start, err := procStart(proc.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	st := &State{Lab: "lg", StateDir: dir, VMs: []VMState{{Name: "w"}, {Name: "v", PID: proc.Process.Pid, PIDStart: start, Console: con}}}
	if err := writeState(st); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := Logs(context.Background(), dir, "v", LogsOptions{Lines: 2}, &b); err != nil || b.String() != "boot 2\nboot 3\n" {
		t.Errorf("logs --lines 2: %q, %v", b.String(), err)
	}
	if err := Logs(context.Background(), dir, "x", LogsOptions{}, &b); err == nil || !strings.Contains(err.Error(), `lab lg has no VM "x" here: its VMs are w, v`) {
		t.Errorf("unknown VM: %v", err)
	}
	if err := Logs(context.Background(), dir, "w", LogsOptions{}, &b); err == nil || !strings.Contains(err.Error(), "vm w has no console log") {
		t.Errorf("VM without console log: %v", err)
	}

	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- Logs(context.Background(), dir, "v", LogsOptions{Lines: 1, Follow: true}, &out) }()
	waitFor(t, &out, "boot 3\n")
	appendLog := func(s string) {
		f, err := os.OpenFile(con, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(s)
		f.Close()
	}
	appendLog("login: ")
	waitFor(t, &out, "boot 3\nlogin: ")
	// What logcap does at its cap: the file rewritten, shorter, in place.
	if err := os.WriteFile(con, []byte("[dropped]\nlogin: \n"), 0o640); err != nil {
		t.Fatal(err)
	}
	waitFor(t, &out, "the console log was cut at its size cap")
	waitFor(t, &out, "[dropped]\nlogin: \n")
	appendLog("last words\n")
	proc.Process.Kill()
	proc.Wait()
	select {
	case err := <-done:
		if err != nil || !strings.HasSuffix(out.String(), "last words\n") || strings.Contains(out.String(), "boot 2") {
			t.Errorf("logs -f: %v:\n%s", err, out.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("logs -f goes on after the VM's process is gone")
	}
	// A follow also ends with ctx (Ctrl-C).
	ctx, cancel := context.WithCancel(context.Background())
	st.VMs[1].PID, st.VMs[1].PIDStart = os.Getpid(), 0
	writeState(st)
	go func() { done <- Logs(ctx, dir, "v", LogsOptions{Follow: true}, &out) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("logs -f ignores its context")
	}
}
