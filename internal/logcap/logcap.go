// Package logcap writes logs that cannot grow without bound: guest
// consoles and the lab supervisor's log live on /run, a tmpfs in RAM, and
// a guest that writes to its serial port without pause must not fill it.
//
// A File never exceeds its cap. When a write would take it past the cap,
// the file is rewritten in place with its newest half: a first line
// saying how many bytes of older output were dropped in total, then the
// newest output, starting at a line boundary when one is near. One file
// (no FILE.1) keeps `tail`, `less` and error messages that quote the end
// of the log simple; the cost is copying half the cap once per half cap
// written.
package logcap

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
)

// DefaultMax is the cap of console and supervisor logs.
const DefaultMax = 4 << 20

// MinMax is the smallest cap: room for the dropped-bytes line and some
// output.
const MinMax = 4 << 10

// lineSlack is how far past the cut a rewrite looks for a line start.
const lineSlack = 4 << 10

// File is a capped log file. It is safe for concurrent use.
type File struct {
	mu      sync.Mutex
	f       *os.File
	limit   int64
	size    int64 // bytes in the file
	head    int64 // length of the dropped-bytes line at the start, 0 if none
	dropped int64 // older output dropped so far
	err     error // sticky write error
	shared  bool  // others append too: size is read before each write
}

// Create creates (or truncates) path, which must not be a symbolic link,
// as a log of at most limit bytes (DefaultMax if limit is 0).
func Create(path string, limit int64, perm os.FileMode) (*File, error) {
	// O_NONBLOCK: a fifo planted in its place must not hang the open.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC|os.O_APPEND|syscall.O_NOFOLLOW|syscall.O_CLOEXEC|syscall.O_NONBLOCK, perm)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("log %s is a symlink: vmnet does not write through links (remove it)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("log %s: %w", path, err)
	}
	st, err := f.Stat()
	if err == nil && !st.Mode().IsRegular() {
		err = fmt.Errorf("log %s is not a regular file (%v): remove it", path, st.Mode().Type())
	}
	if err == nil {
		err = syscall.SetNonblock(int(f.Fd()), false)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return &File{f: f, limit: clamp(limit)}, nil
}

// New caps an open regular file, opened for reading and writing (its
// existing content counts). Use it for a file other writers share
// through their own descriptors, such as a supervisor's stderr that the
// Go runtime writes a crash report to: the file must then be opened with
// O_APPEND, so that their writes land at the end after a rewrite. Their
// bytes count towards the cap from the next Write on (each Write asks
// the kernel for the file's size, which suits a log of occasional lines).
func New(f *os.File, limit int64) (*File, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("log %s: %w", f.Name(), err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("log %s: not a regular file", f.Name())
	}
	return &File{f: f, limit: clamp(limit), size: st.Size(), shared: true}, nil
}

func clamp(limit int64) int64 {
	if limit == 0 {
		return DefaultMax
	}
	return max(limit, MinMax)
}

// Name is the file's path.
func (l *File) Name() string { return l.f.Name() }

// Dropped is how many bytes of older output were dropped so far.
func (l *File) Dropped() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dropped
}

// Write appends p, first dropping the oldest output if the file would
// pass its cap. It reports len(p) unless the file cannot be written.
func (l *File) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return 0, l.err
	}
	if l.shared {
		if st, err := l.f.Stat(); err == nil {
			l.size = st.Size()
		}
	}
	if l.size+int64(len(p)) > l.limit {
		if err := l.rewrite(p); err != nil {
			l.err = err
			return 0, err
		}
		return len(p), nil
	}
	n, err := l.f.Write(p)
	l.size += int64(n)
	if err != nil {
		l.err = fmt.Errorf("log %s: %w", l.f.Name(), err)
		return n, l.err
	}
	return n, nil
}

// rewrite replaces the file with the dropped-bytes line and the newest
// half of (its output followed by p).
func (l *File) rewrite(p []byte) error {
	keep := l.limit / 2
	old := l.size - l.head // output in the file
	if old < 0 {
		old = 0
	}
	// The newest keep bytes of old+p.
	want := keep
	var buf []byte
	if fromOld := want - int64(len(p)); fromOld > 0 {
		fromOld = min(fromOld, old)
		buf = make([]byte, fromOld, fromOld+int64(len(p)))
		if _, err := l.f.ReadAt(buf, l.size-fromOld); err != nil && err != io.EOF {
			return fmt.Errorf("log %s: %w", l.f.Name(), err)
		}
		buf = append(buf, p...)
	} else {
		buf = append([]byte(nil), p[int64(len(p))-want:]...)
	}
	total := old + int64(len(p))
	// Start at a line when one starts near the cut.
	if total > int64(len(buf)) {
		if i := bytes.IndexByte(buf[:min(len(buf), lineSlack)], '\n'); i >= 0 {
			buf = buf[i+1:]
		}
	}
	l.dropped += total - int64(len(buf))
	head := fmt.Appendf(nil, "[vmnet: %d bytes of older output dropped; the log keeps at most %d KiB]\n", l.dropped, l.limit>>10)
	if err := l.f.Truncate(0); err != nil {
		return fmt.Errorf("log %s: %w", l.f.Name(), err)
	}
	// With O_APPEND the write lands at the new end, offset 0, anyway.
	if _, err := l.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("log %s: %w", l.f.Name(), err)
	}
	n, err := l.f.Write(append(head, buf...))
	l.size, l.head = int64(n), int64(len(head))
	if err != nil {
		return fmt.Errorf("log %s: %w", l.f.Name(), err)
	}
	return nil
}

// Close closes the file.
func (l *File) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}
