package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/images/cpio"
	"github.com/vmnet/vmnet/images/guest"
)

// recipeVersion changes whenever the Go side of the recipe changes what
// goes into an image; init.sh is hashed separately.
const recipeVersion = "vmnet-image-8"

//go:embed init.sh
var initScript []byte

// BootModules are loaded by /init at every boot (with their
// dependencies, from modules.dep): the virtio-net driver, the virtio disk
// driver (a lab's [[vm.disk]] tables are vda, vdb, ...) and both virtio
// transports, PCI for -M pc/q35 and MMIO for -M microvm.
var BootModules = []string{"virtio_pci", "virtio_mmio", "virtio_net", "virtio_blk"}

// PowerModules let the guest see the ACPI power button (QMP
// system_powerdown) as a key press, which busybox acpid turns into a clean
// poweroff: without them every stop waits out the powerdown grace and
// then quits QEMU. /init loads them where they apply (a machine without
// ACPI has no button) and does not count a failure as an error.
var PowerModules = []string{"button", "evdev"}

// powerButton is the handler busybox acpid runs for the power button: it
// looks it up as PWRF/00000080 under /etc/acpi (acpid's built-in tables).
// A command still running ends there: the run's exit marker says 143 (as
// for SIGTERM), which also ends the command's output for vmnet, before
// the kernel's power-off message.
const powerButton = `#!/bin/sh
# The ACPI power button: a clean poweroff, so QEMU exits at once.
# /init keeps the nonce in /run/vmnet.nonce (a restored guest gets it
# after boot, not on its command line).
n=$(cat /run/vmnet.nonce 2>/dev/null)
[ -z "$n" ] || printf '\n` + guest.ExitMarker + `143 %s\n' "$n" >/dev/console
sync
exec poweroff -f
`

// Options controls Ensure.
type Options struct {
	// CacheDir holds downloads and built images. Empty means
	// DefaultCacheDir().
	CacheDir string
	// Progress receives one line per build step with its duration. Nil
	// discards it.
	Progress io.Writer
	// Modules are extra kernel modules put into the image (with their
	// dependencies) so that a guest can load them with vmnet.modules= or
	// modprobe. Names as in lsmod ("8021q", "sch_netem"); '-' and '_'
	// are the same. Built-in modules are accepted and need nothing.
	Modules []string
}

// Image is a built guest image. All paths are absolute.
type Image struct {
	Dir              string
	Kernel           string // uncompressed ELF vmlinux, boots through QEMU's PVH entry
	KernelCompressed string // the Debian bzImage (vmlinuz)
	Initrd           string // initramfs: uncompressed newc cpio, length a multiple of 4
	KernelVersion    string // uname -r of the guest, e.g. 6.1.0-56-amd64
	KernelPackage    string // Debian package and version it came from
	Modules          []string
	// HostFiles are the host's files the image carries, by their host
	// paths: programs (in /usr/bin or /usr/sbin) and their libraries (at
	// the host's paths). The image's key hashes their contents, so the
	// image found for this host holds them as they are now.
	HostFiles []string
}

// manifest is written last into an image directory; its presence marks
// the image complete.
type manifest struct {
	Recipe        string            `json:"recipe"`
	Key           string            `json:"key"`
	BaseKey       string            `json:"base_key"` // key without the kernel, for offline fallback
	KernelPackage string            `json:"kernel_package"`
	KernelVersion string            `json:"kernel_version"`
	Release       string            `json:"release"`
	Modules       []string          `json:"modules"`
	Builtin       []string          `json:"builtin_modules,omitempty"`
	Busybox       string            `json:"busybox"`
	ModuleFiles   []string          `json:"module_files"`
	HostPackages  map[string]string `json:"host_packages"`
	HostFiles     []string          `json:"host_files"`
	Initrd        string            `json:"initrd"`
	Built         time.Time         `json:"built"`
	BuildSeconds  float64           `json:"build_seconds"`
}

const (
	fileVmlinux  = "vmlinux"
	fileVmlinuz  = "vmlinuz"
	fileInitrd   = "initramfs.cpio"
	fileManifest = "manifest.json"
)

// DefaultCacheDir is $VMNET_CACHE, else $XDG_CACHE_HOME/vmnet, else
// ~/.cache/vmnet.
func DefaultCacheDir() (string, error) {
	if d := os.Getenv("VMNET_CACHE"); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("vmnet image: no cache directory (set VMNET_CACHE): %w", err)
	}
	return filepath.Join(d, "vmnet"), nil
}

// progress prints build steps with their durations.
type progress struct{ w io.Writer }

func (p progress) printf(format string, args ...any) {
	fmt.Fprintf(p.w, "vmnet image: "+format+"\n", args...)
}

func (p progress) step(what string) func() {
	t := time.Now()
	return func() { p.printf("%-40s %6.2fs", what, time.Since(t).Seconds()) }
}

// hostFile is a host file copied into the image at the same path.
type hostFile struct {
	dst  string // path in the image, relative
	src  string
	mode uint32
	sum  [sha256.Size]byte // of data
	data []byte            // nil for a file from the scan cache until load
}

// guestPrograms are copied from the host with their shared libraries.
// iproute2 replaces busybox's ip (and adds tc and bridge) because tests
// configure veth, vxlan, netem and bridge VLANs, which busybox cannot.
var guestPrograms = []struct{ name, dst, pkg string }{
	{"iperf3", "/usr/bin/iperf3", "iperf3"},
	{"ethtool", "/usr/sbin/ethtool", "ethtool"},
	{"ip", "/usr/sbin/ip", "iproute2"},
	{"tc", "/usr/sbin/tc", "iproute2"},
	{"bridge", "/usr/sbin/bridge", "iproute2"},
}

// collectHostFiles reads the guestPrograms and their shared
// libraries from the host (Debian 12, the release the guest kernel is
// from).
// reading, if set, is called with each file's host path before it is read.
func collectHostFiles(ctx context.Context, reading func(src string)) ([]hostFile, error) {
	var files []hostFile
	seen := map[string]bool{}
	add := func(src, dst string, mode uint32) error {
		if seen[dst] {
			return nil
		}
		seen[dst] = true
		if reading != nil {
			reading(src)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("vmnet image: %w", err)
		}
		files = append(files, hostFile{dst: strings.TrimPrefix(dst, "/"), src: src, mode: mode, sum: sha256.Sum256(data), data: data})
		return nil
	}
	for _, b := range guestPrograms {
		src, err := exec.LookPath(b.name)
		if err != nil {
			return nil, &MissingError{Tools: []string{b.name}, Packages: []string{b.pkg}}
		}
		if err := add(src, b.dst, 0o755); err != nil {
			return nil, err
		}
		libs, err := sharedLibs(ctx, src)
		if err != nil {
			return nil, err
		}
		for _, l := range libs {
			if err := add(l, l, 0o755); err != nil {
				return nil, err
			}
		}
	}
	return files, nil
}

// key hashes every input of the image; base leaves out the downloaded
// packages (kernel, busybox).
func key(r resolved, modules []string, files []hostFile) (full, base string) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%x\nhelper %x\n", recipeVersion, sha256.Sum256(initScript), helperSum())
	fmt.Fprintf(h, "modules %s\n", strings.Join(modules, ","))
	for _, f := range files {
		fmt.Fprintf(h, "%s %o %x\n", f.dst, f.mode, f.sum)
	}
	base = hex.EncodeToString(h.Sum(nil))
	fmt.Fprintf(h, "kernel %s %s\nbusybox %s\n", r.Kernel.Name, r.Kernel.Version, r.Busybox.Version)
	full = hex.EncodeToString(h.Sum(nil))
	return full, base
}

// normModules returns the boot modules plus extra, normalized, sorted and
// deduplicated.
func normModules(extra []string) ([]string, error) {
	set := map[string]bool{}
	for _, m := range append(append(append([]string{}, BootModules...), PowerModules...), extra...) {
		m = strings.ReplaceAll(strings.TrimSpace(m), "-", "_")
		if m == "" || strings.ContainsAny(m, "/ ,.") {
			return nil, fmt.Errorf("vmnet image: invalid module name %q", m)
		}
		set[m] = true
	}
	var out []string
	for m := range set {
		out = append(out, m)
	}
	sort.Strings(out)
	return out, nil
}

// start is what every image build begins with: where progress goes and
// the absolute cache directory.
func (opts Options) start() (progress, string, error) {
	p := progress{opts.Progress}
	if p.w == nil {
		p.w = io.Discard
	}
	cache := opts.CacheDir
	if cache == "" {
		var err error
		if cache, err = DefaultCacheDir(); err != nil {
			return p, "", err
		}
	}
	cache, err := filepath.Abs(cache)
	return p, cache, err
}

// Ensure returns the guest image for the current Debian kernel, building
// it in opts.CacheDir unless an image with the same inputs is there.
func Ensure(ctx context.Context, opts Options) (Image, error) {
	p, cache, err := opts.start()
	if err != nil {
		return Image{}, err
	}
	modules, err := normModules(opts.Modules)
	if err != nil {
		return Image{}, err
	}
	if err := checkHostTools(); err != nil {
		return Image{}, err
	}
	done := p.step("read host programs and libraries")
	files, err := scanHostFiles(ctx, cache)
	if err != nil {
		return Image{}, err
	}
	done()
	imagesDir := filepath.Join(cache, "images")
	done = p.step("resolve packages (linux-image-amd64, busybox)")
	pkgs, kerr := resolveCached(ctx, cache)
	if kerr != nil {
		// Offline or a stale package list: an image built earlier from
		// the same recipe still does the job.
		_, base := key(resolved{}, modules, files)
		if img, m, ok := newestWithBase(imagesDir, base); ok {
			p.printf("cannot resolve the kernel (%v); using cached image %s (kernel %s)", kerr, img.Dir, m.KernelPackage)
			return img, nil
		}
		return Image{}, kerr
	}
	done()
	k := pkgs.Kernel
	full, base := key(pkgs, modules, files)
	name := k.Release + "-" + full[:12]
	dir := filepath.Join(imagesDir, name)
	loadImage := func(dir string) (Image, error) { img, _, err := load(dir); return img, err }
	img, built, err := buildOnce(ctx, p, dir, loadImage, func(tmp string) (any, error) {
		start := time.Now()
		m := manifest{
			Recipe: recipeVersion, Key: full, BaseKey: base,
			KernelPackage: k.Name + " " + k.Version, KernelVersion: k.Version, Release: k.Release,
			Modules: modules, Busybox: pkgs.Busybox.Name + " " + pkgs.Busybox.Version,
		}
		var err error
		if m.HostPackages, err = hostVersions(ctx); err != nil {
			return nil, err
		}
		for _, f := range files {
			m.HostFiles = append(m.HostFiles, f.src)
		}
		if err := build(ctx, p, cache, tmp, pkgs, &m, files); err != nil {
			return nil, err
		}
		m.Built = time.Now().UTC()
		m.BuildSeconds = time.Since(start).Seconds()
		return m, nil
	})
	if built {
		prune(p, imagesDir, k.Name+" "+k.Version)
	}
	return img, err
}

func build(ctx context.Context, p progress, cache, tmp string, pkgs resolved, m *manifest, files []hostFile) error {
	for i := range files {
		if err := files[i].load(); err != nil {
			return err
		}
	}
	k := pkgs.Kernel
	done := p.step("download " + k.Name + " " + k.Version)
	deb, err := download(ctx, filepath.Join(cache, "debs"), k)
	if err != nil {
		return err
	}
	done()

	done = p.step("download and unpack busybox " + pkgs.Busybox.Version)
	bbDeb, err := download(ctx, filepath.Join(cache, "debs"), pkgs.Busybox)
	if err != nil {
		return err
	}
	bb, err := extractFile(ctx, bbDeb, "bin/busybox")
	if err != nil {
		return err
	}
	bbPath := filepath.Join(tmp, "busybox")
	if err := os.WriteFile(bbPath, bb, 0o755); err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	defer os.Remove(bbPath)
	files = append([]hostFile{{dst: "bin/busybox", src: bbDeb, mode: 0o755, sum: sha256.Sum256(bb), data: bb}}, files...)
	bbLibs, err := sharedLibs(ctx, bbPath)
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, f := range files {
		have[f.dst] = true
	}
	for _, l := range bbLibs {
		if dst := strings.TrimPrefix(l, "/"); !have[dst] {
			data, err := os.ReadFile(l)
			if err != nil {
				return fmt.Errorf("vmnet image: %w", err)
			}
			files = append(files, hostFile{dst: dst, src: l, mode: 0o755, sum: sha256.Sum256(data), data: data})
		}
	}
	applets, err := run(ctx, "", bbPath, "--list-full")
	if err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	done()

	done = p.step("build the guest helper (go build)")
	helper, err := buildHelper(ctx)
	if err != nil {
		return err
	}
	files = append(files, hostFile{dst: helperPath, src: "vmnet-helper", mode: 0o755, sum: sha256.Sum256(helper), data: helper})
	done()

	root := filepath.Join(tmp, "kernel")
	done = p.step("unpack kernel and modules, depmod")
	if err := unpackKernel(ctx, deb, root, k); err != nil {
		return err
	}
	done()
	moddir := filepath.Join(root, "lib", "modules", k.Release)
	md, err := readModDeps(moddir)
	if err != nil {
		return err
	}
	modFiles, builtin, err := md.closure(k.Release, m.Modules)
	if err != nil {
		return err
	}
	m.Builtin, m.ModuleFiles = builtin, modFiles
	if len(builtin) > 0 {
		p.printf("built into the kernel, nothing to add: %s", strings.Join(builtin, " "))
	}

	if sib, ok := siblingKernel(filepath.Dir(tmp), m.KernelPackage); ok &&
		os.Link(filepath.Join(sib, fileVmlinux), filepath.Join(tmp, fileVmlinux)) == nil &&
		os.Link(filepath.Join(sib, fileVmlinuz), filepath.Join(tmp, fileVmlinuz)) == nil {
		// Same kernel package as an image built before (other modules or
		// recipe): share its kernel files instead of 75 MB more.
		p.printf("kernel files shared with %s", sib)
	} else if err := writeKernels(ctx, p, root, tmp, k); err != nil {
		return err
	}

	done = p.step("write initramfs")
	var raw bytes.Buffer
	if err := writeInitramfs(&raw, k, md, moddir, modFiles, files, strings.Fields(string(applets))); err != nil {
		return err
	}
	// Uncompressed: under TCG the guest kernel's gunzip costs more than
	// QEMU loading twice the bytes (BenchmarkBoot, vmlinux-pc-gz vs -raw).
	if err := os.WriteFile(filepath.Join(tmp, fileInitrd), raw.Bytes(), 0o644); err != nil {
		return fmt.Errorf("vmnet image: write initramfs: %w", err)
	}
	m.Initrd = fmt.Sprintf("newc cpio, uncompressed, %d bytes", raw.Len())
	done()
	return os.RemoveAll(root)
}

// writeKernels writes vmlinuz and the vmlinux extracted from it into dir.
func writeKernels(ctx context.Context, p progress, root, dir string, k debPkg) error {
	done := p.step("extract vmlinux from vmlinuz")
	bz, err := os.ReadFile(filepath.Join(root, "boot", "vmlinuz-"+k.Release))
	if err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	vmlinux, err := extractVmlinux(ctx, bz)
	if err != nil {
		return fmt.Errorf("vmnet image: vmlinuz-%s: %w", k.Release, err)
	}
	// Never write through a hard link shared with another image.
	os.Remove(filepath.Join(dir, fileVmlinuz))
	os.Remove(filepath.Join(dir, fileVmlinux))
	if err := os.WriteFile(filepath.Join(dir, fileVmlinuz), bz, 0o644); err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, fileVmlinux), vmlinux, 0o644); err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	done()
	return nil
}

// siblingKernel finds a complete image built from the same kernel package.
func siblingKernel(imagesDir, kernelPackage string) (string, bool) {
	ents, _ := os.ReadDir(imagesDir)
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		d := filepath.Join(imagesDir, e.Name())
		if _, m, err := load(d); err == nil && m.KernelPackage == kernelPackage {
			return d, true
		}
	}
	return "", false
}

// prune removes images built from other kernel packages than keep's:
// superseded kernels can no longer be downloaded and are not chosen again
// while the package lists name a newer one.
func prune(p progress, imagesDir, kernelPackage string) {
	ents, _ := os.ReadDir(imagesDir)
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		d := filepath.Join(imagesDir, e.Name())
		if _, m, err := load(d); err == nil && m.KernelPackage != kernelPackage {
			if os.RemoveAll(d) == nil {
				p.printf("removed image of superseded kernel %s: %s", m.KernelPackage, d)
			}
		}
	}
}

// writeInitramfs writes the guest's root file system as a newc archive.
func writeInitramfs(w io.Writer, k debPkg, md *modDeps, moddir string, modFiles []string, files []hostFile, applets []string) error {
	c := cpio.NewWriter(w)
	dirs := map[string]bool{}
	var mkdir func(d string)
	mkdir = func(d string) {
		if d == "." || d == "" || dirs[d] {
			return
		}
		mkdir(filepath.Dir(d))
		dirs[d] = true
		perm := uint32(0o755)
		if d == "tmp" {
			perm = 0o1777
		}
		c.Dir(d, perm)
	}
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "lib", "lib64", "etc/vmnet", "dev", "proc", "sys", "tmp", "run", "root"} {
		mkdir(d)
	}
	c.CharDev("dev/console", 0o600, 5, 1)
	c.CharDev("dev/null", 0o666, 1, 3)
	c.File("init", 0o755, initScript)
	for _, f := range files {
		mkdir(filepath.Dir(f.dst))
		c.File(f.dst, f.mode, f.data)
	}
	// Applet links for everything busybox provides, except programs
	// that come from their own package.
	have := map[string]bool{}
	for _, f := range files {
		have[filepath.Base(f.dst)] = true
	}
	for _, l := range applets {
		if l == "bin/busybox" || have[filepath.Base(l)] {
			continue
		}
		mkdir(filepath.Dir(l))
		c.Symlink(l, "/bin/busybox")
	}
	// Modules, with a modules.dep restricted to them for busybox modprobe.
	rel := "lib/modules/" + k.Release
	for _, mf := range modFiles {
		data, err := os.ReadFile(filepath.Join(moddir, mf))
		if err != nil {
			return fmt.Errorf("vmnet image: %w", err)
		}
		mkdir(filepath.Dir(rel + "/" + mf))
		c.File(rel+"/"+mf, 0o644, data)
	}
	dep, err := md.subsetDep(moddir, modFiles)
	if err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	c.File(rel+"/modules.dep", 0o644, dep)
	for _, extra := range []string{"modules.builtin", "modules.order"} {
		if data, err := os.ReadFile(filepath.Join(moddir, extra)); err == nil {
			c.File(rel+"/"+extra, 0o644, data)
		}
	}
	var names []string
	for _, mf := range modFiles {
		names = append(names, modName(mf))
	}
	sort.Strings(names)
	c.File("etc/vmnet/boot-modules", 0o644, []byte(strings.Join(BootModules, "\n")+"\n"))
	c.File("etc/vmnet/power-modules", 0o644, []byte(strings.Join(PowerModules, "\n")+"\n"))
	mkdir("etc/acpi/PWRF")
	c.File("etc/acpi/PWRF/00000080", 0o755, []byte(powerButton))
	c.File("etc/vmnet/modules", 0o644, []byte(strings.Join(names, "\n")+"\n"))
	c.File("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n"))
	c.File("etc/group", 0o644, []byte("root:x:0:\n"))
	c.File("etc/hosts", 0o644, []byte("127.0.0.1 localhost\n::1 localhost\n"))
	return c.Close()
}

// load returns the complete image in dir.
func load(dir string) (Image, manifest, error) {
	var m manifest
	data, err := os.ReadFile(filepath.Join(dir, fileManifest))
	if err != nil {
		return Image{}, m, err
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return Image{}, m, fmt.Errorf("vmnet image: %s: %w", filepath.Join(dir, fileManifest), err)
	}
	img := Image{
		Dir:              dir,
		Kernel:           filepath.Join(dir, fileVmlinux),
		KernelCompressed: filepath.Join(dir, fileVmlinuz),
		Initrd:           filepath.Join(dir, fileInitrd),
		KernelVersion:    m.Release,
		KernelPackage:    m.KernelPackage,
		Modules:          m.Modules,
		HostFiles:        m.HostFiles,
	}
	for _, f := range []string{img.Kernel, img.KernelCompressed, img.Initrd} {
		if _, err := os.Stat(f); err != nil {
			return Image{}, m, err
		}
	}
	return img, m, nil
}

// newestWithBase finds the most recently built complete image whose
// inputs other than the kernel match base.
func newestWithBase(imagesDir, base string) (Image, manifest, bool) {
	ents, _ := os.ReadDir(imagesDir)
	var best Image
	var bestM manifest
	ok := false
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		img, m, err := load(filepath.Join(imagesDir, e.Name()))
		if err != nil || m.BaseKey != base {
			continue
		}
		if !ok || m.Built.After(bestM.Built) {
			best, bestM, ok = img, m, true
		}
	}
	return best, bestM, ok
}

// Lock takes an exclusive flock on path (created if need be), waiting
// (cancellably) while another process holds it; waiting says so once on
// progress (nil: silently). The returned function releases it.
func Lock(ctx context.Context, path string, w io.Writer) (func(), error) {
	if w == nil {
		w = io.Discard
	}
	return lock(ctx, path, progress{w})
}

// buildOnce returns the image in dir, building it when no complete one is
// there: under the cache's lock (a job that waited finds it built), into
// a temporary directory that build fills and whose manifest (what build
// returns) is written last, then renamed into place, so readers see a
// whole image or none. built says whether this call made it.
func buildOnce[T any](ctx context.Context, p progress, dir string, load func(string) (T, error), build func(tmp string) (manifest any, err error)) (v T, built bool, err error) {
	if v, err := load(dir); err == nil {
		p.printf("using cached image %s", dir)
		return v, false, nil
	}
	imagesDir := filepath.Dir(dir)
	if err := os.MkdirAll(imagesDir, 0o755); err != nil {
		return v, false, fmt.Errorf("vmnet image: %w", err)
	}
	unlock, err := lock(ctx, filepath.Join(imagesDir, ".lock"), p)
	if err != nil {
		return v, false, err
	}
	defer unlock()
	if v, err := load(dir); err == nil { // built while we waited
		p.printf("using cached image %s", dir)
		return v, false, nil
	}
	start := time.Now()
	tmp, err := os.MkdirTemp(imagesDir, ".build-"+filepath.Base(dir)+"-")
	if err != nil {
		return v, false, fmt.Errorf("vmnet image: %w", err)
	}
	defer os.RemoveAll(tmp)
	m, err := build(tmp)
	if err != nil {
		return v, false, err
	}
	mj, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, fileManifest), append(mj, '\n'), 0o644); err != nil {
		return v, false, fmt.Errorf("vmnet image: %w", err)
	}
	os.RemoveAll(dir) // an incomplete leftover without manifest
	if err := os.Rename(tmp, dir); err != nil {
		return v, false, fmt.Errorf("vmnet image: %w", err)
	}
	p.printf("built %s in %.1fs", dir, time.Since(start).Seconds())
	v, err = load(dir)
	return v, true, err
}

// lock takes an exclusive flock on path, waiting (cancellably) while
// another process builds.
func lock(ctx context.Context, path string, p progress) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("vmnet image: %w", err)
	}
	told := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("vmnet image: lock %s: %w", path, err)
		}
		if !told {
			p.printf("waiting for another build (lock %s)", path)
			told = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// HostTSCParam returns "tsc_early_khz=<kHz>" for guests under TCG on
// machines without a PIT/HPET/PM timer to calibrate the TSC against
// (-M microvm): without it the kernel stops at "tsc: Marking TSC unstable".
// Under TCG the guest reads the host's TSC, whose rate the host's
// /proc/cpuinfo reports as "cpu MHz" on constant_tsc CPUs. It returns ""
// when that is unknown.
func HostTSCParam() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil || !bytes.Contains(data, []byte(" constant_tsc")) {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			var mhz float64
			if _, err := fmt.Sscan(strings.TrimSpace(v), &mhz); err == nil && mhz > 0 {
				return fmt.Sprintf("tsc_early_khz=%d", int64(mhz*1000))
			}
		}
	}
	return ""
}
