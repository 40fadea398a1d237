package qemu

import (
	"bytes"
	"io"
	"strings"
	"sync"

	"github.com/vmnet/vmnet/images/guest"
)

const maxLine = 4096

// console consumes the guest's serial output: it copies the raw bytes to
// the log and tee writers, keeps the last lines, and signals the markers.
type console struct {
	mu       sync.Mutex
	ring     []string
	next     int
	full     bool
	partial  []byte
	out      []io.Writer
	ready    chan struct{}
	warm     chan struct{} // closed when guest.WarmMarker was seen
	gotWarm  bool
	exited   chan struct{} // closed when guest.ExitMarker was seen
	status   int           // of the last exit marker
	nonce    string        // the vmnet.nonce the guest was given, if any
	done     chan struct{} // closed when the console stream ended
	gotReady bool
	gotExit  bool
	acks     chan struct{} // a token per exit marker with nonce, for VM.answerExits
	errs     []string      // VMNET-ERROR lines
	failed   chan struct{} // closed at the first VMNET-ERROR line

	cmu    sync.Mutex
	client io.Writer // an attached interactive console (VM.AttachConsole), or nil
}

func newConsole(lines int, out ...io.Writer) *console {
	c := &console{
		ring:   make([]string, lines),
		ready:  make(chan struct{}),
		warm:   make(chan struct{}),
		exited: make(chan struct{}),
		acks:   make(chan struct{}, 1),
		done:   make(chan struct{}),
		failed: make(chan struct{}),
	}
	for _, w := range out {
		if w != nil {
			c.out = append(c.out, w)
		}
	}
	return c
}

// Write takes console bytes in any chunking.
func (c *console) Write(p []byte) (int, error) {
	for i, w := range c.out {
		if w == nil {
			continue
		}
		if _, err := w.Write(p); err != nil {
			c.out[i] = nil // a broken log or tee must not stop the console
		}
	}
	c.cmu.Lock()
	if c.client != nil {
		if _, err := c.client.Write(p); err != nil {
			c.client = nil // a user who went away must not stop the console
		}
	}
	c.cmu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	data := p
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			room := maxLine - len(c.partial)
			if room > 0 {
				c.partial = append(c.partial, data[:min(room, len(data))]...)
			}
			break
		}
		room := maxLine - len(c.partial)
		c.partial = append(c.partial, data[:min(room, i)]...)
		c.line(string(c.partial))
		c.partial = c.partial[:0]
		data = data[i+1:]
	}
	return len(p), nil
}

// flush ends the stream, keeping an unterminated last line.
func (c *console) flush() {
	c.mu.Lock()
	if len(c.partial) > 0 {
		c.line(string(c.partial))
		c.partial = nil
	}
	c.mu.Unlock()
}

func (c *console) line(l string) {
	l = strings.TrimRight(l, "\r")
	c.ring[c.next] = l
	c.next++
	if c.next == len(c.ring) {
		c.next, c.full = 0, true
	}
	// Markers are whole lines (the image contract), so command output that
	// merely mentions them does not count.
	m := strings.TrimSpace(l)
	switch {
	case m == guest.ReadyMarker:
		if !c.gotReady {
			c.gotReady = true
			close(c.ready)
		}
	case m == guest.WarmMarker:
		if !c.gotWarm {
			c.gotWarm = true
			close(c.warm)
		}
	case strings.HasPrefix(m, guest.ErrorMarker):
		if len(c.errs) == 0 {
			close(c.failed)
		}
		if len(c.errs) < 20 {
			c.errs = append(c.errs, m)
		}
	default:
		// The last marker wins: a command can print a marker line (and
		// read the nonce from /proc/cmdline) before it fails, but /init
		// prints the real one after the command and its children are
		// gone (see package images).
		if st, ok := guest.ParseExit(m, c.nonce); ok {
			c.status = st
			if c.nonce != "" {
				select {
				case c.acks <- struct{}{}:
				default: // an answer is on its way already
				}
			}
			if !c.gotExit {
				c.gotExit = true
				close(c.exited)
			}
		}
	}
}

// exitStatus is the status of the last exit marker.
func (c *console) exitStatus() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status
}

// guestErrors returns the guest's VMNET-ERROR lines.
func (c *console) guestErrors() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.errs...)
}

// tail returns up to n of the last lines, oldest first.
func (c *console) tail(n int) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var all []string
	if c.full {
		all = append(all, c.ring[c.next:]...)
	}
	all = append(all, c.ring[:c.next]...)
	if n >= 0 && len(all) > n {
		all = all[len(all)-n:]
	}
	return all
}

// tailText formats the last lines for an error message.
func (c *console) tailText(n int) string {
	t := c.tail(n)
	if len(t) == 0 {
		return "(no console output)"
	}
	return "\n\t" + strings.Join(t, "\n\t")
}

// ringBuffer keeps the last bytes written to it (QEMU's stderr).
type ringBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (r *ringBuffer) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.b = append(r.b, p...)
	if len(r.b) > r.max {
		r.b = append(r.b[:0], r.b[len(r.b)-r.max:]...)
	}
	return len(p), nil
}

func (r *ringBuffer) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.TrimSpace(string(r.b))
}
