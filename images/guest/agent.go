// Package guest holds the protocols vmnet speaks with its guests, as
// pure code (the host side's I/O stays with its callers): the test
// image's kernel parameters (Args, cmdline.go), console markers
// (markers.go), warm-boot identity (identity.go) and ttyS1 shell framing
// (shell.go), whose other end is images/init.sh (TestInitShellAgrees
// checks they agree); the QEMU guest agent (this file) and the
// cloud-init NoCloud seed. It imports nothing of vmnet's internal
// packages.
package guest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// AgentChannel is the virtio-serial port name qemu-guest-agent opens.
const AgentChannel = "org.qemu.guest_agent.0"

// Agent talks to qemu-guest-agent through the host end of its
// virtio-serial channel (a unix socket QEMU serves). One command at a
// time; every call resynchronises first (guest-sync-delimited), because
// requests written before the agent opened its port, or answers to a
// client that gave up, may still sit in the channel.
type Agent struct {
	Path string // the socket
	Name string // the VM, for errors

	mu   sync.Mutex
	conn net.Conn
	r    *bufio.Reader
}

// AgentError is an error the agent returned for a command.
type AgentError struct {
	Command, Class, Desc string
}

func (e *AgentError) Error() string {
	return fmt.Sprintf("guest agent: %s: %s (%s)", e.Command, e.Desc, e.Class)
}

// Close drops the connection.
func (a *Agent) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.closeLocked()
}

func (a *Agent) closeLocked() error {
	if a.conn == nil {
		return nil
	}
	err := a.conn.Close()
	a.conn, a.r = nil, nil
	return err
}

func (a *Agent) what() string {
	if a.Name != "" {
		return "vm " + a.Name + ": guest agent"
	}
	return "guest agent"
}

type request struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
}

type response struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

// call runs one command and decodes its return value into out (may be
// nil). The context bounds the whole exchange.
func (a *Agent) call(ctx context.Context, execute string, args, out any) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.conn == nil {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", a.Path)
		if err != nil {
			return fmt.Errorf("%s: connect %s: %w", a.what(), a.Path, err)
		}
		a.conn, a.r = c, bufio.NewReader(c)
	}
	conn := a.conn // the AfterFunc may run after closeLocked cleared a.conn
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	} else {
		conn.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	err := a.exchange(execute, args, out)
	if err != nil {
		var ae *AgentError
		if !errors.As(err, &ae) {
			a.closeLocked() // the stream may be out of step: start afresh next time
			if ctx.Err() != nil {
				err = fmt.Errorf("%w (%v)", err, ctx.Err())
			}
			return fmt.Errorf("%s: %s: %w", a.what(), execute, err)
		}
	}
	return err
}

// maxAnswer bounds one answer of the agent: the guest writes it, and vmnet
// (root) must not buffer whatever a hostile guest sends. qemu-guest-agent
// caps a command's captured output at 16 MiB, which base64 makes about
// 22 MiB.
const maxAnswer = 24 << 20

// errAnswerTooLong is a guest answer over maxAnswer.
var errAnswerTooLong = errors.New("the guest agent's answer is longer than vmnet accepts (24 MiB)")

// readUntil reads up to and including delim, keeping at most max bytes
// (0: keep none, only skip); a longer run is an error, not a growing
// buffer.
func readUntil(r *bufio.Reader, delim byte, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice(delim)
		if max > 0 {
			if len(line)+len(chunk) > max {
				return nil, errAnswerTooLong
			}
			line = append(line, chunk...)
		}
		if err != bufio.ErrBufferFull {
			return line, err
		}
	}
}

func (a *Agent) exchange(execute string, args, out any) error {
	// guest-sync-delimited: the agent answers with 0xFF before the
	// response, so everything older can be skipped up to that byte.
	var idb [4]byte
	rand.Read(idb[:])
	id := int64(binary.BigEndian.Uint32(idb[:]) >> 1)
	if err := a.send(request{"guest-sync-delimited", map[string]int64{"id": id}}); err != nil {
		return err
	}
	for {
		if _, err := readUntil(a.r, 0xff, 0); err != nil {
			return err
		}
		var got response
		line, err := readUntil(a.r, '\n', maxAnswer)
		if err != nil {
			return err
		}
		if json.Unmarshal(line, &got) != nil || got.Error != nil {
			continue
		}
		var n int64
		if json.Unmarshal(got.Return, &n) == nil && n == id {
			break
		}
	}
	if err := a.send(request{execute, args}); err != nil {
		return err
	}
	line, err := readUntil(a.r, '\n', maxAnswer)
	if err != nil {
		return err
	}
	var got response
	if err := json.Unmarshal(line, &got); err != nil {
		return fmt.Errorf("bad answer %q: %w", line, err)
	}
	if got.Error != nil {
		return &AgentError{Command: execute, Class: got.Error.Class, Desc: got.Error.Desc}
	}
	if out != nil {
		if err := json.Unmarshal(got.Return, out); err != nil {
			return fmt.Errorf("bad answer %q: %w", line, err)
		}
	}
	return nil
}

func (a *Agent) send(r request) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = a.conn.Write(append(b, '\n'))
	return err
}

// Ping is guest-ping: nil once the agent answers.
func (a *Agent) Ping(ctx context.Context) error {
	return a.call(ctx, "guest-ping", nil, nil)
}

// WaitReady pings until the agent answers or ctx ends, trying again every
// `every` (each try may take that long).
func (a *Agent) WaitReady(ctx context.Context, every time.Duration) error {
	for {
		tctx, cancel := context.WithTimeout(ctx, every)
		err := a.Ping(tctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ExecRequest is the argument of guest-exec.
type ExecRequest struct {
	Path          string   `json:"path"`
	Arg           []string `json:"arg,omitempty"`
	Env           []string `json:"env,omitempty"`
	InputData     string   `json:"input-data,omitempty"` // base64
	CaptureOutput bool     `json:"capture-output"`
}

// ExecStatus is the answer of guest-exec-status, with stdout and stderr
// decoded.
type ExecStatus struct {
	Exited       bool   `json:"exited"`
	ExitCode     int    `json:"exitcode"`
	Signal       int    `json:"signal"`
	OutData      string `json:"out-data"`
	ErrData      string `json:"err-data"`
	OutTruncated bool   `json:"out-truncated"`
	ErrTruncated bool   `json:"err-truncated"`
	Stdout       []byte `json:"-"`
	Stderr       []byte `json:"-"`
}

// Exec is guest-exec: starts a program and returns its pid.
func (a *Agent) Exec(ctx context.Context, req ExecRequest) (int, error) {
	var r struct {
		PID int `json:"pid"`
	}
	if err := a.call(ctx, "guest-exec", req, &r); err != nil {
		return 0, err
	}
	return r.PID, nil
}

// ExecStatus is guest-exec-status for pid.
func (a *Agent) ExecStatus(ctx context.Context, pid int) (ExecStatus, error) {
	var s ExecStatus
	if err := a.call(ctx, "guest-exec-status", map[string]int{"pid": pid}, &s); err != nil {
		return s, err
	}
	var err error
	if s.Stdout, err = base64.StdEncoding.DecodeString(s.OutData); err != nil {
		return s, fmt.Errorf("%s: guest-exec-status: stdout: %w", a.what(), err)
	}
	if s.Stderr, err = base64.StdEncoding.DecodeString(s.ErrData); err != nil {
		return s, fmt.Errorf("%s: guest-exec-status: stderr: %w", a.what(), err)
	}
	return s, nil
}

// Run runs a shell command (sh -c) in the guest and waits for it: its
// stdout, stderr and exit status. A command killed by a signal reports
// 128+signal, as a shell does.
func (a *Agent) Run(ctx context.Context, shellCmd string) (ExecStatus, error) {
	pid, err := a.Exec(ctx, ExecRequest{Path: "/bin/sh", Arg: []string{"-c", shellCmd}, CaptureOutput: true})
	if err != nil {
		return ExecStatus{}, err
	}
	wait := 20 * time.Millisecond
	for {
		s, err := a.ExecStatus(ctx, pid)
		if err != nil {
			return s, err
		}
		if s.Exited {
			if s.Signal != 0 && s.ExitCode == 0 {
				s.ExitCode = 128 + s.Signal
			}
			return s, nil
		}
		select {
		case <-ctx.Done():
			return s, fmt.Errorf("%s: command still running in the guest (pid %d): %w", a.what(), pid, ctx.Err())
		case <-time.After(wait):
		}
		if wait < 500*time.Millisecond {
			wait *= 2
		}
	}
}

// WriteFile pushes data into a file in the guest (created or truncated)
// with guest-file-open, -write and -close.
func (a *Agent) WriteFile(ctx context.Context, path string, data []byte) error {
	var h int
	if err := a.call(ctx, "guest-file-open", map[string]string{"path": path, "mode": "w"}, &h); err != nil {
		return err
	}
	const chunk = 48 << 10 // the agent's message limit is far above this
	for off := 0; off < len(data) || off == 0; off += chunk {
		end := min(off+chunk, len(data))
		var w struct {
			Count int  `json:"count"`
			EOF   bool `json:"eof"`
		}
		args := map[string]any{"handle": h, "buf-b64": base64.StdEncoding.EncodeToString(data[off:end])}
		if err := a.call(ctx, "guest-file-write", args, &w); err != nil {
			a.call(ctx, "guest-file-close", map[string]int{"handle": h}, nil)
			return err
		}
		if w.Count != end-off {
			a.call(ctx, "guest-file-close", map[string]int{"handle": h}, nil)
			return fmt.Errorf("%s: guest-file-write %s: wrote %d of %d bytes", a.what(), path, w.Count, end-off)
		}
		if end == len(data) {
			break
		}
	}
	return a.call(ctx, "guest-file-close", map[string]int{"handle": h}, nil)
}
