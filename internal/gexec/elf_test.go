package gexec_test

import (
	"errors"
	"os"
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
