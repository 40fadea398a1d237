package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Event is one QMP event.
type Event struct {
	Event     string         `json:"event"`
	Data      map[string]any `json:"data"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// monitor is vmnet's QMP client. Every command carries an "id" that QEMU
// echoes in its reply, and a reply is delivered only to the command with
// that id: a reply that arrives after its caller gave up (a QEMU that was
// stopped, a slow migration) is dropped instead of being taken for the
// answer to the next command. Events go to subscribers. Every call is
// bounded by its context; a call that outlives it closes the connection
// (the next call reconnects; QEMU's QMP server accepts a new client once
// the old one is gone). Ids count on across connections, so not even a
// reply QEMU still sends on a new connection can match.
type monitor struct {
	path   string
	exited <-chan struct{} // closed when QEMU has exited

	mu   sync.Mutex
	conn *qmpConn

	nextID atomic.Uint64

	subMu sync.Mutex
	subs  map[*subscription]struct{}
}

type subscription struct {
	match func(Event) bool
	ch    chan Event
}

// errQEMUExited is returned by monitor calls once QEMU is gone.
var errQEMUExited = errors.New("QEMU has exited")

func newMonitor(path string, exited <-chan struct{}) *monitor {
	return &monitor{path: path, exited: exited, subs: map[*subscription]struct{}{}}
}

// qmpError is QMP's error reply.
type qmpError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *qmpError) Error() string { return e.Desc }

// qmpMessage is anything QEMU sends: the greeting, a reply or an event.
type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP"`
	Event  string          `json:"event"`
	ID     json.RawMessage `json:"id"`
	Return json.RawMessage `json:"return"`
	Error  *qmpError       `json:"error"`
}

type qmpReply struct {
	ret json.RawMessage
	err error
}

// qmpConn is one connection to QEMU's QMP socket.
type qmpConn struct {
	c   *net.UnixConn
	wmu sync.Mutex // one command on the wire at a time

	mu      sync.Mutex
	pending map[uint64]chan qmpReply
	dead    bool
	done    chan struct{} // closed when the reader has stopped
}

// connect dials the QMP socket, retrying until it appears, and negotiates
// capabilities; bounded by ctx.
func (m *monitor) connect(ctx context.Context) (*qmpConn, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.conn != nil {
		select {
		case <-m.conn.done:
			m.conn = nil
		default:
			return m.conn, nil
		}
	}
	var c *net.UnixConn
	var lastErr error
	for {
		select {
		case <-m.exited:
			return nil, errQEMUExited
		default:
		}
		var d net.Dialer
		nc, err := d.DialContext(ctx, "unix", m.path)
		if err == nil {
			c = nc.(*net.UnixConn)
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
	// The handshake is bounded by ctx and by QEMU's exit.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	shaken := make(chan struct{})
	defer close(shaken)
	go func() {
		select {
		case <-m.exited:
			c.SetDeadline(time.Unix(1, 0))
		case <-ctx.Done():
		case <-shaken:
		}
	}()
	r := bufio.NewReaderSize(c, 64<<10)
	dec := json.NewDecoder(r)
	var greeting qmpMessage
	if err := dec.Decode(&greeting); err != nil || greeting.QMP == nil {
		c.Close()
		return nil, m.handshakeErr(ctx, fmt.Errorf("no QMP greeting: %v", err))
	}
	qc := &qmpConn{c: c, pending: map[uint64]chan qmpReply{}, done: make(chan struct{})}
	go m.read(qc, dec)
	if _, err := qc.call(ctx, m.nextID.Add(1), "qmp_capabilities", nil, nil); err != nil {
		qc.close()
		return nil, m.handshakeErr(ctx, err)
	}
	c.SetDeadline(time.Time{})
	m.conn = qc
	return qc, nil
}

func (m *monitor) handshakeErr(ctx context.Context, err error) error {
	select {
	case <-m.exited:
		return errQEMUExited
	default:
	}
	if ctx.Err() != nil {
		return fmt.Errorf("QMP handshake on %s: %w", m.path, ctx.Err())
	}
	return fmt.Errorf("QMP handshake on %s: %w", m.path, err)
}

// read delivers replies to their callers by id and events to the
// subscribers until the connection ends. Messages of any other kind, and
// replies nobody waits for, are dropped.
func (m *monitor) read(qc *qmpConn, dec *json.Decoder) {
	defer qc.close()
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return
		}
		var msg qmpMessage
		if json.Unmarshal(raw, &msg) != nil {
			continue
		}
		if msg.Event != "" {
			var ev Event
			if json.Unmarshal(raw, &ev) == nil {
				m.deliver(ev)
			}
			continue
		}
		var id uint64
		if msg.ID == nil || json.Unmarshal(msg.ID, &id) != nil {
			continue // a reply to no command of ours
		}
		qc.mu.Lock()
		ch := qc.pending[id]
		delete(qc.pending, id)
		qc.mu.Unlock()
		if ch == nil {
			continue // its caller gave up
		}
		if msg.Error != nil {
			ch <- qmpReply{err: msg.Error}
		} else {
			ch <- qmpReply{ret: msg.Return}
		}
	}
}

func (m *monitor) deliver(ev Event) {
	m.subMu.Lock()
	defer m.subMu.Unlock()
	for s := range m.subs {
		if s.match(ev) {
			select {
			case s.ch <- ev:
			default:
			}
		}
	}
}

// close ends the connection; waiting callers get an error.
func (qc *qmpConn) close() {
	qc.mu.Lock()
	if qc.dead {
		qc.mu.Unlock()
		return
	}
	qc.dead = true
	for id, ch := range qc.pending {
		ch <- qmpReply{err: errors.New("QMP connection closed")}
		delete(qc.pending, id)
	}
	qc.mu.Unlock()
	qc.c.Close()
	close(qc.done)
}

// call sends one command with the given id and waits for its reply.
// file, if not nil, travels with the command as SCM_RIGHTS.
func (qc *qmpConn) call(ctx context.Context, id uint64, execute string, args any, file *os.File) (json.RawMessage, error) {
	cmd := struct {
		Execute string `json:"execute"`
		Args    any    `json:"arguments,omitempty"`
		ID      uint64 `json:"id"`
	}{execute, args, id}
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	ch := make(chan qmpReply, 1)
	qc.mu.Lock()
	if qc.dead {
		qc.mu.Unlock()
		return nil, errors.New("QMP connection closed")
	}
	qc.pending[id] = ch
	qc.mu.Unlock()
	forget := func() {
		qc.mu.Lock()
		delete(qc.pending, id)
		qc.mu.Unlock()
	}
	if err := qc.write(ctx, b, file); err != nil {
		forget()
		return nil, err
	}
	select {
	case r := <-ch:
		return r.ret, r.err
	case <-ctx.Done():
		forget()
		return nil, fmt.Errorf("no reply: %w", ctx.Err())
	}
}

func (qc *qmpConn) write(ctx context.Context, b []byte, file *os.File) error {
	qc.wmu.Lock()
	defer qc.wmu.Unlock()
	dl, _ := ctx.Deadline()
	qc.c.SetWriteDeadline(dl)
	if file == nil {
		_, err := qc.c.Write(b)
		return err
	}
	// The fd is read through SyscallConn, not File.Fd, which would switch
	// a file Go keeps non-blocking to blocking mode (see passable).
	rc, err := file.SyscallConn()
	if err != nil {
		return err
	}
	var werr error
	if err := rc.Control(func(fd uintptr) {
		_, _, werr = qc.c.WriteMsgUnix(b, unix.UnixRights(int(fd)), nil)
	}); err != nil {
		return err
	}
	return werr
}

// drop closes qc if it is still the current connection.
func (m *monitor) drop(qc *qmpConn) {
	m.mu.Lock()
	if m.conn == qc {
		m.conn = nil
	}
	m.mu.Unlock()
	qc.close()
}

// subscribe delivers matching events until cancel is called. Subscribe
// before sending the command whose event you wait for.
func (m *monitor) subscribe(match func(Event) bool) (<-chan Event, func()) {
	s := &subscription{match: match, ch: make(chan Event, 16)}
	m.subMu.Lock()
	m.subs[s] = struct{}{}
	m.subMu.Unlock()
	return s.ch, func() {
		m.subMu.Lock()
		delete(m.subs, s)
		m.subMu.Unlock()
	}
}

// run sends one command and returns its "return" value. args is encoded
// as JSON (typed structs for the commands vmnet uses often; go-qemu's
// generated API cannot express fds, mq or vectors). file, if not nil,
// travels with the command as SCM_RIGHTS (for getfd).
func (m *monitor) run(ctx context.Context, execute string, args any, file *os.File) (json.RawMessage, error) {
	qc, err := m.connect(ctx)
	if err != nil {
		return nil, err
	}
	ret, err := qc.call(ctx, m.nextID.Add(1), execute, args, file)
	if err != nil {
		var qe *qmpError
		if !errors.As(err, &qe) {
			// No reply (or a broken connection): start afresh next time.
			m.drop(qc)
		}
		return nil, fmt.Errorf("qmp %s: %w", execute, err)
	}
	return ret, nil
}

// runInto is run with the reply decoded into out (nil: ignored).
func (m *monitor) runInto(ctx context.Context, execute string, args, out any) error {
	raw, err := m.run(ctx, execute, args, nil)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("qmp %s: decode reply %s: %w", execute, raw, err)
	}
	return nil
}

func (m *monitor) close() {
	m.mu.Lock()
	qc := m.conn
	m.conn = nil
	m.mu.Unlock()
	if qc != nil {
		qc.close()
	}
}
