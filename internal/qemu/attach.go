package qemu

import (
	"errors"
	"io"
)

// ErrConsoleAttached is returned by AttachConsole while another client is
// attached.
var ErrConsoleAttached = errors.New("another console session is attached")

// AttachConsole makes out receive what the guest writes to its serial
// console (ttyS0) from now on, besides the log, and returns in, whose
// writes reach the guest's console as typed input, and detach, which
// ends both. One client at a time: a second gets ErrConsoleAttached. A
// client whose writes fail is detached by itself, so a user who went
// away never holds up the console.
func (vm *VM) AttachConsole(out io.Writer) (in io.Writer, detach func(), err error) {
	c := vm.con
	c.cmu.Lock()
	defer c.cmu.Unlock()
	if c.client != nil {
		return nil, nil, ErrConsoleAttached
	}
	cl := &clientWriter{out}
	c.client = cl
	detach = func() {
		c.cmu.Lock()
		if c.client == io.Writer(cl) {
			c.client = nil
		}
		c.cmu.Unlock()
	}
	return vm.conIn, detach, nil
}

// clientWriter gives each attached client an identity of its own, so
// that a late detach never removes the next client.
type clientWriter struct{ w io.Writer }

func (c *clientWriter) Write(p []byte) (int, error) { return c.w.Write(p) }
