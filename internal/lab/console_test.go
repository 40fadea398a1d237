package lab

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestConsoleRefusals: a console session is refused while another holds
// console.lock (before it connects), and a lock file planted as a
// symbolic link, a fifo or a hard link to another file is never opened
// as root; the target stays untouched.
func TestConsoleRefusals(t *testing.T) {
	dir := t.TempDir()
	vmDir := filepath.Join(dir, "vm-v")
	os.Mkdir(vmDir, 0o755)
	lock, err := openLockFile(filepath.Join(vmDir, consoleLock))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	err = Console(context.Background(), dir, "v", strings.NewReader(""), new(strings.Builder), nil)
	if !errors.Is(err, ErrConsoleBusy) || !strings.Contains(err.Error(), "vm v: console: another console session holds it") {
		t.Errorf("second session: %v", err)
	}
	lock.Close()
	// Free again, but no supervisor serves the socket: a clear error.
	if err := Console(context.Background(), dir, "v", strings.NewReader(""), new(strings.Builder), nil); err == nil || !strings.Contains(err.Error(), "is the lab up here and the VM running?") {
		t.Errorf("no console socket: %v", err)
	}

	target := filepath.Join(dir, "precious")
	os.WriteFile(target, []byte("keep"), 0o644)
	for name, plant := range map[string]func(string) error{
		"symlink":   func(p string) error { return os.Symlink(target, p) },
		"hard link": func(p string) error { return os.Link(target, p) },
		"fifo":      func(p string) error { return syscall.Mkfifo(p, 0o600) },
	} {
		d := filepath.Join(dir, "vm-"+strings.ReplaceAll(name, " ", ""))
		os.Mkdir(d, 0o755)
		if err := plant(filepath.Join(d, consoleLock)); err != nil {
			t.Fatal(err)
		}
		err := Console(context.Background(), dir, strings.TrimPrefix(d, dir+"/vm-"), strings.NewReader(""), new(strings.Builder), nil)
		if err == nil || !strings.Contains(err.Error(), "remove it") {
			t.Errorf("%s planted as console.lock: %v", name, err)
		}
	}
	if b, _ := os.ReadFile(target); string(b) != "keep" {
		t.Errorf("the planted links' target changed: %q", b)
	}
}

// TestCopyUntilEscape: input reaches the guest up to Ctrl-], which is
// not sent and ends the session.
func TestCopyUntilEscape(t *testing.T) {
	a, b := net.Pipe()
	got := make(chan string)
	go func() {
		var sb strings.Builder
		buf := make([]byte, 64)
		for {
			n, err := b.Read(buf)
			sb.Write(buf[:n])
			if err != nil {
				got <- sb.String()
				return
			}
		}
	}()
	if err := copyUntilEscape(a, strings.NewReader("ls\r\x1dnot this")); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if s := <-got; s != "ls\r" {
		t.Errorf("guest got %q, want %q", s, "ls\r")
	}
}
