package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"
)

// logPoll is how often Logs looks for new console output while it
// follows: the log is a plain file, and a quarter second is quick enough
// for a person reading along.
const logPoll = 250 * time.Millisecond

// LogsOptions says what Logs prints.
type LogsOptions struct {
	Lines  int  // print the last Lines lines of the log first (0: none)
	Follow bool // then keep printing new output until ctx ends or the VM stops
}

// Logs prints the serial console log of vm, a guest of the lab whose
// state is in dir: the last opts.Lines lines, then, with opts.Follow, what
// the guest writes from then on, until ctx is done or the guest stops
// (its QEMU is gone or the lab is down). The log is capped (package
// logcap): when it is cut while Logs follows, Logs says so and goes on
// from the start of what is left, which may repeat some lines.
func Logs(ctx context.Context, dir, vm string, opts LogsOptions, out io.Writer) error {
	vs, err := vmState(dir, vm)
	if err != nil {
		return err
	}
	if vs.Console == "" {
		return fmt.Errorf("vm %s has no console log (the lab file sets console = \"\"?)", vm)
	}
	f, err := openLog(vs.Console)
	if err != nil {
		return fmt.Errorf("vm %s: %w", vm, err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("vm %s: console log %s: %w", vm, vs.Console, err)
	}
	off := int64(len(b))
	if _, err := out.Write(lastLines(b, opts.Lines)); err != nil {
		return err
	}
	if !opts.Follow {
		return nil
	}
	buf := make([]byte, 64<<10)
	for {
		// Whether the guest runs is asked before the read, so that what
		// it wrote before it stopped is still printed.
		running := vmRunning(dir, vm, vs)
		st, err := f.Stat()
		if err != nil {
			return fmt.Errorf("vm %s: console log %s: %w", vm, vs.Console, err)
		}
		if st.Size() < off {
			fmt.Fprintf(out, "\n[vmnet: the console log was cut at its size cap; going on from what is left, some lines may repeat]\n")
			off = 0
		}
		for {
			n, err := f.ReadAt(buf, off)
			if n > 0 {
				if _, werr := out.Write(buf[:n]); werr != nil {
					return werr
				}
				off += int64(n)
			}
			if err != nil || n == 0 {
				break
			}
		}
		if !running {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(logPoll):
		}
	}
}

// vmState finds vm in the state of the lab in dir.
func vmState(dir, vm string) (VMState, error) {
	st, err := ReadState(dir)
	if errors.Is(err, os.ErrNotExist) {
		return VMState{}, fmt.Errorf("vm %s: the lab is not up here (no state in %s)", vm, dir)
	}
	if err != nil {
		return VMState{}, err
	}
	var names []string
	for _, vs := range st.VMs {
		if vs.Name == vm {
			return vs, nil
		}
		names = append(names, vs.Name)
	}
	if len(names) == 0 {
		return VMState{}, fmt.Errorf("lab %s has no VM %q here (no VM has started on this host)", st.Lab, vm)
	}
	return VMState{}, fmt.Errorf("lab %s has no VM %q here: its VMs are %s", st.Lab, vm, strings.Join(names, ", "))
}

// vmRunning reports whether vm still runs: the lab's state names it
// with a live QEMU that is the one the state recorded. A lab that went
// down, or a VM restarted under a new pid, ends a follow as well.
func vmRunning(dir, vm string, was VMState) bool {
	vs, err := vmState(dir, vm)
	if err != nil || vs.PID != was.PID || vs.Console != was.Console || !Alive(vs.PID) {
		return false
	}
	if vs.PIDStart != 0 {
		if st, err := procStart(vs.PID); err != nil || st != vs.PIDStart {
			return false
		}
	}
	return true
}

// openLog opens a console log for reading: a regular file, not through
// a symbolic link, and without hanging on a fifo planted in its place.
func openLog(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("console log %s is a symbolic link: vmnet does not read through links", path)
	}
	if err != nil {
		return nil, fmt.Errorf("console log: %w", err)
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("console log %s is not a regular file", path)
	}
	return f, nil
}

// lastLines returns the last n lines of b (a final line without line end
// counts as one).
func lastLines(b []byte, n int) []byte {
	if n <= 0 {
		return nil
	}
	end := len(b)
	if end > 0 && b[end-1] == '\n' {
		end--
	}
	i := end
	for range n {
		j := bytes.LastIndexByte(b[:i], '\n')
		if j < 0 {
			return b
		}
		i = j
	}
	return b[i+1:]
}
