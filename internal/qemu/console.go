package qemu

import (
	"bytes"
	"io"
	"strconv"
	"strings"
	"sync"
)

// Markers the guest prints on its console (see the images package).
const (
	ReadyMarker = "VMNET-READY"
	ExitMarker  = "VMNET-EXIT="
	ErrorMarker = "VMNET-ERROR:"
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
	exited   chan struct{} // closed when ExitMarker was seen
	status   int
	done     chan struct{} // closed when the console stream ended
	gotReady bool
	gotExit  bool
	errs     []string      // VMNET-ERROR lines
	failed   chan struct{} // closed at the first VMNET-ERROR line
}

func newConsole(lines int, out ...io.Writer) *console {
	c := &console{
		ring:   make([]string, lines),
		ready:  make(chan struct{}),
		exited: make(chan struct{}),
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
	case m == ReadyMarker:
		if !c.gotReady {
			c.gotReady = true
			close(c.ready)
		}
	case strings.HasPrefix(m, ErrorMarker):
		if len(c.errs) == 0 {
			close(c.failed)
		}
		if len(c.errs) < 20 {
			c.errs = append(c.errs, m)
		}
	case !c.gotExit:
		if st, ok := parseExit(m); ok {
			c.gotExit, c.status = true, st
			close(c.exited)
		}
	}
}

// parseExit parses a "VMNET-EXIT=<n>" line.
func parseExit(l string) (int, bool) {
	s, ok := strings.CutPrefix(l, ExitMarker)
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, false
	}
	return n, true
}

// errors returns the guest's VMNET-ERROR lines.
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
