package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vmnet/vmnet/internal/qemu"
)

// The interactive console of a guest: the supervisor, which holds the
// guest's serial console (ttyS0, a socketpair with QEMU; it also writes
// the console log), serves it on console.sock in the VM's directory, and
// `vmnet console` attaches a terminal to that socket. console.lock keeps
// a second session out before it connects, with a clear message; the
// supervisor refuses a second client as well.
const (
	consoleSocket = "console.sock"
	consoleLock   = "console.lock"
)

// EscapeByte leaves an interactive console: Ctrl-], as in telnet and
// virsh console.
const EscapeByte = 0x1d

// ErrConsoleBusy is returned by Console when another session holds the
// VM's console.
var ErrConsoleBusy = errors.New("another console session holds it")

// listenConsole binds the console socket of v (root's alone, like the
// VM's other sockets) and serves it until the guest's QEMU exits.
func (l *Lab) listenConsole(vm string, v *qemu.VM) error {
	path := filepath.Join(l.runDir(vm), consoleSocket)
	f, err := qemu.ListenUnix(path, 0o600)
	if err != nil {
		return fmt.Errorf("vm %s: console socket: %w", vm, err)
	}
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("vm %s: console socket: %w", vm, err)
	}
	go func() {
		<-v.Exited()
		ln.Close()
		os.Remove(path)
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serveConsole(v, c)
		}
	}()
	return nil
}

// serveConsole joins one client to the guest's console until the client
// leaves or the guest stops.
func serveConsole(v *qemu.VM, c net.Conn) {
	defer c.Close()
	in, detach, err := v.AttachConsole(c)
	if err != nil {
		fmt.Fprintf(c, "vmnet: the console is in use: %v\r\n", err)
		return
	}
	defer detach()
	done := make(chan struct{})
	go func() {
		select {
		case <-v.Exited():
			c.Close()
		case <-done:
		}
	}()
	io.Copy(in, c)
	close(done)
}

// Console attaches in and out to the serial console of vm, a running
// guest of the lab whose state is in dir: what the guest writes goes to
// out, what is read from in goes to the guest, until in yields
// EscapeByte (Ctrl-]) or ends, ctx is done, or the guest stops. The
// caller puts a terminal in raw mode; attached, if not nil, is called
// once the session holds the console. Only one session per guest: while
// another holds the console, Console returns ErrConsoleBusy at once.
func Console(ctx context.Context, dir, vm string, in io.Reader, out io.Writer, attached func()) error {
	vmDir := filepath.Join(dir, "vm-"+vm)
	lock, err := openLockFile(filepath.Join(vmDir, consoleLock))
	if err != nil {
		return fmt.Errorf("vm %s: no console (is the lab up here and the VM started?): %w", vm, err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("vm %s: console: %w: leave that session first (Ctrl-] in its terminal)", vm, ErrConsoleBusy)
		}
		return fmt.Errorf("vm %s: console lock: %w", vm, err)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", filepath.Join(vmDir, consoleSocket))
	if err != nil {
		return fmt.Errorf("vm %s: console: %w (is the lab up here and the VM running?)", vm, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if attached != nil {
		attached()
	}
	fromGuest := make(chan error, 1)
	go func() {
		_, err := io.Copy(out, c)
		fromGuest <- err
	}()
	toGuest := make(chan error, 1)
	go func() { toGuest <- copyUntilEscape(c, in) }()
	select {
	case err := <-toGuest:
		// Ctrl-] or the end of the input: the session is over; what the
		// guest still sends is not waited for.
		if err != nil && ctx.Err() == nil {
			return fmt.Errorf("vm %s: console: %w", vm, err)
		}
		return nil
	case err := <-fromGuest:
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("vm %s: console: %w", vm, err)
		}
		return fmt.Errorf("vm %s: console: the guest stopped or the lab went down", vm)
	}
}

// copyUntilEscape copies in to c up to the first EscapeByte (not sent) or
// the end of in.
func copyUntilEscape(c net.Conn, in io.Reader) error {
	buf := make([]byte, 4096)
	for {
		n, err := in.Read(buf)
		if n > 0 {
			b := buf[:n]
			i := bytes.IndexByte(b, EscapeByte)
			if i >= 0 {
				b = b[:i]
			}
			if _, werr := c.Write(b); werr != nil {
				return werr
			}
			if i >= 0 {
				return nil
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// openLockFile opens (creating) a lock file as root in a directory that
// another user might be able to write to: never through a symbolic
// link, never a fifo or device planted in its place, never a file of
// another user or a hard link to some other file.
func openLockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0o600)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%s is a symbolic link (%w): remove it", path, syscall.ELOOP)
	}
	if err != nil {
		return nil, err
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	switch {
	case st.Mode&syscall.S_IFMT != syscall.S_IFREG:
		err = fmt.Errorf("%s is not a regular file: remove it", path)
	case int(st.Uid) != os.Geteuid():
		err = fmt.Errorf("%s belongs to uid %d, not to the user vmnet runs as: remove it", path, st.Uid)
	case st.Nlink != 1:
		err = fmt.Errorf("%s has %d hard links: remove it", path, st.Nlink)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
