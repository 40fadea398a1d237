package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"testing"
)

// privateRunEnv is set in the re-executed test binary.
const privateRunEnv = "VMNET_TEST_PRIVATE_RUN"

// PrivateRun runs the tests of a package in a private mount namespace
// with a fresh tmpfs over /run, so tests that create or remove lab state
// (/run/vmnet) or named namespaces (/run/netns) never touch the machine's
// real /run. Call it from TestMain before m.Run:
//
//	func TestMain(m *testing.M) { testenv.PrivateRun(); os.Exit(m.Run()) }
//
// As root it re-executes the test binary once under
// `unshare -m --propagation private` with `mount -t tmpfs tmpfs /run`,
// exits with that run's status and never returns; in the re-executed
// binary (marked by an environment variable holding the outer mount namespace) it makes /run/netns and
// returns. Without root it returns and the tests that need root skip (or
// fail under CI) as usual.
func PrivateRun() {
	if os.Getenv(privateRunEnv) != "" {
		if InPrivateRun() != nil {
			fmt.Fprintln(os.Stderr, "testenv: /run is not a private tmpfs although", privateRunEnv, "is set")
			os.Exit(2)
		}
		if err := os.MkdirAll("/run/netns", 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "testenv:", err)
			os.Exit(2)
		}
		return
	}
	if os.Geteuid() != 0 {
		return
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		if CI() {
			fmt.Fprintln(os.Stderr, "testenv: unshare (util-linux) is needed to give the tests a private /run")
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "testenv: unshare not found; running without a private /run is refused, tests are not run")
		os.Exit(2)
	}
	args := append([]string{"-m", "--propagation", "private", "/bin/sh", "-c",
		`mount -t tmpfs -o mode=0755 tmpfs /run && exec "$0" "$@"`, os.Args[0]}, os.Args[1:]...)
	cmd := exec.Command(unshare, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// The variable holds the mount namespace the tests must not run in.
	mnt, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv: private /run:", err)
		os.Exit(2)
	}
	cmd.Env = append(os.Environ(), privateRunEnv+"="+mnt)
	// If go test kills this process on a timeout, the tests go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT)
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "testenv: private /run:", err)
		os.Exit(2)
	}
	go func() {
		for s := range sigs {
			cmd.Process.Signal(s)
		}
	}()
	err = cmd.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
		os.Exit(0)
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		os.Exit(ee.ExitCode())
	default:
		fmt.Fprintln(os.Stderr, "testenv: private /run:", err)
		os.Exit(2)
	}
}

// InPrivateRun returns nil if the tests run as PrivateRun arranges: in a
// mount namespace other than the one they were started in, with a tmpfs
// on /run.
func InPrivateRun() error {
	outer := os.Getenv(privateRunEnv)
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return fmt.Errorf("mount namespace: %w", err)
	}
	if outer == "" || self == outer {
		return errors.New("tests run in the mount namespace they were started in")
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs("/run", &st); err != nil {
		return err
	}
	if st.Type != 0x01021994 { // TMPFS_MAGIC
		return errors.New("/run is not a tmpfs")
	}
	return nil
}

// RequirePrivateRun fails t unless it runs under PrivateRun: a test that
// removes state directories must never see the machine's real /run.
func RequirePrivateRun(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	if err := InPrivateRun(); err != nil {
		t.Fatalf("refusing to run against the real /run: %v (call testenv.PrivateRun from TestMain)", err)
	}
}
