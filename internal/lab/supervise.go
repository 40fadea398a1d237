package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/vmconfig"
)

// VM states that Progress reports while a lab comes up.
const (
	VMWaiting = "waiting" // for a boot slot (Options.MaxBoots guests boot at once)
	VMBooting = "booting" // QEMU is starting or the guest is booting
	VMReady   = "ready"   // the guest said it is ready (or QEMU runs a kernel that cannot say)
	VMFailed  = "failed"  // the VM did not come up; Err says why
)

// Progress is a change of a VM's state while a lab comes up.
type Progress struct {
	VM      string
	State   string        // VMBooting, VMReady or VMFailed
	Elapsed time.Duration // since the lab started coming up
	Err     error         // with VMFailed
}

func (p Progress) String() string {
	s := fmt.Sprintf("vm %s: %s (%.1fs)", p.VM, p.State, p.Elapsed.Seconds())
	if p.Err != nil {
		s += ": " + p.Err.Error()
	}
	return s
}

// SuperviseOptions tune Supervise.
type SuperviseOptions struct {
	Options
	// ReadyTimeout is how long each guest may take to become ready.
	ReadyTimeout time.Duration
	// Ready, when set, learns once that the lab is up (nil) or why it
	// could not come up, before Supervise tears down what it made.
	Ready func(error)
}

// Supervise brings cfg up in the calling thread's network namespace and
// keeps it until ctx ends (SIGINT, SIGTERM, `vmnet down`), then tears it
// down. Only one supervisor of a lab runs at a time.
func Supervise(ctx context.Context, cfg *vmconfig.Lab, opts SuperviseOptions) (err error) {
	lock, err := lockState(cfg)
	if err != nil {
		return err
	}
	defer lock.Close()
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	start := time.Now()
	l, err := New(cfg, opts.Options)
	if err != nil {
		return err
	}
	defer l.Close()
	ready := func(err error) {
		if opts.Ready != nil {
			opts.Ready(err)
		}
	}
	if err := l.Up(ctx, opts.ReadyTimeout); err != nil {
		ready(err)
		return err
	}
	// The control socket answers before the lab is reported up, so that
	// `vmnet status` right after `up --detach` reaches the supervisor.
	ln, err := l.Listen()
	if err != nil {
		ready(err)
		tctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		return errors.Join(err, l.Teardown(tctx))
	}
	logf("lab %s is up in %.1fs (Ctrl-C or `vmnet down %s` tears it down)", cfg.Name, time.Since(start).Seconds(), cfg.Name)
	ready(nil)
	for _, vm := range cfg.VMs {
		if v := l.Running(vm.Name); v != nil {
			go func() {
				select {
				case <-v.Exited():
					logf("vm %s: QEMU exited; it is not restarted (the lab stays up until `vmnet down`)", vm.Name)
				case <-ctx.Done():
				}
			}()
		}
	}
	serr := l.Serve(ctx, ln)
	<-ctx.Done()
	logf("lab %s: tearing down", cfg.Name)
	tctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return errors.Join(serr, l.Teardown(tctx))
}

// lockState keeps a second supervisor of the same lab out for as long as
// the first one lives.
func lockState(cfg *vmconfig.Lab) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(cfg.StateDir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lab %s: lock: %w", cfg.Name, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("lab %s: another vmnet is bringing it up or supervising it (%w)", cfg.Name, err)
	}
	return f, nil
}

// The ready pipe between a detached supervisor and the `vmnet up
// --detach` that started it carries lines:
//
//	progress VM STATE MILLISECONDS [ERROR]
//	ok
//	error: MESSAGE
//
// The last line is "ok" or "error: ...".

// ReadyPipe is the supervisor's end of the ready pipe.
type ReadyPipe struct{ f *os.File }

// NewReadyPipe wraps the pipe the detaching vmnet passed (fd 3).
func NewReadyPipe(f *os.File) *ReadyPipe { return &ReadyPipe{f: f} }

// Progress sends a VM's state change.
func (r *ReadyPipe) Progress(p Progress) {
	line := fmt.Sprintf("progress %s %s %d", p.VM, p.State, p.Elapsed.Milliseconds())
	if p.Err != nil {
		line += " " + oneLine(p.Err.Error())
	}
	fmt.Fprintln(r.f, line)
}

// Ready sends the final answer and closes the pipe.
func (r *ReadyPipe) Ready(err error) {
	if err != nil {
		fmt.Fprintf(r.f, "error: %s\n", oneLine(err.Error()))
	} else {
		fmt.Fprintln(r.f, "ok")
	}
	r.f.Close()
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

// maxReadyBytes bounds what the detaching vmnet reads from the ready
// pipe: the supervisor's error may quote guest console lines.
const maxReadyBytes = 1 << 20

// SupervisorLog is the detached supervisor's log in a lab's state dir.
func SupervisorLog(cfg *vmconfig.Lab) string { return filepath.Join(cfg.StateDir, "supervisor.log") }

// Detach starts cmd (vmnet itself, as the supervisor of cfg) in a session
// of its own, with its output in the lab's supervisor.log and the ready
// pipe as fd 3, and waits until it reports the lab up or its error.
// Progress lines go to progress as they arrive. It returns the
// supervisor's pid.
func Detach(cfg *vmconfig.Lab, cmd *exec.Cmd, progress func(Progress)) (int, error) {
	logPath := SupervisorLog(cfg)
	// Read-write and appending: the supervisor caps it in place (logcap).
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_RDWR|os.O_TRUNC|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return 0, fmt.Errorf("lab %s: supervisor log: %w", cfg.Name, err)
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	cmd.Stdout, cmd.Stderr, cmd.ExtraFiles = logf, logf, []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// The supervisor starts where vmnet started and enters the lab's
	// namespace itself (--netns is among its arguments): started from
	// inside that namespace it could not fetch the test image.
	if err := netns.DoInitial(cmd.Start); err != nil {
		w.Close()
		r.Close()
		return 0, fmt.Errorf("lab %s: start supervisor: %w", cfg.Name, err)
	}
	w.Close()
	defer r.Close()
	go cmd.Wait() // reaps it only if it dies while we wait
	pid := cmd.Process.Pid
	br := bufio.NewReader(io.LimitReader(r, maxReadyBytes))
	for {
		line, rerr := br.ReadString('\n')
		line = strings.TrimSpace(line)
		switch {
		case line == "ok":
			return pid, nil
		case strings.HasPrefix(line, "error: "):
			msg := strings.TrimPrefix(line, "error: ")
			// A failed up has usually removed the state directory, and
			// the log with it, before it reports: name only a log that
			// is there to read.
			if _, err := os.Stat(logPath); err != nil {
				return pid, errors.New(msg)
			}
			return pid, fmt.Errorf("%s (log: %s)", msg, logPath)
		case strings.HasPrefix(line, "progress "):
			if p, ok := parseProgress(line); ok && progress != nil {
				progress(p)
			}
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) {
				return pid, rerr
			}
			return pid, fmt.Errorf("lab %s: the supervisor exited before the lab was up; its log %s ends:\n%s", cfg.Name, logPath, Tail(logPath, 15))
		}
	}
}

func parseProgress(line string) (Progress, bool) {
	f := strings.SplitN(line, " ", 5)
	if len(f) < 4 {
		return Progress{}, false
	}
	ms, err := strconv.ParseInt(f[3], 10, 64)
	if err != nil {
		return Progress{}, false
	}
	p := Progress{VM: f[1], State: f[2], Elapsed: time.Duration(ms) * time.Millisecond}
	if len(f) == 5 {
		p.Err = errors.New(f[4])
	}
	return p, true
}

// tailBytes bounds how much of a log Tail reads: the last lines of a
// capped log, not the whole of it.
const tailBytes = 64 << 10

// Tail returns the last n lines of the file at path.
func Tail(path string, n int) string {
	var b []byte
	if f, err := os.Open(path); err == nil {
		if st, err := f.Stat(); err == nil {
			off := max(st.Size()-tailBytes, 0)
			b, _ = io.ReadAll(io.NewSectionReader(f, off, tailBytes))
		}
		f.Close()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// PrepareUp claims cfg's state directory for this network namespace
// before a lab comes up. It returns the pid of the lab's supervisor when
// the lab is already up (nothing to do), and an error when a previous
// run did not finish cleanly.
func PrepareUp(cfg *vmconfig.Lab) (supervisor int, err error) {
	ns, err := CurrentNetNS()
	if err != nil {
		return 0, err
	}
	if err := ClaimStateDir(cfg, ns); err != nil {
		return 0, err
	}
	st, err := ReadState(cfg.StateDir)
	if err != nil {
		return 0, nil // no state: not up
	}
	if st.SupervisorAlive() {
		return st.Supervisor, nil
	}
	return 0, fmt.Errorf("lab %s: a previous run did not finish cleanly (supervisor %d is gone); run `vmnet down %s` first",
		cfg.Name, st.Supervisor, cfg.Name)
}
