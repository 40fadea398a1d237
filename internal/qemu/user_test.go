package qemu

import (
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/vmnet/vmnet/internal/testenv"
)

const privateEtcEnv = "VMNET_TEST_PRIVATE_ETC"

// inPrivateEtc runs the calling (top-level) test again in a private mount
// namespace whose /etc is a copy, so that it may create users without
// touching the host's user database. It returns true in that child, where
// the test body runs, and false in the parent, which only reports.
func inPrivateEtc(t *testing.T) bool {
	t.Helper()
	if os.Getenv(privateEtcEnv) == "1" {
		if _, err := os.Stat("/etc/.vmnet-private-etc"); err != nil {
			t.Fatalf("%s set but /etc is not the private copy: %v", privateEtcEnv, err)
		}
		return true
	}
	testenv.RequireRoot(t)
	testenv.RequireProgram(t, "unshare")
	testenv.RequireProgram(t, "useradd")
	dir := t.TempDir()
	script := `set -e; cp -a /etc "$1/etc"; touch "$1/etc/.vmnet-private-etc"; mount --bind "$1/etc" /etc; shift; exec "$@"`
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", dir,
		os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), privateEtcEnv+"=1")
	out, err := cmd.CombinedOutput()
	t.Logf("in a private /etc:\n%s", out)
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("test in a private /etc: %v", err)
	}
	return false
}

// The dedicated user is created on first use, also when several vmnet
// processes (here goroutines, each running useradd) want it at once, and
// a numeric user gets its real group, never gid 0.
func TestResolveUser(t *testing.T) {
	if !inPrivateEtc(t) {
		return
	}
	t.Setenv(UserEnv, "")
	if _, err := user.Lookup(DefaultUser); err == nil {
		// --force: QEMUs of other tests may run as that user meanwhile.
		if out, err := exec.Command("userdel", "--force", DefaultUser).CombinedOutput(); err != nil {
			t.Fatalf("userdel in the private /etc: %v %s", err, out)
		}
	}
	const n = 6
	users := make([]*User, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			users[i], errs[i] = ResolveUser("")
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("concurrent ResolveUser %d: %v", i, errs[i])
		}
		if users[i].UID == 0 || users[i].GID == 0 || users[i].UID != users[0].UID || users[i].GID != users[0].GID {
			t.Errorf("ResolveUser %d: %+v, first %+v", i, users[i], users[0])
		}
	}
	b, _ := os.ReadFile("/etc/passwd")
	if c := strings.Count(string(b), "\n"+DefaultUser+":"); c != 1 {
		t.Errorf("%d passwd entries for %s", c, DefaultUser)
	}
	u, _ := user.Lookup(DefaultUser)
	if u == nil || u.HomeDir != "/nonexistent" || !strings.Contains(string(b), DefaultUser+":x:"+u.Uid+":"+u.Gid+":") {
		t.Errorf("user entry: %+v", u)
	}
	if !strings.Contains(string(b), ":/usr/sbin/nologin\n") {
		t.Errorf("no nologin shell")
	}

	// The name comes from the environment, the same way.
	t.Setenv(UserEnv, "vmnet-ci")
	if u, err := ResolveUser(""); err != nil || u.Name != "vmnet-ci" {
		t.Errorf("ResolveUser with %s=vmnet-ci: %+v %v", UserEnv, u, err)
	}

	// A user whose primary group is root's is refused.
	if out, err := exec.Command("useradd", "--system", "--gid", "0", "--no-create-home", "grp0").CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v %s", err, out)
	}
	if _, err := ResolveUser("grp0"); err == nil || !strings.Contains(err.Error(), "primary group 0") {
		t.Errorf("user with gid 0: %v", err)
	}
	g, _ := user.Lookup("grp0")
	if _, err := ResolveUser(g.Uid); err == nil || !strings.Contains(err.Error(), "primary group 0") {
		t.Errorf("uid %s with gid 0: %v", g.Uid, err)
	}

	// useradd failing: the error says what to do.
	t.Setenv(UserEnv, "vmnet-nouser")
	useradd = "/nonexistent/useradd"
	defer func() { useradd = "useradd" }()
	_, err := ResolveUser("")
	if err == nil || !strings.Contains(err.Error(), "could not be created") || !strings.Contains(err.Error(), "useradd --system") ||
		!strings.Contains(err.Error(), "[defaults]") {
		t.Errorf("useradd failing: %v", err)
	}
}

// Names and numbers resolve through the user database; nothing gets gid 0
// by default, unknown uids are refused, root is the opt-out.
func TestResolveNamedUsers(t *testing.T) {
	for _, root := range []string{"root", "0"} {
		if u, err := ResolveUser(root); u != nil || err != nil {
			t.Errorf("ResolveUser(%q) = %+v, %v; want nil (as the caller)", root, u, err)
		}
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		testenv.Missing(t, "user nobody: %v", err)
	}
	for _, name := range []string{"nobody", nobody.Uid} {
		u, err := ResolveUser(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if u.GID == 0 || nobody.Gid != strconv.Itoa(int(u.GID)) {
			t.Errorf("%s: gid %d, passwd says %s", name, u.GID, nobody.Gid)
		}
	}
	if _, err := ResolveUser("4000000000"); err == nil || !strings.Contains(err.Error(), "no entry") {
		t.Errorf("uid without passwd entry: %v", err)
	}
	if _, err := ResolveUser("vmnet-no-such-user"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("unknown named user: %v", err)
	}
}
