package images

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vmnet/vmnet/internal/testenv"
)

// The first lines of `apt-cache show --no-all-versions linux-image-amd64`
// on Debian 12.
const metaShow = `Package: linux-image-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Installed-Size: 13
Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)
Filename: pool/updates/main/l/linux-signed-amd64/linux-image-amd64_6.1.192-2_amd64.deb
`

func TestParseMeta(t *testing.T) {
	k, err := parseMeta([]byte(metaShow))
	if err != nil {
		t.Fatal(err)
	}
	want := debPkg{Name: "linux-image-6.1.0-56-amd64", Version: "6.1.192-2", Release: "6.1.0-56-amd64",
		Filename: "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb"}
	if k != want {
		t.Fatalf("got %+v, want %+v", k, want)
	}
	if _, err := parseMeta([]byte("Package: linux-image-amd64\nDepends: linux-image-6.1.0-56-amd64\n")); err == nil {
		t.Fatal("a Depends without a pinned version was accepted")
	}
	if got := debFilename("busybox", "1:1.35.0-4", "amd64"); got != "busybox_1%3a1.35.0-4_amd64.deb" {
		t.Fatalf("debFilename = %s", got)
	}
}

func TestModuleClosure(t *testing.T) {
	md, err := readModDeps("testdata")
	if err != nil {
		t.Fatal(err)
	}
	files, builtin, err := md.closure("test", []string{"virtio_net", "virtio-pci", "ipv6", "crc32c_intel"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"kernel/crypto/crc32c-intel.ko",
		"kernel/drivers/net/net_failover.ko",
		"kernel/drivers/net/virtio_net.ko",
		"kernel/drivers/virtio/virtio.ko",
		"kernel/drivers/virtio/virtio_pci.ko",
		"kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
		"kernel/drivers/virtio/virtio_pci_modern_dev.ko",
		"kernel/drivers/virtio/virtio_ring.ko",
		"kernel/net/core/failover.ko",
	}
	if !reflect.DeepEqual(files, want) {
		t.Fatalf("closure\n got %q\nwant %q", files, want)
	}
	if !reflect.DeepEqual(builtin, []string{"ipv6"}) {
		t.Fatalf("builtin = %q", builtin)
	}
	if _, _, err := md.closure("test", []string{"sch_netem"}); err == nil || !strings.Contains(err.Error(), `"sch_netem"`) {
		t.Fatalf("unknown module: err = %v", err)
	}
	dep, err := md.subsetDep("testdata", []string{"kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko"})
	if err != nil {
		t.Fatal(err)
	}
	if want := "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\nkernel/net/core/failover.ko:\n"; string(dep) != want {
		t.Fatalf("subsetDep = %q", dep)
	}
}

// fakeBzImage wraps payload the way arch/x86/boot lays out a bzImage.
func fakeBzImage(payload []byte) []byte {
	bz := make([]byte, 2*512)
	bz[0x1f1] = 1 // setup_sects: payload_offset counts from byte 1024
	copy(bz[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(bz[0x206:], 0x20f)
	binary.LittleEndian.PutUint32(bz[0x248:], 16)
	binary.LittleEndian.PutUint32(bz[0x24c:], uint32(len(payload)+4))
	bz = append(bz, make([]byte, 16)...)
	bz = append(bz, payload...)
	return append(bz, 1, 2, 3, 4) // the uncompressed size
}

func TestExtractVmlinuxErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := extractVmlinux(ctx, make([]byte, 4096)); err == nil || !strings.Contains(err.Error(), "HdrS") {
		t.Fatalf("zeros: %v", err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("not an ELF file"))
	zw.Close()
	if _, err := extractVmlinux(ctx, fakeBzImage(gz.Bytes())); err == nil || !strings.Contains(err.Error(), "not ELF") {
		t.Fatalf("gzip payload with junk: %v", err)
	}
	if _, err := extractVmlinux(ctx, fakeBzImage([]byte("LZ4!LZ4!LZ4!"))); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Fatalf("unknown compression: %v", err)
	}
	// An ELF without the PVH note: the test binary itself.
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	gz.Reset()
	zw = gzip.NewWriter(&gz)
	zw.Write(self)
	zw.Close()
	if _, err := extractVmlinux(ctx, fakeBzImage(gz.Bytes())); err == nil || !strings.Contains(err.Error(), "PVH") {
		t.Fatalf("ELF without PVH note: %v", err)
	}
}

func TestMissingErrorNamesPackages(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	err := checkHostTools()
	me, ok := err.(*MissingError)
	if !ok {
		t.Fatalf("err = %v, want *MissingError", err)
	}
	for _, pkg := range []string{"apt", "dpkg", "kmod", "xz-utils", "iperf3", "ethtool", "iproute2", "libc-bin"} {
		if !strings.Contains(me.Error(), " "+pkg) {
			t.Errorf("%q does not name package %s", me.Error(), pkg)
		}
	}
}

// The scan of the guest programs and their libraries is kept in the
// cache directory and reused while nothing it depends on changed; the
// image key is the same either way.
func TestHostScanCache(t *testing.T) {
	for _, p := range guestPrograms {
		testenv.RequireProgram(t, p.name)
	}
	testenv.RequireProgram(t, "ldd")
	dir := t.TempDir()
	ctx := context.Background()
	first, err := scanHostFiles(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	mods := []string{"virtio_net"}
	want, _ := key(resolved{}, mods, first)
	fromCache := func(files []hostFile) bool {
		for _, f := range files {
			if f.data != nil {
				return false
			}
		}
		return true
	}
	if fromCache(first) {
		t.Fatal("the first scan came from an empty cache")
	}
	second, err := scanHostFiles(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if !fromCache(second) {
		t.Fatal("the second scan did not use the cache")
	}
	if got, _ := key(resolved{}, mods, second); got != want {
		t.Fatalf("image key from the cache %s, from the scan %s", got, want)
	}
	if len(second) != len(first) {
		t.Fatalf("%d files from the cache, %d scanned", len(second), len(first))
	}
	for i := range second {
		if err := second[i].load(); err != nil {
			t.Fatal(err)
		}
	}

	path := filepath.Join(dir, hostScanFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c hostScan
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	rescanned := func(what string, edit func(c *hostScan)) {
		t.Helper()
		cc := c
		cc.Deps = map[string]string{}
		for k, v := range c.Deps {
			cc.Deps[k] = v
		}
		cc.Files = append([]scannedFile(nil), c.Files...)
		edit(&cc)
		nb, _ := json.Marshal(cc)
		if err := os.WriteFile(path, nb, 0o644); err != nil {
			t.Fatal(err)
		}
		files, err := scanHostFiles(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		if fromCache(files) {
			t.Errorf("%s: the cache was used", what)
		}
		if got, _ := key(resolved{}, mods, files); got != want {
			t.Errorf("%s: image key %s, want %s", what, got, want)
		}
	}
	rescanned("a changed library", func(c *hostScan) {
		for p := range c.Deps {
			if strings.Contains(p, ".so") {
				c.Deps[p] = "size 1 mtime 0 ctime 0 inode 1 dev 1"
				break
			}
		}
	})
	rescanned("a changed loader cache", func(c *hostScan) { c.Deps["/etc/ld.so.cache"] = "absent" })
	rescanned("a file without identity", func(c *hostScan) { delete(c.Deps, c.Files[0].Src) })
	rescanned("a garbled checksum", func(c *hostScan) { c.Files[0].SHA256 = "zz" })
	t.Setenv("LD_LIBRARY_PATH", t.TempDir())
	if files, err := scanHostFiles(ctx, dir); err != nil || fromCache(files) {
		t.Errorf("another LD_LIBRARY_PATH: cache used %v, err %v", fromCache(files), err)
	}

	// A cached file whose contents changed since is refused when an
	// image is built from it, with its name.
	f := second[0]
	f.data = nil
	f.sum[0] ^= 1
	if err := f.load(); err == nil || !strings.Contains(err.Error(), f.src) {
		t.Errorf("changed file: %v", err)
	}
}

// CachedLibs answers from its cache while the program, its libraries
// and the loader's environment are unchanged, and asks ldd again when
// one changes.
func TestCachedLibs(t *testing.T) {
	dir, files := t.TempDir(), t.TempDir()
	prog, lib := filepath.Join(files, "prog"), filepath.Join(files, "lib.so")
	for _, f := range []string{prog, lib} {
		if err := os.WriteFile(f, []byte(f), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	calls := 0
	resolve := func() ([]string, error) { calls++; return []string{lib}, nil }
	check := func(what string, want int) {
		t.Helper()
		libs, err := CachedLibs(dir, prog, resolve)
		if err != nil || len(libs) != 1 || libs[0] != lib {
			t.Fatalf("%s: %v %v", what, libs, err)
		}
		if calls != want {
			t.Errorf("%s: ldd ran %d times, want %d", what, calls, want)
		}
	}
	check("first", 1)
	check("again", 1)
	if err := os.WriteFile(lib, []byte("a new version"), 0o755); err != nil {
		t.Fatal(err)
	}
	check("changed library", 2)
	check("again", 2)
	if err := os.Chtimes(prog, time.Now(), time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	check("changed program", 3)
	t.Setenv("LD_LIBRARY_PATH", files)
	check("another LD_LIBRARY_PATH", 4)
	check("again", 4)
}
