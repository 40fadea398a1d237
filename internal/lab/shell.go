package lab

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// shellSocket is the unix socket behind a test-image guest's ttyS1, where
// the image's /init keeps a root shell without echo or prompt.
const shellSocket = "shell.sock"

// Shell runs cmd in the running guest vm of the lab whose state is in dir
// through its ttyS1 shell, copies the output to out and returns the
// command's exit status. Only guests booted from vmnet's test image have
// that shell. One caller at a time per guest: QEMU serves one client.
func Shell(ctx context.Context, dir, vm, cmd string, out io.Writer) (int, error) {
	vmDir := filepath.Join(dir, "vm-"+vm)
	// The VM's directory is root's alone (qemu.RootDir); O_NOFOLLOW is the
	// second line of defence against a planted link.
	lock, err := os.OpenFile(filepath.Join(vmDir, "shell.lock"), os.O_CREATE|os.O_RDWR|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return 0, fmt.Errorf("vm %s: no shell (is the lab up and the VM booted from the test image?): %w", vm, err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return 0, fmt.Errorf("vm %s: shell lock: %w", vm, err)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", filepath.Join(vmDir, shellSocket))
	if err != nil {
		return 0, fmt.Errorf("vm %s: shell: %w (is the lab up and the VM booted from the test image?)", vm, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	var nonce [8]byte
	rand.Read(nonce[:])
	marker := "VMNET-SHELL-" + hex.EncodeToString(nonce[:]) + "="
	// The command's stdin is not the serial line: it must not eat what
	// follows. A subshell keeps `exit` from ending the guest's shell.
	if _, err := fmt.Fprintf(c, "( %s\n) </dev/null; echo %s$?\n", cmd, marker); err != nil {
		return 0, fmt.Errorf("vm %s: shell: %w", vm, err)
	}
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if i := strings.Index(line, marker); i >= 0 {
			io.WriteString(out, line[:i])
			st, aerr := strconv.Atoi(strings.TrimSpace(line[i+len(marker):]))
			if aerr != nil {
				return 0, fmt.Errorf("vm %s: shell: bad status line %q", vm, line)
			}
			return st, nil
		}
		io.WriteString(out, line)
		if err != nil {
			if ctx.Err() != nil || os.IsTimeout(err) {
				return 0, fmt.Errorf("vm %s: command did not finish in time: %w", vm, context.DeadlineExceeded)
			}
			return 0, fmt.Errorf("vm %s: shell: %w", vm, err)
		}
	}
}

// ShellTimeout bounds a Shell call without a deadline of its own.
const ShellTimeout = 5 * time.Minute
