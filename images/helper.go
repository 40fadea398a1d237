package images

import (
	"context"
	"crypto/sha256"
	"embed"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
)

// helperSrc is the source of /usr/sbin/vmnet-helper (package
// images/helper): /init's network set-up over rtnetlink, and in a warm
// guest the resident helper that reads the identity, sets the clock and
// the network, so that a restored guest starts no program for them.
//
//go:embed helper/main.go helper/netlink.go
var helperSrc embed.FS

// helperPath is where the helper is in the image.
const helperPath = "usr/sbin/vmnet-helper"

// helperSum hashes the helper's source, for the image key: the binary is
// built only when an image is built.
func helperSum() [32]byte {
	h := sha256.New()
	names, _ := fs.Glob(helperSrc, "helper/*.go")
	sort.Strings(names)
	for _, n := range names {
		b, _ := helperSrc.ReadFile(n)
		fmt.Fprintf(h, "%s %x\n", n, sha256.Sum256(b))
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

// buildHelper compiles the helper for the guest (linux/amd64, static,
// standard library only: no network needed) with the host's Go
// toolchain and returns the binary.
func buildHelper(ctx context.Context) ([]byte, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		return nil, &MissingError{Tools: []string{"go"}, Packages: []string{"golang-go"}}
	}
	dir, err := os.MkdirTemp("", "vmnet-helper-")
	if err != nil {
		return nil, fmt.Errorf("vmnet image: %w", err)
	}
	defer os.RemoveAll(dir)
	src := filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		return nil, fmt.Errorf("vmnet image: %w", err)
	}
	names, _ := fs.Glob(helperSrc, "helper/*.go")
	for _, n := range names {
		b, _ := helperSrc.ReadFile(n)
		if err := os.WriteFile(filepath.Join(src, filepath.Base(n)), b, 0o644); err != nil {
			return nil, fmt.Errorf("vmnet image: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module vmnet-helper\n\ngo 1.19\n"), 0o644); err != nil {
		return nil, fmt.Errorf("vmnet image: %w", err)
	}
	out := filepath.Join(dir, "vmnet-helper")
	cmd := exec.CommandContext(ctx, gobin, "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", out, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=", "GOWORK=off", "GOTOOLCHAIN=local")
	if os.Getenv("GOCACHE") == "" && os.Getenv("HOME") == "" && os.Getenv("XDG_CACHE_HOME") == "" {
		cmd.Env = append(cmd.Env, "GOCACHE="+filepath.Join(dir, "gocache"))
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("vmnet image: build the guest helper with %s: %v\n%s", gobin, err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("vmnet image: %w", err)
	}
	return b, nil
}
