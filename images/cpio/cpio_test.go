package cpio_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmnet/vmnet/images/cpio"
	"github.com/vmnet/vmnet/internal/testenv"
)

// GNU cpio, an independent reader, must list and extract what we wrote.
func TestGNUCpioReadsArchive(t *testing.T) {
	prog := testenv.RequireProgram(t, "cpio")
	var b bytes.Buffer
	w := cpio.NewWriter(&b)
	w.Dir("etc", 0o755)
	w.File("etc/hello", 0o644, []byte("hello\n"))
	w.File("/odd", 0o600, []byte("abc")) // leading slash dropped, odd length padded
	w.Symlink("etc/link", "/etc/hello")
	w.Dir("empty", 0o700)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if b.Len()%4 != 0 {
		t.Fatalf("archive length %d is not a multiple of 4", b.Len())
	}
	dir := t.TempDir()
	cmd := exec.Command(prog, "-idmv", "--no-absolute-filenames")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(b.Bytes())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio: %v\n%s", err, out)
	}
	for _, n := range []string{"etc", "etc/hello", "odd", "etc/link", "empty"} {
		if !strings.Contains(string(out), n+"\n") {
			t.Errorf("cpio did not list %s:\n%s", n, out)
		}
	}
	if data, err := os.ReadFile(filepath.Join(dir, "etc/hello")); err != nil || string(data) != "hello\n" {
		t.Errorf("etc/hello = %q, %v", data, err)
	}
	if data, err := os.ReadFile(filepath.Join(dir, "odd")); err != nil || string(data) != "abc" {
		t.Errorf("odd = %q, %v", data, err)
	}
	if target, err := os.Readlink(filepath.Join(dir, "etc/link")); err != nil || target != "/etc/hello" {
		t.Errorf("etc/link -> %q, %v", target, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "empty")); err != nil || st.Mode().Perm() != 0o700 || !st.IsDir() {
		t.Errorf("empty: %v %v", st, err)
	}
}

func TestRejectsBadNames(t *testing.T) {
	w := cpio.NewWriter(&bytes.Buffer{})
	for _, n := range []string{"", "/", "TRAILER!!!"} {
		if err := w.File(n, 0o644, nil); err == nil {
			t.Errorf("name %q accepted", n)
		}
	}
	w.Close()
	if err := w.File("late", 0o644, nil); err == nil {
		t.Error("entry after Close accepted")
	}
}
