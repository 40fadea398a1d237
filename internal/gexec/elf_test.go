package gexec_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmnet/vmnet/internal/gexec"
	"github.com/vmnet/vmnet/internal/testenv"
)

// The host's own programs are the oracle: coreutils are dynamic PIEs,
// busybox-static is static.
func TestCheckStatic(t *testing.T) {
	hostOnly(t)
	dyn := testenv.RequireProgram(t, "true")
	err := gexec.CheckStatic(dyn)
	if !errors.Is(err, gexec.ErrDynamic) {
		t.Fatalf("CheckStatic(%s) = %v, want ErrDynamic", dyn, err)
	}
	for _, want := range []string{dyn, "CGO_ENABLED=0", "/lib64/ld-linux-x86-64.so.2", "libc.so.6"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}

	static := staticProgram(t)
	if err := gexec.CheckStatic(static); err != nil {
		t.Errorf("CheckStatic(%s): %v", static, err)
	}

	dir := t.TempDir()
	script := filepath.Join(dir, "script")
	os.WriteFile(script, []byte("#!/bin/sh\necho hi\n"), 0o755)
	if err := gexec.CheckStatic(script); err != nil {
		t.Errorf("#! script refused: %v", err)
	}
	text := filepath.Join(dir, "text")
	os.WriteFile(text, []byte("hello world\n"), 0o755)
	if err := gexec.CheckStatic(text); err == nil || !strings.Contains(err.Error(), "neither an ELF executable nor a #! script") {
		t.Errorf("text file: %v", err)
	}
	if err := gexec.CheckStatic(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing file: %v", err)
	}
	if err := gexec.CheckStatic(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
}

// A cgo program built the usual way is refused before any guest boots.
func TestCheckStaticCgo(t *testing.T) {
	hostOnly(t)
	goTool := testenv.RequireProgram(t, "go")
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("no C compiler for a cgo build; TestCheckStatic covers dynamic binaries with the host's own")
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module c\ngo 1.22\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\n// int two(void) { return 2; }\nimport \"C\"\n\nfunc main() { println(C.two()) }\n"), 0o644)
	cmd := exec.Command(goTool, "build", "-o", "c", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	err := gexec.CheckStatic(filepath.Join(dir, "c"))
	if !errors.Is(err, gexec.ErrDynamic) || !strings.Contains(err.Error(), "build it with CGO_ENABLED=0") {
		t.Fatalf("cgo binary: %v", err)
	}
}
