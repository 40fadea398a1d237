package tests

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/netns"
)

// openPTY opens a pseudo-terminal pair through /dev/ptmx (what
// posix_openpt, unlockpt and ptsname do).
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// lockedText collects what a goroutine reads while the test looks.
type lockedText struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedText) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedText) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *lockedText) waitFor(t *testing.T, want string, d time.Duration) {
	t.Helper()
	for end := time.Now().Add(d); !strings.Contains(l.String(), want); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("no %q after %v in:\n%s", want, d, l.String())
		}
	}
}

// consoleSession checks `vmnet console LAB VM` against a running guest
// on a real pseudo-terminal: the terminal goes raw (no echo, no signals)
// while attached and back afterwards; a second session is refused with
// exit 1 while the first holds the console; a command typed in the
// terminal runs in the guest's console shell and its output comes back;
// Ctrl-] leaves with status 0; `vmnet logs` shows the session.
func consoleSession(t *testing.T, ns netns.Handle, labName, vm string) {
	master, slave := openPTY(t)
	cmd := exec.Command(vmnetBin, "--netns", nsArg(ns), "console", labName, vm)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	var screen lockedText
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			screen.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer cmd.Process.Kill()
	screen.waitFor(t, "leave with Ctrl-]", 10*time.Second)
	tio, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil || tio.Lflag&(unix.ECHO|unix.ICANON|unix.ISIG) != 0 {
		t.Errorf("terminal not in raw mode while attached: lflag %#x, %v", tio.Lflag, err)
	}

	if r := vmnetIn(t, ns, "console", labName, vm); r.status != 1 || !strings.Contains(r.stderr, "vm "+vm+": console: another console session holds it") {
		t.Errorf("second console session: status %d, stderr %q; want 1 and a refusal", r.status, r.stderr)
	}

	master.Write([]byte("echo vmnet-$((6*7))\r"))
	screen.waitFor(t, "vmnet-42", 60*time.Second)
	master.Write([]byte{0x1d})
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("vmnet console after Ctrl-]: %v\n%s", err, screen.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("vmnet console did not leave at Ctrl-]:\n%s", screen.String())
	}
	if tio, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS); err != nil || tio.Lflag&unix.ECHO == 0 {
		t.Errorf("terminal not restored after the session: lflag %#x, %v", tio.Lflag, err)
	}
	r := vmnetIn(t, ns, "logs", labName, vm, "--lines", "1000")
	if r.status != 0 || !strings.Contains(r.stdout, "VMNET-READY") || !strings.Contains(r.stdout, "vmnet-42") {
		t.Errorf("vmnet logs: status %d, want the boot and the console session in:\n%s", r.status, r.stdout)
	}
	// The console is free again.
	r = vmnetIn(t, ns, "console", "-q", labName, vm)
	if r.status != 0 {
		t.Errorf("console after the first session left: status %d %q", r.status, r.stderr)
	}
}
