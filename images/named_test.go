package images

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vmnet/vmnet/vmconfig"
)

// TestNamesMatchConfig: every name a lab file accepts is one vmnet can
// build, and no more.
func TestNamesMatchConfig(t *testing.T) {
	if !slices.Equal(Names(), vmconfig.Images) {
		t.Fatalf("images.Names() = %q, vmconfig.Images = %q", Names(), vmconfig.Images)
	}
	if _, err := EnsureNamed(t.Context(), "debian-99", Options{CacheDir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "known: debian-12") {
		t.Errorf("unknown image: %v", err)
	}
}

// TestDebianKey: the key covers the archive state and the packages, so
// an apt-get update that changes the lists or a new kernel gives a new
// image, and equal inputs the same.
func TestDebianKey(t *testing.T) {
	k := debPkg{Name: "linux-image-6.1.0-56-amd64", Version: "6.1.192-2"}
	bb := debPkg{Name: "busybox", Version: "1:1.35.0-4"}
	lists := map[string]string{"a_InRelease": "11", "b_InRelease": "22"}
	base := debianKey(lists, k, bb)
	if debianKey(map[string]string{"b_InRelease": "22", "a_InRelease": "11"}, k, bb) != base {
		t.Error("key depends on map order")
	}
	if debianKey(map[string]string{"a_InRelease": "11", "b_InRelease": "23"}, k, bb) == base {
		t.Error("key ignores the package lists")
	}
	k2 := k
	k2.Version = "6.1.193-1"
	if debianKey(lists, k2, bb) == base {
		t.Error("key ignores the kernel")
	}
	if u := uuidFromKey(base); len(u) != 36 || strings.Count(u, "-") != 4 {
		t.Errorf("uuid %q", u)
	}
}

// TestList: complete images are listed with their name and the space
// they take; builds in progress and directories without a manifest not.
func TestList(t *testing.T) {
	cache := t.TempDir()
	mk := func(dir, manifest string, size int) {
		d := filepath.Join(cache, "images", dir)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if manifest != "" {
			os.WriteFile(filepath.Join(d, fileManifest), []byte(manifest), 0o644)
		}
		os.WriteFile(filepath.Join(d, "data"), make([]byte, size), 0o644)
	}
	mk("6.1.0-56-amd64-0123456789ab", `{"recipe":"vmnet-image-7","built":"2026-01-01T00:00:00Z"}`, 1<<20)
	mk("debian-12-0123456789ab", `{"name":"debian-12","built":"2026-01-02T00:00:00Z"}`, 2<<20)
	mk(".build-debian-12-x", `{"name":"debian-12"}`, 1)
	mk("half-built", "", 1)
	l, err := List(cache)
	if err != nil {
		t.Fatal(err)
	}
	if len(l) != 2 || l[0].Name != "test" || l[1].Name != "debian-12" || l[0].Bytes < 1<<20 || l[1].Bytes < 2<<20 {
		t.Fatalf("list %+v", l)
	}
	if l, err := List(filepath.Join(cache, "none")); err != nil || len(l) != 0 {
		t.Errorf("empty cache: %v %v", l, err)
	}
}
