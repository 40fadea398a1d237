package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vmnet/vmnet/images/guest"
)

// shellSocket is the unix socket behind a test-image guest's ttyS1, where
// the image's /init keeps a root shell without echo or prompt.
const shellSocket = "shell.sock"

// Bounds of one Shell call.
const (
	// MaxShellCommand bounds the command: it travels base64-encoded in
	// lines through the guest's serial line discipline.
	MaxShellCommand = 64 << 10
	// MaxShellOutput bounds what one call relays; the rest is read and
	// dropped, so that the status still comes back.
	MaxShellOutput = 16 << 20
)

// ShellTimeout bounds a Shell call without a deadline of its own.
const ShellTimeout = 5 * time.Minute

// shellGrace is how long after the caller gives up the guest lets the
// command run before it kills it, freeing the shell for the next call.
const shellGrace = 5 * time.Second

// ShellResult is what a Shell call reports besides the output.
type ShellResult struct {
	Status int   // the command's exit status
	Cut    int64 // output bytes past MaxShellOutput, not relayed
}

// Shell runs cmd with sh in the running guest vm of the lab whose state
// is in dir, through the guest's ttyS1 shell, copies the output (stdout
// and stderr) to out and returns the command's exit status. Only guests
// booted from vmnet's test image have that shell. One caller at a time
// per guest: QEMU serves one client.
//
// The command and its answer are framed by guest.ShellProgram (the
// protocol); this is the transport. The guest kills a command shortly
// after ctx's deadline, so a call that timed out does not wedge the next
// one for longer than that.
func Shell(ctx context.Context, dir, vm, cmd string, out io.Writer) (ShellResult, error) {
	return shell(ctx, dir, vm, cmd, out, guest.HelperWait)
}

// shell is Shell with the guest shell's wait for its helper.
func shell(ctx context.Context, dir, vm, cmd string, out io.Writer, helperWait time.Duration) (ShellResult, error) {
	var res ShellResult
	if len(cmd) > MaxShellCommand {
		return res, fmt.Errorf("vm %s: command is %d bytes, at most %d go through the guest shell", vm, len(cmd), MaxShellCommand)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, ShellTimeout)
		defer cancel()
	}
	dl, _ := ctx.Deadline()
	vmDir := filepath.Join(dir, "vm-"+vm)
	if st, err := os.Lstat(filepath.Join(vmDir, agentSocket)); err == nil && st.Mode()&os.ModeSocket != 0 {
		return agentShell(ctx, filepath.Join(vmDir, agentSocket), vm, cmd, out)
	}
	// The VM's directory is root's alone (qemu.RootDir); openLockFile is
	// the second line of defence against a planted link or file.
	lock, err := openLockFile(filepath.Join(vmDir, "shell.lock"))
	if err != nil {
		return res, fmt.Errorf("vm %s: no shell (is the lab up and the VM booted from the test image?): %w", vm, err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return res, fmt.Errorf("vm %s: shell lock: %w", vm, err)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", filepath.Join(vmDir, shellSocket))
	if err != nil {
		return res, fmt.Errorf("vm %s: shell: %w (is the lab up and the VM booted from the test image?)", vm, err)
	}
	defer c.Close()
	c.SetDeadline(dl)
	// A cancelled ctx (Ctrl-C) ends blocked reads and writes too.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	p := guest.NewShellProgram(cmd, time.Until(dl)+shellGrace, helperWait)
	if _, err := io.WriteString(c, p.Script); err != nil {
		return res, shellErr(ctx, vm, err)
	}
	res.Status, res.Cut, err = p.Read(bufio.NewReaderSize(c, 64<<10), out, MaxShellOutput)
	if err != nil {
		return res, shellErr(ctx, vm, err)
	}
	return res, nil
}

// agentShell is Shell for guests with the QEMU guest agent (guest-exec):
// stdout, then stderr, to out.
func agentShell(ctx context.Context, sock, vm, cmd string, out io.Writer) (ShellResult, error) {
	var res ShellResult
	a := &guest.Agent{Path: sock, Name: vm}
	defer a.Close()
	st, err := a.Run(ctx, cmd)
	if err != nil {
		if ctx.Err() != nil {
			return res, fmt.Errorf("vm %s: command did not finish in time: %w", vm, context.DeadlineExceeded)
		}
		return res, err
	}
	for _, b := range [][]byte{st.Stdout, st.Stderr} {
		if _, err := out.Write(b); err != nil {
			return res, fmt.Errorf("vm %s: %w", vm, err)
		}
	}
	res.Status = st.ExitCode
	return res, nil
}

func shellErr(ctx context.Context, vm string, err error) error {
	if errors.Is(err, guest.ErrNoHelper) {
		return fmt.Errorf("vm %s: %w: restart the lab (vmnet down, then vmnet up); the guest's console log (vmnet logs LAB %s) may say why the helper stopped", vm, err, vm)
	}
	if ctx.Err() != nil || os.IsTimeout(err) {
		return fmt.Errorf("vm %s: command did not finish in time: %w", vm, context.DeadlineExceeded)
	}
	return fmt.Errorf("vm %s: shell: %w", vm, err)
}
