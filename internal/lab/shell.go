package lab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/vmnet/vmnet/images/guest"
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

// Bounds of one Shell call.
const (
	// MaxShellCommand bounds the command: it travels base64-encoded in
	// lines through the guest's serial line discipline.
	MaxShellCommand = 64 << 10
	// MaxShellOutput bounds what one call relays; the rest is read and
	// dropped, so that the status still comes back.
	MaxShellOutput = 16 << 20
)

// shellChunk is the base64 text per line sent to the guest: well below
// the 4095-byte line limit of the tty's canonical mode.
const shellChunk = 3072

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
// The command never reaches the guest's shell as text: it is sent
// base64-encoded, checked against its SHA-256 and decoded into a file
// that a new sh runs with stdin /dev/null, so quoting, control
// characters or a syntax error in it cannot leave the shell waiting for
// more input. Output is framed by lines with a per-call random nonce
// ("VMNET-SHELL-BEGIN-<nonce>" before, "VMNET-SHELL-<nonce>=<status>"
// after), so neither output left over from an earlier call nor command
// output that imitates a status line is taken for the status. The guest
// kills a command shortly after ctx's deadline, so a call that timed out
// does not wedge the next one for longer than that.
func Shell(ctx context.Context, dir, vm, cmd string, out io.Writer) (ShellResult, error) {
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

	p := newShellProgram(cmd, time.Until(dl)+shellGrace)
	if _, err := io.WriteString(c, p.script); err != nil {
		return res, shellErr(ctx, vm, err)
	}
	res, err = p.read(bufio.NewReaderSize(c, 64<<10), out)
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
	if ctx.Err() != nil || os.IsTimeout(err) {
		return fmt.Errorf("vm %s: command did not finish in time: %w", vm, context.DeadlineExceeded)
	}
	return fmt.Errorf("vm %s: shell: %w", vm, err)
}

// errGarbled marks a command that did not arrive intact in the guest.
var errGarbled = errors.New("the command arrived garbled in the guest (its SHA-256 differs); nothing was run")

// shellProgram is one call: the lines sent to the guest's shell and the
// markers that frame the answer.
type shellProgram struct {
	script string
	begin  string // line before the output
	end    string // status line prefix
}

func newShellProgram(cmd string, guestTimeout time.Duration) shellProgram {
	var nb [8]byte
	rand.Read(nb[:])
	nonce := hex.EncodeToString(nb[:])
	p := shellProgram{begin: "VMNET-SHELL-BEGIN-" + nonce, end: "VMNET-SHELL-" + nonce + "="}
	sum := sha256.Sum256([]byte(cmd))
	b64 := base64.StdEncoding.EncodeToString([]byte(cmd))
	secs := int(guestTimeout.Round(time.Second)/time.Second) + 1
	// Every line is complete shell syntax made of fixed text, hex and
	// base64: whatever cmd holds, the guest's shell reads exactly these
	// lines. The file is per call, so a killed earlier command cannot
	// have it open.
	var s strings.Builder
	f := "/tmp/.vmnet-sh-" + nonce
	fmt.Fprintf(&s, "f=%s; : >$f.b64\n", f)
	for i := 0; i < len(b64); i += shellChunk {
		fmt.Fprintf(&s, "printf %%s %s >>$f.b64\n", b64[i:min(i+shellChunk, len(b64))])
	}
	// A newline before each marker puts it on a line of its own even
	// after output without one; read drops that newline again.
	fmt.Fprintf(&s, "echo; echo %s; if base64 -d <$f.b64 >$f 2>/dev/null && [ \"$(sha256sum <$f)\" = '%x  -' ]; then "+
		"timeout -s KILL %d sh $f </dev/null 2>&1; s=$?; else s=garbled; fi; rm -f $f $f.b64; echo; echo %s$s\n",
		p.begin, sum, secs, p.end)
	p.script = s.String()
	return p
}

// read skips what comes before the begin line, relays the output up to
// MaxShellOutput and returns at the status line.
func (p shellProgram) read(r *bufio.Reader, out io.Writer) (ShellResult, error) {
	var res ShellResult
	var relayed int64
	emit := func(b []byte) {
		if n := min(int64(len(b)), MaxShellOutput-relayed); n > 0 {
			out.Write(b[:n])
			relayed += n
			b = b[n:]
		}
		res.Cut += int64(len(b))
	}
	begun := false
	pendingNL := false // a newline held back: it may be the one before the status line
	lineStart := true
	for {
		chunk, err := r.ReadSlice('\n')
		if len(chunk) > 0 {
			complete := chunk[len(chunk)-1] == '\n'
			if lineStart && complete {
				// Lines shorter than the reader's buffer come whole, so a
				// marker line is never split.
				line := string(bytes.TrimRight(chunk, "\r\n"))
				switch {
				case !begun:
					begun = line == p.begin
					chunk = nil
				case strings.HasPrefix(line, p.end):
					st := line[len(p.end):]
					if st == "garbled" {
						return res, errGarbled
					}
					n, aerr := strconv.Atoi(st)
					if aerr != nil {
						return res, fmt.Errorf("bad status line %q", line)
					}
					res.Status = n
					return res, nil
				}
			}
			if begun && chunk != nil {
				if pendingNL {
					emit([]byte{'\n'})
					pendingNL = false
				}
				if complete {
					emit(chunk[:len(chunk)-1])
					pendingNL = true
				} else {
					emit(chunk)
				}
			}
			lineStart = complete
		}
		if err != nil && err != bufio.ErrBufferFull {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return res, err
		}
	}
}
