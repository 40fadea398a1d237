package gexec_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmnet/vmnet/images"
	"github.com/vmnet/vmnet/internal/gexec"
	"github.com/vmnet/vmnet/internal/testenv"
)

// probe is the program the host tests run in the guest: it reports what
// it sees, driven by its arguments.
const probe = `package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	code := 0
	for _, a := range os.Args[1:] {
		switch {
		case strings.HasPrefix(a, "exit="):
			code, _ = strconv.Atoi(a[5:])
		case strings.HasPrefix(a, "sleep="):
			d, _ := time.ParseDuration(a[6:])
			fmt.Println("sleeping")
			time.Sleep(d)
		case a == "poweroff":
			// The guest goes away without /init's exit marker.
			fmt.Println("powering off")
			syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
		case a == "timers":
			// Whether the kernel runs high-resolution timers.
			tl, _ := os.ReadFile("/proc/timer_list")
			_, v, _ := strings.Cut(string(tl), ".hres_active")
			v, _, _ = strings.Cut(v, "\n")
			fmt.Printf("hres=%s\n", strings.Trim(v, " :"))
		case strings.HasPrefix(a, "programs="):
			// Whether host programs run: found on PATH, with their libraries.
			for _, p := range strings.Split(a[9:], ",") {
				out, err := exec.Command(p, "-V").CombinedOutput()
				v, _, _ := strings.Cut(string(out), "\n")
				fmt.Printf("program %s: %q %v\n", p, v, err)
			}
		}
	}
	wd, _ := os.Getwd()
	td, err := os.ReadFile("testdata/hello.txt")
	if err != nil {
		td = []byte(err.Error())
	}
	fmt.Printf("args=%q\nwd=%s\nuid=%d\nCI=%s\nguest=%s\nX=%s\ntestdata=%q\n", os.Args[1:], wd, os.Getuid(),
		os.Getenv("CI"), os.Getenv("VMNET_EXEC_GUEST"), os.Getenv("X"), td)
	fmt.Fprint(os.Stderr, "to stderr, no newline")
	os.Exit(code)
}
`

// tempDirs are shared across tests (built programs) and removed by TestMain.
var tempDirs []string

func TestMain(m *testing.M) {
	code := m.Run()
	for _, d := range tempDirs {
		os.RemoveAll(d)
	}
	os.Exit(code)
}

var (
	probeOnce sync.Once
	probePath string
	probeErr  error
)

// staticProgram builds probe with CGO_ENABLED=0 once per test binary.
func staticProgram(t testing.TB) string {
	t.Helper()
	goTool := testenv.RequireProgram(t, "go")
	probeOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gexec-probe-")
		if err != nil {
			probeErr = err
			return
		}
		tempDirs = append(tempDirs, dir)
		os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module probe\ngo 1.22\n"), 0o644)
		os.WriteFile(filepath.Join(dir, "main.go"), []byte(probe), 0o644)
		cmd := exec.Command(goTool, "build", "-o", "probe", ".")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			probeErr = errors.New(string(out))
		}
		probePath = filepath.Join(dir, "probe")
	})
	if probeErr != nil {
		t.Fatalf("build probe: %v", probeErr)
	}
	return probePath
}

// hostOnly skips inside a vmnet exec guest, which has no QEMU, no Go
// toolchain and a static busybox for every host program.
func hostOnly(t *testing.T) {
	t.Helper()
	if os.Getenv(gexec.GuestEnv) != "" {
		t.Skip("runs on the host, not inside a vmnet exec guest")
	}
}

// needGuest needs a host that can boot guests.
func needGuest(t *testing.T) {
	t.Helper()
	hostOnly(t)
	testenv.RequireProgram(t, "qemu-system-x86_64")
}

func run(t *testing.T, o gexec.Options) (gexec.Result, string, error) {
	t.Helper()
	var out, boot bytes.Buffer
	o.Stdout, o.Console = &out, &boot
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	res, err := gexec.Run(ctx, o)
	var miss *images.MissingError
	if errors.As(err, &miss) {
		testenv.Missing(t, "%v", err)
	}
	return res, out.String(), err
}

// The program gets its arguments, directory, testdata/ and environment;
// its output arrives byte for byte without boot messages or markers, and
// its exit status comes back.
func TestRun(t *testing.T) {
	needGuest(t)
	prog := staticProgram(t)
	dir := filepath.Join(t.TempDir(), "pkg dir")
	os.MkdirAll(filepath.Join(dir, "testdata", "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "testdata", "hello.txt"), []byte("hello from the host\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "testdata", "sub", "x"), []byte("x"), 0o644)
	t.Setenv("CI", "from-host")
	args := []string{"two words", "it's", "", "-test.v=true", "exit=3"}
	res, out, err := run(t, gexec.Options{Program: prog, Args: args, Dir: dir, Env: []string{"X=a'b c"}})
	if err != nil {
		t.Fatal(err)
	}
	want := `args=["two words" "it's" "" "-test.v=true" "exit=3"]` + "\n" +
		"wd=" + dir + "\nuid=0\nCI=from-host\nguest=1\nX=a'b c\n" +
		`testdata="hello from the host\n"` + "\n" +
		"to stderr, no newline"
	if out != want {
		t.Errorf("output\n%q\nwant\n%q", out, want)
	}
	if res.Status != 3 {
		t.Errorf("status %d, want 3", res.Status)
	}
	t.Logf("image+archive %.2fs, QEMU start to program start %.2fs, program start to QEMU exit %.2fs, QEMU start to exit %.2fs",
		res.Image.Seconds(), res.Boot.Seconds(), res.Run.Seconds(), res.Total.Seconds())
}

func TestRunRefusesDynamic(t *testing.T) {
	hostOnly(t)
	dyn := testenv.RequireProgram(t, "true")
	_, _, err := run(t, gexec.Options{Program: dyn})
	if !errors.Is(err, gexec.ErrDynamic) || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Fatalf("Run(%s) = %v, want ErrDynamic naming CGO_ENABLED=0", dyn, err)
	}
}

func TestRunTestdataTooBig(t *testing.T) {
	needGuest(t)
	prog := staticProgram(t)
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "testdata"), 0o755)
	f, err := os.Create(filepath.Join(dir, "testdata", "big"))
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(gexec.MaxTestdata + 1) // sparse: costs no disk
	f.Close()
	_, _, err = run(t, gexec.Options{Program: prog, Dir: dir})
	if err == nil || !strings.Contains(err.Error(), "testdata "+filepath.Join(dir, "testdata")) || !strings.Contains(err.Error(), "64 MiB") {
		t.Fatalf("err = %v, want a testdata size error", err)
	}
}

// A guest that is not ready in time and a program that does not finish in
// time both end in ErrTimeout with the last console lines.
func TestRunTimeouts(t *testing.T) {
	needGuest(t)
	prog := staticProgram(t)
	t.Run("boot", func(t *testing.T) {
		t.Parallel()
		// No guest kernel reaches /init within 300ms, even with KVM.
		_, out, err := run(t, gexec.Options{Program: prog, BootTimeout: 300 * time.Millisecond, Dir: t.TempDir()})
		if !errors.Is(err, gexec.ErrTimeout) || !strings.Contains(err.Error(), "no VMNET-READY within") ||
			!strings.Contains(err.Error(), "last console lines") {
			t.Fatalf("err = %v", err)
		}
		if out != "" {
			t.Errorf("program output %q from a guest that never got ready", out)
		}
	})
	// A guest that goes away without its exit marker is an error, not a
	// timeout (exit status 125 from vmnet exec, not 124).
	t.Run("no exit marker", func(t *testing.T) {
		t.Parallel()
		_, _, err := run(t, gexec.Options{Program: prog, Args: []string{"poweroff"}, Dir: t.TempDir()})
		if err == nil || errors.Is(err, gexec.ErrTimeout) || !strings.Contains(err.Error(), "without VMNET-EXIT") {
			t.Fatalf("err = %v, want QEMU's exit without the marker, not a timeout", err)
		}
	})
	t.Run("program", func(t *testing.T) {
		t.Parallel()
		// The timeout runs from VMNET-READY and covers unpacking and
		// starting the program, which took over 3 s on a host at load
		// 15-30 (the program had not printed yet): 20 s leaves room.
		_, out, err := run(t, gexec.Options{Program: prog, Args: []string{"sleep=10m"}, Timeout: 20 * time.Second, Dir: t.TempDir()})
		if !errors.Is(err, gexec.ErrTimeout) || !strings.Contains(err.Error(), "probe did not finish within 20s") ||
			!strings.Contains(err.Error(), "\tsleeping") {
			t.Fatalf("err = %v", err)
		}
		if out != "sleeping\n" {
			t.Errorf("output %q, want what the program printed before the timeout", out)
		}
	})
}

// BenchmarkRun measures one vmnet exec of a trivial static program: QEMU
// start to the program's start (kernel, /init, modules; for a warm boot
// the restore, the identity and the unpacking of the program's disk)
// and to QEMU's exit, cold and warm side by side, with the default
// modules and without any, on one and two vCPUs. A warm sub-benchmark
// reports its time to exit as a ratio to the cold one of its shape
// (warm/cold-exit), measured in the same run. Warm runs use a snapshot
// cache of their own, saved before the timer starts.
func BenchmarkRun(b *testing.B) {
	if os.Getenv(gexec.GuestEnv) != "" {
		b.Skip("runs on the host")
	}
	testenv.RequireProgram(b, "qemu-system-x86_64")
	prog := staticProgram(b)
	snaps := b.TempDir()
	coldExit := map[string]float64{}
	for _, mods := range []struct {
		name string
		list []string
	}{{"default-modules", nil}, {"no-modules", []string{}}} {
		for _, cpus := range []int{1, 2} {
			shape := mods.name + "/cpus=" + strconv.Itoa(cpus)
			for _, boot := range []string{"cold", "warm"} {
				b.Run(shape+"/"+boot, func(b *testing.B) {
					o := gexec.Options{Program: prog, Modules: mods.list, CPUs: cpus, Cold: boot == "cold", SnapshotDir: snaps}
					var warn syncBuf
					o.Warn = &warn
					if boot == "warm" {
						o.Dir = b.TempDir()
						if res, err := gexec.Run(context.Background(), o); err != nil || res.Status != 0 {
							b.Fatalf("saving run: status %d: %v", res.Status, err)
						}
						b.ResetTimer()
					}
					var started, total time.Duration
					for i := 0; i < b.N; i++ {
						o.Dir = b.TempDir()
						res, err := gexec.Run(context.Background(), o)
						if err != nil || res.Status != 0 {
							b.Fatalf("status %d: %v", res.Status, err)
						}
						started += res.Boot
						total += res.Total
					}
					if w := warn.String(); w != "" {
						b.Fatalf("fell back to a cold boot: %s", w)
					}
					exit := total.Seconds() / float64(b.N)
					b.ReportMetric(started.Seconds()/float64(b.N), "s-to-start")
					b.ReportMetric(exit, "s-to-exit")
					if boot == "cold" {
						coldExit[shape] = exit
					} else if c := coldExit[shape]; c > 0 {
						b.ReportMetric(exit/c, "warm/cold-exit")
					}
				})
			}
		}
	}
}

// Warm execs: from an empty snapshot cache the first run saves a
// snapshot and the second restores it; each gets its own program
// arguments and testdata (from the disk given at restore time, not from
// the saved guest), output and exit status.
func TestRunWarm(t *testing.T) {
	needGuest(t)
	prog := staticProgram(t)
	snaps := t.TempDir()
	var saved int
	for i, word := range []string{"first", "second"} {
		dir := filepath.Join(t.TempDir(), word)
		os.MkdirAll(filepath.Join(dir, "testdata"), 0o755)
		os.WriteFile(filepath.Join(dir, "testdata", "hello.txt"), []byte(word+"\n"), 0o644)
		var warn, log syncBuf
		programs := "programs=" + strings.Join(gexec.DefaultPrograms, ",")
		res, out, err := run(t, gexec.Options{Program: prog, Args: []string{word, "exit=" + strconv.Itoa(3+i), "timers", programs}, Dir: dir,
			SnapshotDir: snaps, Warn: &warn, Logf: log.logf})
		if err != nil {
			t.Fatalf("run %d: %v", i+1, err)
		}
		if w := warn.String(); w != "" {
			t.Errorf("run %d fell back to a cold boot: %s", i+1, w)
		}
		wantPrograms(t, fmt.Sprintf("run %d", i+1), out)
		if !strings.Contains(out, fmt.Sprintf("args=[%q %q %q %q]\n", word, "exit="+strconv.Itoa(3+i), "timers", programs)) ||
			!strings.Contains(out, "wd="+dir+"\n") || !strings.Contains(out, fmt.Sprintf("testdata=%q\n", word+"\n")) {
			t.Errorf("run %d: output\n%s", i+1, out)
		}
		if res.Status != 3+i {
			t.Errorf("run %d: status %d, want %d", i+1, res.Status, 3+i)
		}
		// TimerCmdline: a restored q35 guest runs its timers from the
		// tick, as a cold microvm guest does (TestRunColdLeavesNoSnapshot).
		if !strings.Contains(out, "hres=0\n") {
			t.Errorf("run %d: the guest runs high-resolution timers (want the tick only, see gexec.TimerCmdline); output\n%s", i+1, out)
		}
		if strings.Contains(log.String(), "save a snapshot") {
			saved++
			if i > 0 {
				t.Errorf("run %d saved a snapshot again: %s", i+1, log.String())
			}
		}
		t.Logf("run %d: QEMU start to program start %.2fs, QEMU start to exit %.2fs", i+1, res.Boot.Seconds(), res.Total.Seconds())
	}
	if saved != 1 {
		t.Errorf("%d snapshots saved, want 1", saved)
	}
	ents, _ := os.ReadDir(snaps)
	n := 0
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(snaps, e.Name(), "snapshot.json")); err == nil {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d complete snapshots in the cache, want 1", n)
	}
}

// wantPrograms checks that every default host program ran in the guest:
// the image carries ip, tc and bridge, the archive the others.
func wantPrograms(t *testing.T, what, out string) {
	t.Helper()
	for _, p := range gexec.DefaultPrograms {
		if !regexp.MustCompile(`(?m)^program ` + p + `: ".+" <nil>$`).MatchString(out) {
			t.Errorf("%s: %s did not run in the guest; output\n%s", what, p, out)
		}
	}
}

// --cold (Options.Cold) and microvm never touch the snapshot cache.
func TestRunColdLeavesNoSnapshot(t *testing.T) {
	needGuest(t)
	prog := staticProgram(t)
	snaps := t.TempDir()
	res, out, err := run(t, gexec.Options{Program: prog, Args: []string{"exit=5", "timers", "programs=" + strings.Join(gexec.DefaultPrograms, ",")},
		Dir: t.TempDir(), SnapshotDir: snaps, Cold: true})
	if err != nil {
		t.Fatal(err)
	}
	wantPrograms(t, "cold", out)
	if res.Status != 5 || !strings.Contains(out, "guest=1\n") || !strings.Contains(out, "hres=0\n") {
		t.Errorf("status %d, output\n%s", res.Status, out)
	}
	if ents, _ := os.ReadDir(snaps); len(ents) != 0 {
		t.Errorf("a cold run wrote into the snapshot cache: %v", ents)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuf) logf(format string, args ...any) { fmt.Fprintf(s, format+"\n", args...) }

// A warm boot that cannot happen (here: the snapshot cache is a file)
// says why and boots cold once; the program still runs.
func TestRunWarmFallsBackCold(t *testing.T) {
	needGuest(t)
	prog := staticProgram(t)
	notDir := filepath.Join(t.TempDir(), "cache")
	os.WriteFile(notDir, []byte("not a directory"), 0o644)
	var warn syncBuf
	res, out, err := run(t, gexec.Options{Program: prog, Args: []string{"exit=6"}, Dir: t.TempDir(), SnapshotDir: notDir, Warn: &warn})
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != 6 || !strings.Contains(out, "guest=1\n") {
		t.Errorf("status %d, output\n%s", res.Status, out)
	}
	if w := warn.String(); !strings.Contains(w, "warm boot failed, booting cold") || !strings.Contains(w, notDir) {
		t.Errorf("message %q does not say that it boots cold and why", w)
	}
}
