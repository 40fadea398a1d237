package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmnet/vmnet/images/guest"
	"github.com/vmnet/vmnet/internal/testenv"
)

// hostShell stands in for a guest's ttyS1: one long-lived sh whose stdin
// and output go to whichever client is connected to the unix socket, as
// QEMU's socket chardev does (output without a client is lost). The
// shell protocol needs sh and the image's helper (images/helper, built
// here) serving its FIFOs in /run (private to this test process).
func hostShell(t *testing.T) (dir string) {
	t.Helper()
	startHostHelper(t)
	sh := guestLikeShell(t)
	return hostShellCmd(t, exec.Command(sh[0], sh[1:]...))
}

// guestLikeShell is the host's shell closest to the guest's (busybox
// ash): busybox itself, else bash, which also has read -t (dash has
// not).
func guestLikeShell(t *testing.T) []string {
	t.Helper()
	if p, err := exec.LookPath("busybox"); err == nil {
		return []string{p, "sh"}
	}
	return []string{testenv.RequireProgram(t, "bash")}
}

// hostShellCmd is hostShell with sh as the command sh starts.
func hostShellCmd(t *testing.T, sh *exec.Cmd) (dir string) {
	t.Helper()
	dir = t.TempDir()
	vmDir := filepath.Join(dir, "vm-g")
	if err := os.Mkdir(vmDir, 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(vmDir, shellSocket))
	if err != nil {
		t.Fatal(err)
	}
	sh.Dir = dir
	in, err := sh.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	sh.Stdout, sh.Stderr = pw, pw
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ln.Close()
		in.Close()
		sh.Process.Kill()
		sh.Wait()
		pw.Close()
	})
	var mu sync.Mutex
	var cur net.Conn
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := pr.Read(buf)
			mu.Lock()
			if cur != nil {
				cur.Write(buf[:n])
			}
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			cur = c
			mu.Unlock()
			io.Copy(in, c)
			mu.Lock()
			cur = nil
			mu.Unlock()
			c.Close()
		}
	}()
	return dir
}

var hostHelper struct {
	once sync.Once
	err  error
	cmd  *exec.Cmd
	dir  string
}

// stopHostHelper ends the helper startHostHelper started (TestMain).
func stopHostHelper() {
	if c := hostHelper.cmd; c != nil {
		c.Process.Kill()
		c.Wait()
	}
	if hostHelper.dir != "" {
		os.RemoveAll(hostHelper.dir)
	}
}

// startHostHelper builds the image's helper and starts it serving the
// FIFOs the ttyS1 shell protocol uses, once per test process (its /run
// is private: TestMain).
func startHostHelper(t *testing.T) {
	t.Helper()
	gobin := testenv.RequireProgram(t, "go")
	hostHelper.once.Do(func() {
		dir, err := os.MkdirTemp("", "vmnet-helper-test-")
		if err != nil {
			hostHelper.err = err
			return
		}
		hostHelper.dir = dir
		bin := filepath.Join(dir, "vmnet-helper")
		if out, err := exec.Command(gobin, "build", "-o", bin, "../../images/helper").CombinedOutput(); err != nil {
			hostHelper.err = fmt.Errorf("build the helper: %v\n%s", err, out)
			return
		}
		for _, f := range []string{guest.HelperRequest, guest.HelperAnswer} {
			if err := syscall.Mkfifo(f, 0o600); err != nil {
				hostHelper.err = err
				return
			}
		}
		// It lives as long as the test process (TestMain stops it; the
		// parent-death signal covers a test binary that panicked).
		c := exec.Command(bin, "serve", guest.HelperRequest, guest.HelperAnswer)
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if hostHelper.err = c.Start(); hostHelper.err == nil {
			hostHelper.cmd = c
		}
	})
	if hostHelper.err != nil {
		t.Fatal(hostHelper.err)
	}
}

func shellCall(t *testing.T, dir, cmd string, d time.Duration) (ShellResult, string, time.Duration, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var out bytes.Buffer
	t0 := time.Now()
	res, err := Shell(ctx, dir, "g", cmd, &out)
	return res, out.String(), time.Since(t0), err
}

func TestShellProtocol(t *testing.T) {
	dir := hostShell(t)
	for _, tc := range []struct {
		name, cmd, out string
		status         int
	}{
		{"plain", "echo hello; exit 3", "hello\n", 3},
		{"no final newline", "printf 'a\\nb'", "a\nb", 0},
		{"blank lines", "printf 'x\\n\\n'", "x\n\n", 0},
		{"stderr", "echo err >&2; false", "err\n", 1},
		// An unbalanced quote is a syntax error of that command only.
		{"unbalanced quote", "echo 'unbalanced", "", 2},
		{"quotes and dollars", `x='a "b" $c'; echo "$x" '$(reboot)' \`, "a \"b\" $c $(reboot) \\\n", 0},
		// Output that imitates the framing does not change the status.
		{"fake markers", "echo VMNET-SHELL-BEGIN-0000000000000000; echo VMNET-SHELL-0000000000000000=0; echo; exit 4",
			"VMNET-SHELL-BEGIN-0000000000000000\nVMNET-SHELL-0000000000000000=0\n\n", 4},
		{"stdin is not the shell's", "cat; echo done", "done\n", 0},
		{"long line", "head -c 200000 /dev/zero | tr '\\0' x; echo", strings.Repeat("x", 200000) + "\n", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, out, took, err := shellCall(t, dir, tc.cmd, 20*time.Second)
			if err != nil {
				t.Fatalf("%v after %v", err, took)
			}
			if tc.name == "unbalanced quote" {
				if lo := strings.ToLower(out); res.Status != 2 || !strings.Contains(lo, "unterminated") && !strings.Contains(lo, "unexpected eof") {
					t.Errorf("status %d, output %q: want a syntax error", res.Status, out)
				}
				return
			}
			if res.Status != tc.status || out != tc.out {
				t.Errorf("status %d output %q, want %d %q", res.Status, out, tc.status, tc.out)
			}
		})
	}
	if _, _, _, err := shellCall(t, dir, strings.Repeat("x", MaxShellCommand+1), time.Second); err == nil {
		t.Error("a command over the limit was sent")
	}
}

// Output past MaxShellOutput is counted, not relayed, and the status
// still comes back.
func TestShellOutputCap(t *testing.T) {
	dir := hostShell(t)
	res, out, _, err := shellCall(t, dir, "head -c 20000000 /dev/zero; exit 5", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != MaxShellOutput || res.Cut != 20000000-MaxShellOutput || res.Status != 5 {
		t.Errorf("relayed %d, cut %d, status %d; want %d, %d, 5", len(out), res.Cut, res.Status, MaxShellOutput, 20000000-MaxShellOutput)
	}
}

// A call that times out does not wedge the shell: the guest kills the
// command shortly after, and its late output is not the next call's.
func TestShellTimeoutThenNext(t *testing.T) {
	dir := hostShell(t)
	_, _, took, err := shellCall(t, dir, "echo started; sleep 2; echo stale-output; sleep 600", time.Second)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want a timeout, got %v after %v", err, took)
	}
	res, out, took, err := shellCall(t, dir, "echo fresh", 30*time.Second)
	if err != nil || res.Status != 0 || out != "fresh\n" {
		t.Fatalf("next call: %v status %d output %q", err, res.Status, out)
	}
	if took > 15*time.Second {
		t.Errorf("next call took %v: the timed-out command was not killed", took)
	}
	t.Logf("next call answered after %v", took.Round(time.Millisecond))
}

// A guest whose helper is gone (its FIFOs exist, nobody serves them)
// does not wedge its shell: the call fails after the helper wait with an
// error naming the VM and what to do, nothing runs, and every later
// call is refused at once.
func TestShellDeadHelper(t *testing.T) {
	testenv.RequireProgram(t, "unshare")
	// The stand-in's sh gets a /run of its own with the FIFOs and no
	// helper (its own mount namespace; the test's /run is private too).
	dir := hostShellCmd(t, exec.Command("unshare", "-m", "sh", "-c",
		"mount -t tmpfs vmnet-test /run && mkfifo "+guest.HelperRequest+" "+guest.HelperAnswer+" && exec "+strings.Join(guestLikeShell(t), " ")))
	marker := filepath.Join(dir, "ran")
	call := func() (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var out bytes.Buffer
		t0 := time.Now()
		_, err := shell(ctx, dir, "g", "touch "+marker, &out, time.Second)
		return time.Since(t0), err
	}
	took, err := call()
	if !errors.Is(err, guest.ErrNoHelper) {
		t.Fatalf("want the no-helper error, got %v after %v", err, took)
	}
	if !strings.Contains(err.Error(), "vm g:") || !strings.Contains(err.Error(), "restart the lab") {
		t.Errorf("message does not name the VM and what to do: %v", err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the command ran without the helper")
	}
	took, err = call()
	if !errors.Is(err, guest.ErrNoHelper) {
		t.Fatalf("second call: want the no-helper error, got %v after %v", err, took)
	}
	t.Logf("first call failed after the helper wait; the second after %v", took.Round(time.Millisecond))
}
