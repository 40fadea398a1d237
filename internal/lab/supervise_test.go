package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmnet/vmnet/images"
	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/vmconfig"
)

// readyLines is what a supervisor's ReadyPipe writes for progress and
// then ready(err), captured from a real file.
func readyLines(t *testing.T, progress []Progress, ready error) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ready")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	r := NewReadyPipe(f)
	for _, p := range progress {
		r.Progress(p)
	}
	r.Ready(ready) // closes f
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestDetachStreamsProgress (issue 15, progress): `up --detach` hands
// the supervisor's VM states to its caller as they arrive and returns
// on "ok"; an error or an early exit comes back naming the log. The
// supervisor here is a real process writing ReadyPipe's lines to fd 3.
func TestDetachStreamsProgress(t *testing.T) {
	sent := []Progress{
		{VM: "a", State: VMBooting, Elapsed: 20 * time.Millisecond},
		{VM: "b", State: VMBooting, Elapsed: 30 * time.Millisecond},
		{VM: "a", State: VMReady, Elapsed: 41500 * time.Millisecond},
		{VM: "b", State: VMFailed, Elapsed: 90 * time.Second, Err: errors.New("vm b: not ready after 1m30s;\nconsole says: panic")},
	}
	for _, c := range []struct {
		name   string
		script string
		ready  error
		want   string // in the error; "" for success
	}{
		{"ok", "", nil, ""},
		{"error", "", errors.New("vm b: boom"), "vm b: boom (log: "},
		{"exit", "echo the supervisor died here; exit 3", nil, "the supervisor exited before the lab was up"},
		// A failed up removes its state directory, log included, before
		// it reports: the error must not send the user to a missing file.
		{"log-removed", "rm -f supervisor.log; echo 'error: vm b: boom' >&3", nil, "vm b: boom"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := &vmconfig.Lab{Name: "p", StateDir: t.TempDir()}
			lines := filepath.Join(t.TempDir(), "lines")
			script := c.script
			if script == "" {
				if err := os.WriteFile(lines, []byte(readyLines(t, sent, c.ready)), 0o600); err != nil {
					t.Fatal(err)
				}
				script = "while read -r l; do echo \"$l\" >&3; sleep 0.05; done < " + lines + "; echo supervising"
			}
			var mu sync.Mutex
			var got []Progress
			cmd := exec.Command("/bin/sh", "-c", script)
			cmd.Dir = cfg.StateDir
			pid, err := Detach(cfg, cmd, func(p Progress) {
				mu.Lock()
				got = append(got, p)
				mu.Unlock()
			})
			if pid <= 0 {
				t.Errorf("pid %d", pid)
			}
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("Detach: %v", err)
			case c.name == "log-removed":
				if err == nil || err.Error() != c.want {
					t.Fatalf("Detach: %v; want exactly %q, naming no removed log", err, c.want)
				}
				return
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), SupervisorLog(cfg))):
				t.Fatalf("Detach: %v; want an error with %q naming %s", err, c.want, SupervisorLog(cfg))
			}
			if c.name == "exit" {
				if !strings.Contains(err.Error(), "the supervisor died here") {
					t.Errorf("the error does not quote the log's tail: %v", err)
				}
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if len(got) != len(sent) {
				t.Fatalf("got %d progress lines, want %d: %v", len(got), len(sent), got)
			}
			for i := range sent {
				w, g := sent[i], got[i]
				if g.VM != w.VM || g.State != w.State || g.Elapsed != w.Elapsed || (w.Err == nil) != (g.Err == nil) {
					t.Errorf("progress %d: got %v, want %v", i, g, w)
				}
			}
			if e := got[3].Err.Error(); e != "vm b: not ready after 1m30s; console says: panic" {
				t.Errorf("error on one line: %q", e)
			}
			if s := got[2].String(); s != "vm a: ready (41.5s)" {
				t.Errorf("progress reads %q", s)
			}
		})
	}
}

// TestUpReportsFailedVM: Up reports each VM as booting and then, when
// it cannot start, as failed with the reason, before it tears down.
func TestUpReportsFailedVM(t *testing.T) {
	testenv.RequirePrivateRun(t)
	ns := testenv.NetNS(t)
	cfg := labOf(t, `[lab]
name = "prog"
[[network]]
name = "n"
[[vm]]
name = "v"
kernel = "/nonexistent/vmlinuz"
  [[vm.nic]]
  network = "n"
`)
	var mu sync.Mutex
	var got []Progress
	testenv.Do(t, ns, func() error {
		l, err := New(cfg, Options{RunDir: t.TempDir(), Progress: func(p Progress) {
			mu.Lock()
			got = append(got, p)
			mu.Unlock()
		}})
		if err != nil {
			return err
		}
		defer l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := l.Up(ctx, 30*time.Second); err == nil {
			t.Error("Up of a VM without a kernel succeeded")
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || got[0].VM != "v" || got[0].State != VMBooting || got[1].State != VMFailed || got[1].Err == nil ||
		got[1].Elapsed < got[0].Elapsed {
		t.Fatalf("progress %v; want v booting, then v failed with the reason", got)
	}
	t.Logf("%v", got)
}

// TestMaxBoots: with MaxBoots 1 the guests of a lab start one at a time:
// the others report that they wait for a slot, and at no time do two
// boot at once. (Guests given a kernel are ready once QEMU runs, which
// keeps the test short.)
func TestMaxBoots(t *testing.T) {
	testenv.RequirePrivateRun(t)
	testenv.RequireRoot(t)
	testenv.RequireProgram(t, "qemu-system-x86_64")
	img, err := images.Ensure(context.Background(), images.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ns := testenv.NetNS(t)
	var body strings.Builder
	fmt.Fprintf(&body, "[lab]\nname = \"mb\"\nstate_dir = %q\n", filepath.Join(t.TempDir(), "state"))
	for _, v := range []string{"a", "b", "c"} {
		fmt.Fprintf(&body, "[[vm]]\nname = %q\naccel = \"tcg\"\nkernel = %q\ninitrd = %q\n", v, img.Kernel, img.Initrd)
	}
	cfg := labOf(t, body.String())
	var mu sync.Mutex
	var got []Progress
	testenv.Do(t, ns, func() error {
		l, err := New(cfg, Options{RunDir: t.TempDir(), MaxBoots: 1, Progress: func(p Progress) {
			mu.Lock()
			got = append(got, p)
			mu.Unlock()
		}})
		if err != nil {
			return err
		}
		defer l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		uerr := l.Up(ctx, time.Minute)
		tctx, tcancel := context.WithTimeout(context.Background(), time.Minute)
		defer tcancel()
		return errors.Join(uerr, l.Teardown(tctx))
	})
	mu.Lock()
	defer mu.Unlock()
	booting, most, waited := 0, 0, map[string]bool{}
	for _, p := range got {
		switch p.State {
		case VMWaiting:
			waited[p.VM] = true
		case VMBooting:
			booting++
		case VMReady, VMFailed:
			booting--
		}
		most = max(most, booting)
	}
	if most != 1 || len(waited) != 2 || booting != 0 {
		t.Fatalf("progress %v: %d guests booted at once (want 1), %d waited for a slot (want 2)", got, most, len(waited))
	}
}
