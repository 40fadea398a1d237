package gexec

import (
	"bytes"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/vmnet/vmnet/images/guest"
)

// startTime is when the program started (zero if it did not).
func (f *outputFilter) startTime() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.started
}

// startError returns the wrapper's VMNET-EXEC-ERROR message, if any.
func (f *outputFilter) startError() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.execErr
}

// Lines the wrapper (/vmnet/run) prints before it starts the program.
const (
	startLine   = "VMNET-EXEC-START"   // the program's output follows
	errorPrefix = "VMNET-EXEC-ERROR: " // the program could not be started
	maxBootLine = 4096
)

// outputFilter turns the guest's serial console into the program's
// output: everything up to the VMNET-EXEC-START line is boot chatter (copied
// to boot, if set), everything after it is the program's stdout and
// stderr, byte for byte, until the exit marker carrying the run's nonce
// ("VMNET-EXIT=<n> <nonce>", see guest.ParseExit), which is dropped
// together with the newline /init prints in front of it. Output is passed
// on as it arrives; only the start of a line that may still become the
// exit marker is held back (a few dozen bytes at most). Marker lines
// without the nonce are program output. The status comes from the VM's
// console, which takes the last marker; a program that prints the marker
// with the nonce (read from /proc/cmdline) only ends its output early.
type outputFilter struct {
	mu      sync.Mutex
	out     io.Writer // program output
	boot    io.Writer // boot chatter; nil discards
	nonce   string    // vmnet.nonce of the run
	ready   bool      // VMNET-EXEC-START seen
	done    bool      // exit marker seen: the rest is power-off chatter
	execErr string    // VMNET-EXEC-ERROR message
	started time.Time // when VMNET-EXEC-START arrived

	line []byte // boot: current line

	holding   bool   // at the start of a line that may be the marker
	hold      []byte // that line so far
	pendingNL bool   // a '\n' not yet written: it may precede the marker
	buf       bytes.Buffer
}

func newOutputFilter(out, boot io.Writer, nonce string) *outputFilter {
	return &outputFilter{out: out, boot: boot, nonce: nonce, holding: true}
}

func (f *outputFilter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.buf.Reset()
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case f.done, !f.ready:
			f.bootByte(c)
		default:
			f.outByte(c)
		}
	}
	if f.buf.Len() > 0 {
		// A broken stdout (go test gone) must not stop the console reader.
		f.out.Write(f.buf.Bytes())
	}
	return len(p), nil
}

// bootByte takes the console outside the program's run: boot messages,
// and power-off messages after the exit marker.
func (f *outputFilter) bootByte(c byte) {
	if c != '\n' {
		if len(f.line) < maxBootLine {
			f.line = append(f.line, c)
		}
		return
	}
	l := bytes.TrimRight(f.line, "\r")
	if f.boot != nil {
		f.boot.Write(append(append([]byte(nil), l...), '\n'))
	}
	if f.done {
		// Power-off chatter.
	} else if m := string(bytes.TrimSpace(l)); m == startLine {
		f.ready, f.started = true, time.Now()
	} else if e, ok := strings.CutPrefix(m, errorPrefix); ok && f.execErr == "" {
		f.execErr = e
	}
	f.line = f.line[:0]
}

func (f *outputFilter) outByte(c byte) {
	if c == '\n' {
		if f.holding {
			if f.isExitLine(f.hold, true) {
				f.done, f.hold, f.pendingNL = true, nil, false
				return
			}
			f.emitHeld()
		}
		f.pendingNL, f.holding, f.hold = true, true, f.hold[:0]
		return
	}
	if !f.holding {
		f.buf.WriteByte(c)
		return
	}
	f.hold = append(f.hold, c)
	if !f.isExitLine(f.hold, false) {
		f.emitHeld()
		f.holding = false
	}
}

// emitHeld writes the held newline and line start.
func (f *outputFilter) emitHeld() {
	if f.pendingNL {
		f.buf.WriteByte('\n')
		f.pendingNL = false
	}
	f.buf.Write(f.hold)
	f.hold = f.hold[:0]
}

// flush writes what is still held back when the console ends without
// the exit marker.
func (f *outputFilter) flush() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.ready || f.done {
		return
	}
	f.buf.Reset()
	f.emitHeld()
	if f.buf.Len() > 0 {
		f.out.Write(f.buf.Bytes())
	}
}

// isExitLine reports whether l is the exit marker (optionally with a
// final '\r'), or with complete false whether it can still become one.
func (f *outputFilter) isExitLine(l []byte, complete bool) bool {
	if complete {
		_, ok := guest.ParseExit(string(l), f.nonce)
		return ok
	}
	return guest.MayBeExit(string(l), f.nonce)
}
