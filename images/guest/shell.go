package guest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// The test image keeps a root shell without echo or prompt on ttyS1. A
// ShellProgram is one command for it: the command never reaches the shell
// as text. It is sent base64-encoded and handed to the image's resident
// helper (vmnet-helper, through the FIFOs HelperRequest and
// HelperAnswer), which checks it against its SHA-256 and decodes it into
// a file; a subshell of the ttyS1 shell sources that file with stdin
// /dev/null, so quoting, control characters or a syntax error in it
// cannot leave the shell waiting for more input, and no new program
// starts for the call (under TCG each costs tens of milliseconds of
// QEMU's CPU). The command runs as a background job of that shell, so
// it starts with SIGINT and SIGQUIT ignored; the helper kills it and
// every process it started (SIGKILL) when it runs past the call's
// deadline. Output is framed by lines
// with a per-call random nonce (ShellBegin+nonce before,
// ShellEnd+nonce+"=<status>" after), so neither output left over from an
// earlier call nor command output that imitates a status line is taken
// for the status.
const (
	ShellBegin = "VMNET-SHELL-BEGIN-"
	ShellEnd   = "VMNET-SHELL-"
)

// shellFile is the file in the guest that holds the command (and, with
// ".b64", its base64 text).
const shellFile = "/tmp/.vmnet-sh"

// The test image's helper FIFOs (images/init.sh creates them): requests
// and answers, one per line.
const (
	HelperRequest = "/run/vmnet-helper-req"
	HelperAnswer  = "/run/vmnet-helper-ans"
)

// shellChunk is the base64 text per line sent to the guest: well below
// the 4095-byte line limit of the tty's canonical mode.
const shellChunk = 3072

// ErrGarbled marks a command that did not arrive intact in the guest.
var ErrGarbled = errors.New("the command arrived garbled in the guest (its SHA-256 differs); nothing was run")

// ErrNoHelper marks a guest whose helper did not answer within the
// helper wait of NewShellProgram: nothing was run, and the guest's shell
// refuses every later command at once (the helper's late answer would
// otherwise be taken for the next call's).
var ErrNoHelper = errors.New("the guest's helper program (vmnet-helper) does not answer, so the guest's shell runs no commands; nothing was run")

// HelperWait is how long the guest's shell waits for the helper's answer
// to a request: it answers in milliseconds, and in well under a second
// in a TCG guest starved by dozens of others on two cores.
const HelperWait = 20 * time.Second

// ShellProgram is one call: the lines to send to the guest's shell
// (Script) and the markers that frame the answer (Read).
type ShellProgram struct {
	Script string
	begin  string // line before the output
	end    string // status line prefix
}

// NewShellProgram encodes cmd; the guest kills it after guestTimeout.
// The guest's shell waits helperWait (HelperWait; rounded up to whole
// seconds) for the helper to take the command, then reports ErrNoHelper.
func NewShellProgram(cmd string, guestTimeout, helperWait time.Duration) ShellProgram {
	nonce := NewNonce()
	p := ShellProgram{begin: ShellBegin + nonce, end: ShellEnd + nonce + "="}
	sum := sha256.Sum256([]byte(cmd))
	b64 := base64.StdEncoding.EncodeToString([]byte(cmd))
	secs := int(guestTimeout.Round(time.Second)/time.Second) + 1
	wait := int((helperWait + time.Second - 1) / time.Second)
	// Every line is complete shell syntax made of fixed text, hex and
	// base64: whatever cmd holds, the guest's shell reads exactly these
	// lines. The shell runs one call at a time and the previous call's
	// command has exited (or was killed) before this one writes, so
	// every call reuses the same two files: removing them would start
	// one more program per call.
	var s strings.Builder
	fmt.Fprintf(&s, "f=%s; : >$f.b64\n", shellFile)
	for i := 0; i < len(b64); i += shellChunk {
		fmt.Fprintf(&s, "printf %%s %s >>$f.b64\n", b64[i:min(i+shellChunk, len(b64))])
	}
	// A newline before each marker puts it on a line of its own even
	// after output without one; Read drops that newline again.
	// Requests open the FIFO read-write, which never waits: the helper
	// holds it open from before the guest is ready (a request written
	// while nobody reads it is lost, and the answer's wait ends). A
	// helper that did not answer within the wait is taken for dead by
	// this shell (vmnet_nohelper), so a late answer is never taken for a
	// later call's.
	fmt.Fprintf(&s, "echo; echo %s; if [ -n \"$vmnet_nohelper\" ]; then s=nohelper; else "+
		"echo \"decode $f %x\" 1<>%s; s=; IFS= read -t %d -r s <>%s || vmnet_nohelper=1; if [ \"$s\" = OK ]; then "+
		"( . $f ) </dev/null 2>&1 & p=$!; echo \"watch $p %d\" 1<>%s; wait $p; s=$?; echo \"unwatch $p\" 1<>%s; "+
		"elif [ -n \"$vmnet_nohelper\" ]; then s=nohelper; else s=garbled; fi; fi; echo; echo %s$s\n",
		p.begin, sum, HelperRequest, wait, HelperAnswer, secs, HelperRequest, HelperRequest, p.end)
	p.Script = s.String()
	return p
}

// Read skips what comes before the begin line, relays the output to out
// up to limit bytes (counting the rest in cut) and returns the command's
// status at the status line. Lines shorter than r's buffer come whole,
// so a marker line is never split: give it a buffer well above the
// marker's length.
func (p ShellProgram) Read(r *bufio.Reader, out io.Writer, limit int64) (status int, cut int64, err error) {
	var relayed int64
	emit := func(b []byte) {
		if n := min(int64(len(b)), limit-relayed); n > 0 {
			out.Write(b[:n])
			relayed += n
			b = b[n:]
		}
		cut += int64(len(b))
	}
	begun := false
	pendingNL := false // a newline held back: it may be the one before the status line
	lineStart := true
	for {
		chunk, err := r.ReadSlice('\n')
		if len(chunk) > 0 {
			complete := chunk[len(chunk)-1] == '\n'
			if lineStart && complete {
				line := string(bytes.TrimRight(chunk, "\r\n"))
				switch {
				case !begun:
					begun = line == p.begin
					chunk = nil
				case strings.HasPrefix(line, p.end):
					st := line[len(p.end):]
					switch st {
					case "garbled":
						return 0, cut, ErrGarbled
					case "nohelper":
						return 0, cut, ErrNoHelper
					}
					n, aerr := strconv.Atoi(st)
					if aerr != nil {
						return 0, cut, fmt.Errorf("bad status line %q", line)
					}
					return n, cut, nil
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
			return 0, cut, err
		}
	}
}
