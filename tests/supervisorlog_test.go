package tests

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/vmnet/vmnet/internal/lab"
	"github.com/vmnet/vmnet/internal/logcap"
	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/vmconfig"
)

// TestSupervisorLogCapped runs the supervisor the way `up --detach`
// starts it, on a supervisor.log that already holds more than the cap (a
// flood is slow to produce: the supervisor logs a line per step): its
// first line of output cuts the log to the cap, keeping the newest
// output, and says how much was dropped.
func TestSupervisorLogCapped(t *testing.T) {
	requireGuests(t)
	ns := testenv.NetNS(t)
	junk := filepath.Join(t.TempDir(), "not-a-kernel")
	os.WriteFile(junk, []byte("this is not a kernel\n"), 0o644)
	path, stateDir := writeLab(t, fmt.Sprintf(`
[[network]]
name = "lan"
[[vm]]
name = "bad"
accel = "tcg"
kernel = %q
  [[vm.nic]]
  network = "lan"
`, junk))
	// As `up --detach` does before it starts the supervisor: the state
	// directory is vmnet's, marked for this lab and namespace.
	testenv.Do(t, ns, func() error {
		cfg, err := vmconfig.Load(path)
		if err != nil {
			return err
		}
		cur, err := lab.CurrentNetNS()
		if err != nil {
			return err
		}
		return lab.ClaimStateDir(cfg, cur)
	})
	logPath := filepath.Join(stateDir, "supervisor.log")
	// As detach opens it.
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_RDWR|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	old := bytes.Repeat([]byte("an old line of an earlier flood\n"), (logcap.DefaultMax+logcap.DefaultMax/4)/32)
	log.Write(old)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := exec.Command(vmnetBin, "--netns", fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns)), "up", path, "--supervised")
	cmd.Stdout, cmd.Stderr, cmd.ExtraFiles = log, log, []*os.File{w}
	err = cmd.Run()
	w.Close()
	if err == nil {
		t.Fatal("the supervisor of a lab with a broken kernel succeeded")
	}
	// Through the descriptor: a failed up removes the state directory.
	b, _ := io.ReadAll(io.NewSectionReader(log, 0, 1<<30))
	if len(b) > logcap.DefaultMax {
		t.Fatalf("supervisor.log is %d bytes, over the %d byte cap", len(b), logcap.DefaultMax)
	}
	m := regexp.MustCompile(`^\[vmnet: (\d+) bytes of older output dropped`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("supervisor.log does not start with the dropped count: %q", b[:min(len(b), 200)])
	}
	if n, _ := strconv.Atoi(string(m[1])); n < len(old)-logcap.DefaultMax/2 {
		t.Errorf("log says %d bytes dropped of %d", n, len(old))
	}
	end := b[max(len(b)-4000, 0):]
	t.Logf("supervisor.log: %d bytes, ends:\n%s", len(b), end[max(len(end)-600, 0):])
	if !regexp.MustCompile(`vmnet: .*vm bad`).Match(end) {
		t.Errorf("supervisor.log does not end with the supervisor's error:\n%s", end)
	}
	onlyLoopback(t, ns)
}
