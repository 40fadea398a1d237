package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// monitor wraps go-qemu's SocketMonitor, which has no timeouts: every call
// runs on a goroutine, and a call that outlives its context closes the
// connection (the next call reconnects; QEMU's QMP server accepts a new
// client once the old one is gone).
type monitor struct {
	path   string
	exited <-chan struct{} // closed when QEMU has exited

	mu      sync.Mutex
	mon     *qmp.SocketMonitor
	version string

	subMu sync.Mutex
	subs  map[*subscription]struct{}
}

type subscription struct {
	match func(qmp.Event) bool
	ch    chan qmp.Event
}

// errQEMUExited is returned by monitor calls once QEMU is gone.
var errQEMUExited = errors.New("QEMU has exited")

func newMonitor(path string, exited <-chan struct{}) *monitor {
	return &monitor{path: path, exited: exited, subs: map[*subscription]struct{}{}}
}

// connect dials the QMP socket, retrying until it appears, and negotiates
// capabilities; bounded by ctx.
func (m *monitor) connect(ctx context.Context) (*qmp.SocketMonitor, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mon != nil {
		return m.mon, nil
	}
	var mon *qmp.SocketMonitor
	var lastErr error
	for {
		select {
		case <-m.exited:
			return nil, errQEMUExited
		default:
		}
		var err error
		mon, err = qmp.NewSocketMonitor("unix", m.path, time.Second)
		if err == nil {
			break
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("QMP socket %s did not accept a connection: %w (last error: %v)", m.path, ctx.Err(), lastErr)
		case <-m.exited:
			return nil, errQEMUExited
		case <-time.After(20 * time.Millisecond):
		}
	}
	done := make(chan error, 1)
	go func() { done <- mon.Connect() }()
	select {
	case err := <-done:
		if err != nil {
			mon.Disconnect()
			return nil, fmt.Errorf("QMP handshake on %s: %w", m.path, err)
		}
	case <-ctx.Done():
		go mon.Disconnect()
		return nil, fmt.Errorf("QMP handshake on %s: %w", m.path, ctx.Err())
	case <-m.exited:
		go mon.Disconnect()
		return nil, errQEMUExited
	}
	events, err := mon.Events(ctx)
	if err != nil {
		mon.Disconnect()
		return nil, fmt.Errorf("QMP events: %w", err)
	}
	if mon.Version != nil {
		m.version = mon.Version.String()
	}
	m.mon = mon
	// go-qemu's reader blocks on an unread event, which would also block
	// command replies: always drain the event stream.
	go m.pump(mon, events)
	return mon, nil
}

func (m *monitor) pump(mon *qmp.SocketMonitor, events <-chan qmp.Event) {
	for ev := range events {
		m.subMu.Lock()
		for s := range m.subs {
			if s.match(ev) {
				select {
				case s.ch <- ev:
				default:
				}
			}
		}
		m.subMu.Unlock()
	}
	m.drop(mon)
}

// drop forgets mon (if still current) and closes it in the background.
func (m *monitor) drop(mon *qmp.SocketMonitor) {
	m.mu.Lock()
	if m.mon == mon {
		m.mon = nil
	}
	m.mu.Unlock()
	go mon.Disconnect()
}

// subscribe delivers matching events until cancel is called. Subscribe
// before sending the command whose event you wait for.
func (m *monitor) subscribe(match func(qmp.Event) bool) (<-chan qmp.Event, func()) {
	s := &subscription{match: match, ch: make(chan qmp.Event, 16)}
	m.subMu.Lock()
	m.subs[s] = struct{}{}
	m.subMu.Unlock()
	return s.ch, func() {
		m.subMu.Lock()
		delete(m.subs, s)
		m.subMu.Unlock()
	}
}

// run sends one command built as JSON (go-qemu's generated raw API cannot
// express fds, mq or vectors) and returns its "return" value. file, if not
// nil, travels with the command as SCM_RIGHTS (for getfd).
func (m *monitor) run(ctx context.Context, execute string, args any, file *os.File) (json.RawMessage, error) {
	mon, err := m.connect(ctx)
	if err != nil {
		return nil, err
	}
	cmd, err := json.Marshal(qmp.Command{Execute: execute, Args: args})
	if err != nil {
		return nil, fmt.Errorf("qmp %s: encode: %w", execute, err)
	}
	type reply struct {
		raw []byte
		err error
	}
	done := make(chan reply, 1)
	go func() {
		raw, err := mon.RunWithFile(cmd, file)
		done <- reply{raw, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("qmp %s: %w", execute, r.err)
		}
		var resp struct {
			Return json.RawMessage `json:"return"`
		}
		if err := json.Unmarshal(r.raw, &resp); err != nil {
			return nil, fmt.Errorf("qmp %s: decode reply %q: %w", execute, r.raw, err)
		}
		return resp.Return, nil
	case <-ctx.Done():
		m.drop(mon)
		return nil, fmt.Errorf("qmp %s: no reply: %w", execute, ctx.Err())
	}
}

func (m *monitor) close() {
	m.mu.Lock()
	mon := m.mon
	m.mon = nil
	m.mu.Unlock()
	if mon != nil {
		done := make(chan struct{})
		go func() { mon.Disconnect(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
		}
	}
}
