package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/vmnet/vmnet/images/cpio"
	"github.com/vmnet/vmnet/images/guest"
	"github.com/vmnet/vmnet/netns"
)

// Debian12 is the name of the Debian 12 disk image (image = "debian-12").
const Debian12 = "debian-12"

// debianRecipe changes whenever the Go side of the debian-12 recipe
// changes what goes into the image; the scripts are hashed separately.
const debianRecipe = "vmnet-debian-12-3"

//go:embed debian-init.sh
var debianInit []byte

//go:embed debian-customize.sh
var debianCustomize []byte

// DebianPackages are installed with their dependencies (no recommends)
// on top of mmdebstrap's "apt" variant (Essential: yes packages and apt).
var DebianPackages = []string{
	"systemd", "systemd-sysv", "udev", "cloud-init", "qemu-guest-agent",
	"iproute2", "iputils-ping", "iperf3", "ethtool", "openssh-server",
	// The ACPI power button (QMP system_powerdown, so `vmnet down`):
	// without D-Bus there is no systemd-logind to act on it, and the
	// guest would wait out the stop grace. acpid (154 kB, one small
	// daemon) with an event file (debian-customize.sh) is lighter and
	// starts faster than dbus plus logind.
	"acpid",
}

// DebianBootModules are loaded by the initramfs before systemd starts:
// the root disk (virtio_blk, ext4), the NICs (virtio_net), the guest
// agent's virtio-serial port (virtio_console), the seed volume (isofs)
// and the power button (button, evdev), which acpid turns into a clean
// poweroff.
//
// ext4 finds its checksum through the crypto API (a soft dependency that
// modules.dep does not list), so crc32c_generic is loaded first.
var DebianBootModules = []string{"crc32c_generic", "virtio_pci", "virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "ext4", "isofs", "button", "evdev"}

// DebianExtraModules are put into the root file system for modprobe in
// the guest (labs that nest bridges, VLANs or tunnels).
var DebianExtraModules = []string{"bridge", "8021q", "vxlan", "veth", "tun", "sch_netem", "vhost_net", "vfat"}

// DebianCmdline is the kernel command line for the debian-12 image,
// after guest.BaseCmdline's speed settings (address space randomization
// stays on, as in the distribution): the root disk, systemd without
// the status lines that slow a serial console, and the kernel's NIC names
// (eth0, eth1... in PCI order, as in the test image) instead of
// systemd's, which depend on the slot.
const DebianCmdline = guest.BaseCmdline + " root=/dev/vda rootfstype=ext4 rw systemd.show_status=false net.ifnames=0"

// Disk is a built disk image with the kernel that boots it.
type Disk struct {
	Name     string // debian-12
	Dir      string
	Disk     string // raw ext4 file system, the root on /dev/vda
	Format   string // "raw"
	Kernel   string // uncompressed vmlinux (PVH entry), shared with the test image
	Initrd   string // busybox initramfs that mounts Disk and starts systemd
	Cmdline  string
	Packages map[string]string // every installed package and its version
	Key      string
}

const (
	fileDisk        = "disk.raw"
	fileDebInitrd   = "initrd.cpio"
	fileDebPackages = "packages.txt"
)

// debianManifest is written last; its presence marks the image complete.
type debianManifest struct {
	Recipe        string            `json:"recipe"`
	Name          string            `json:"name"`
	Key           string            `json:"key"`
	Suite         string            `json:"suite"`
	Include       []string          `json:"include"`
	AptLists      map[string]string `json:"apt_lists"` // InRelease file -> SHA-256: the archive state apt resolved against
	KernelPackage string            `json:"kernel_package"`
	Busybox       string            `json:"busybox"`
	Modules       []string          `json:"modules"`
	Packages      map[string]string `json:"packages"`
	DiskBytes     int64             `json:"disk_bytes"`
	Built         time.Time         `json:"built"`
	BuildSeconds  float64           `json:"build_seconds"`
}

// aptLists hashes the InRelease files of the host's package lists: they
// carry the hashes of every Packages file, so equal hashes mean apt
// resolves every package to the same version.
func aptLists() (map[string]string, error) {
	files, _ := filepath.Glob("/var/lib/apt/lists/*InRelease")
	if len(files) == 0 {
		return nil, fmt.Errorf("vmnet image: no package lists in /var/lib/apt/lists (run: sudo apt-get update)")
	}
	out := map[string]string{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("vmnet image: %w", err)
		}
		out[filepath.Base(f)] = fmt.Sprintf("%x", sha256.Sum256(data))
	}
	return out, nil
}

// debianKey hashes every input of the debian-12 image.
func debianKey(lists map[string]string, kernel debPkg, busybox debPkg) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%x\n%x\n", debianRecipe, sha256.Sum256(debianInit), sha256.Sum256(debianCustomize))
	fmt.Fprintf(h, "include %s\n", strings.Join(DebianPackages, ","))
	fmt.Fprintf(h, "modules %s | %s\n", strings.Join(DebianBootModules, ","), strings.Join(DebianExtraModules, ","))
	fmt.Fprintf(h, "kernel %s %s\nbusybox %s\n", kernel.Name, kernel.Version, busybox.Version)
	names := make([]string, 0, len(lists))
	for n := range lists {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(h, "lists %s %s\n", n, lists[n])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// debianTools are the host programs the debian-12 recipe runs.
var debianTools = []hostTool{{"mmdebstrap", "mmdebstrap"}, {"mkfs.ext4", "e2fsprogs"}, {"chroot", "coreutils"}}

// EnsureDebian returns the debian-12 disk image, building it in
// opts.CacheDir unless an image with the same inputs is there. The root
// file system comes from Debian packages installed with mmdebstrap into
// a directory, then written into a raw ext4 file with mkfs.ext4 -d: no
// loop device, no mount, no systemd on the host. The kernel is the test
// image's (the same Debian package, booted through QEMU's PVH entry
// without a bootloader), with a busybox initramfs that loads the modules
// for the root disk.
func EnsureDebian(ctx context.Context, opts Options) (Disk, error) {
	p, cache, err := opts.start()
	if err != nil {
		return Disk{}, err
	}
	var miss MissingError
	for _, t := range debianTools {
		if _, err := exec.LookPath(t.name); err != nil {
			miss.Tools, miss.Packages = append(miss.Tools, t.name), append(miss.Packages, t.pkg)
		}
	}
	if len(miss.Tools) > 0 {
		return Disk{}, &miss
	}
	// The kernel (vmlinux) comes from the test image, built or reused.
	test, err := Ensure(ctx, Options{CacheDir: cache, Progress: opts.Progress})
	if err != nil {
		return Disk{}, err
	}
	pkgs, err := resolveCached(ctx, cache)
	if err != nil {
		return Disk{}, err
	}
	lists, err := aptLists()
	if err != nil {
		return Disk{}, err
	}
	full := debianKey(lists, pkgs.Kernel, pkgs.Busybox)
	imagesDir := filepath.Join(cache, "images")
	dir := filepath.Join(imagesDir, Debian12+"-"+full[:12])
	d, built, err := buildOnce(ctx, p, dir, loadDebian, func(tmp string) (any, error) {
		start := time.Now()
		m := debianManifest{
			Recipe: debianRecipe, Name: Debian12, Key: full, Suite: "bookworm",
			Include: DebianPackages, AptLists: lists,
			KernelPackage: pkgs.Kernel.Name + " " + pkgs.Kernel.Version,
			Busybox:       pkgs.Busybox.Name + " " + pkgs.Busybox.Version,
		}
		if err := buildDebian(ctx, p, cache, tmp, test, pkgs, &m); err != nil {
			return nil, err
		}
		m.Built = time.Now().UTC()
		m.BuildSeconds = time.Since(start).Seconds()
		return m, nil
	})
	if built {
		pruneDebian(p, imagesDir, dir)
	}
	return d, err
}

// pruneDebian removes the other complete debian-12 images: built from
// older package lists or recipes, they are not chosen again. A guest
// still running from one keeps its open file.
func pruneDebian(p progress, imagesDir, keep string) {
	old, _ := filepath.Glob(filepath.Join(imagesDir, Debian12+"-*"))
	for _, d := range old {
		if d == keep {
			continue
		}
		if _, err := loadDebian(d); err == nil && os.RemoveAll(d) == nil {
			p.printf("removed superseded image %s", d)
		}
	}
}

func buildDebian(ctx context.Context, p progress, cache, tmp string, test Image, pkgs resolved, m *debianManifest) error {
	root := filepath.Join(tmp, "root")
	hook := filepath.Join(tmp, "customize.sh")
	if err := os.WriteFile(hook, debianCustomize, 0o755); err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	defer os.Remove(hook)
	done := p.step("mmdebstrap bookworm (" + fmt.Sprint(len(DebianPackages)) + " packages and dependencies)")
	args := []string{
		"--mode=root", "--variant=apt", "--format=directory",
		"--aptopt=APT::Install-Recommends \"false\"",
		"--dpkgopt=force-unsafe-io",
		// Documentation is not needed in a lab guest and costs build time.
		"--dpkgopt=path-exclude=/usr/share/man/*",
		"--dpkgopt=path-exclude=/usr/share/doc/*",
		"--dpkgopt=path-include=/usr/share/doc/*/copyright",
		"--dpkgopt=path-exclude=/usr/share/locale/*",
		"--include=" + strings.Join(DebianPackages, ","),
		// apt resolves against the host's package lists, whose InRelease
		// files the key hashes, instead of fetching newer ones: a cache
		// hit is then exactly what a rebuild would install.
		"--skip=update",
		`--setup-hook=mkdir -p "$1/var/lib/apt/lists" && cp /var/lib/apt/lists/*_InRelease /var/lib/apt/lists/*_Packages* "$1/var/lib/apt/lists/"`,
		"--customize-hook=sh " + hook + ` "$1"`,
		"bookworm", root,
	}
	// The host's apt sources (deb822 or one-line) name the mirror.
	srcs, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	if st, err := os.Stat("/etc/apt/sources.list"); err == nil && st.Size() > 0 {
		args = append(args, "/etc/apt/sources.list")
	}
	args = append(args, srcs...)
	// mmdebstrap downloads: run it from the namespace vmnet started in
	// (names do not resolve in a lab's), and in a mount namespace of its
	// own so that the chroot's /proc, /sys and /dev mounts never show up
	// on the host, even if it is killed.
	err := netns.DoInitial(func() error {
		cmd := exec.CommandContext(ctx, "mmdebstrap", args...)
		cmd.Env = append(os.Environ(), "LC_ALL=C")
		cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("vmnet image: mmdebstrap: %w (%s):\n%s", err, downloadAdvice("if a package download failed, the package lists are older than the mirror: run sudo apt-get update"), tail(out.String(), 20))
		}
		return nil
	})
	if err != nil {
		return err
	}
	done()

	done = p.step("list installed packages")
	out, err := run(ctx, "", "dpkg-query", "--admindir="+filepath.Join(root, "var/lib/dpkg"), "-W", "-f=${Package} ${Version}\n")
	if err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	m.Packages = map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			m.Packages[f[0]] = f[1]
		}
	}
	if err := os.WriteFile(filepath.Join(tmp, fileDebPackages), out, 0o644); err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	done()

	done = p.step("unpack kernel modules, depmod")
	deb, err := download(ctx, filepath.Join(cache, "debs"), pkgs.Kernel)
	if err != nil {
		return err
	}
	kroot := filepath.Join(tmp, "kernel")
	if err := unpackKernel(ctx, deb, kroot, pkgs.Kernel); err != nil {
		return err
	}
	rel := pkgs.Kernel.Release
	moddir := filepath.Join(kroot, "lib", "modules", rel)
	md, err := readModDeps(moddir)
	if err != nil {
		return err
	}
	bootFiles, _, err := md.closure(rel, DebianBootModules)
	if err != nil {
		return err
	}
	allFiles, _, err := md.closure(rel, append(append([]string{}, DebianBootModules...), DebianExtraModules...))
	if err != nil {
		return err
	}
	m.Modules = allFiles
	// The root file system gets every module of the image and a complete
	// modules.dep (depmod), for udev and modprobe in the guest.
	rootMods := filepath.Join(root, "usr", "lib", "modules", rel)
	for _, f := range allFiles {
		if err := copyFile(filepath.Join(moddir, f), filepath.Join(rootMods, f)); err != nil {
			return err
		}
	}
	for _, f := range []string{"modules.builtin", "modules.order", "modules.builtin.modinfo"} {
		if _, err := os.Stat(filepath.Join(moddir, f)); err == nil {
			if err := copyFile(filepath.Join(moddir, f), filepath.Join(rootMods, f)); err != nil {
				return err
			}
		}
	}
	if _, err := run(ctx, "", "depmod", "-b", filepath.Join(root, "usr"), rel); err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	done()

	done = p.step("write initramfs")
	if err := writeDebianInitrd(ctx, filepath.Join(tmp, fileDebInitrd), cache, pkgs, md, moddir, rel, bootFiles); err != nil {
		return err
	}
	if err := os.RemoveAll(kroot); err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	done()

	done = p.step("mkfs.ext4 -d")
	used, err := duBytes(root)
	if err != nil {
		return err
	}
	// Room for what the guests write (logs, cloud-init's state), in a
	// sparse file: unwritten blocks cost nothing on the host.
	size := used*2 + 512<<20
	size = (size + 1<<20 - 1) &^ (1<<20 - 1)
	disk := filepath.Join(tmp, fileDisk)
	if _, err := run(ctx, "", "mkfs.ext4", "-q", "-F", "-L", "root", "-m", "0",
		"-U", uuidFromKey(m.Key), "-E", "root_owner=0:0,hash_seed="+uuidFromKey(m.Key),
		"-d", root, disk, fmt.Sprintf("%dk", size>>10)); err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	m.DiskBytes = size
	if err := os.RemoveAll(root); err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	done()

	// The kernel file is the test image's: a hard link, not 65 MB more.
	if err := os.Link(test.Kernel, filepath.Join(tmp, fileVmlinux)); err != nil {
		if err := copyFile(test.Kernel, filepath.Join(tmp, fileVmlinux)); err != nil {
			return err
		}
	}
	return nil
}

// writeDebianInitrd writes the busybox initramfs that mounts the root
// disk: busybox and its libraries, the boot modules and debian-init.sh.
func writeDebianInitrd(ctx context.Context, dst, cache string, pkgs resolved, md *modDeps, moddir, rel string, modFiles []string) error {
	bbDeb, err := download(ctx, filepath.Join(cache, "debs"), pkgs.Busybox)
	if err != nil {
		return err
	}
	bb, err := extractFile(ctx, bbDeb, "bin/busybox")
	if err != nil {
		return err
	}
	bbPath := dst + ".busybox"
	if err := os.WriteFile(bbPath, bb, 0o755); err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	defer os.Remove(bbPath)
	libs, err := sharedLibs(ctx, bbPath)
	if err != nil {
		return err
	}
	f, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	defer f.Close()
	c := cpio.NewWriter(f)
	dirs := map[string]bool{}
	var mkdir func(d string)
	mkdir = func(d string) {
		if d == "." || d == "" || dirs[d] {
			return
		}
		mkdir(filepath.Dir(d))
		dirs[d] = true
		c.Dir(d, 0o755)
	}
	for _, d := range []string{"bin", "sbin", "etc/vmnet", "dev", "proc", "sys", "newroot"} {
		mkdir(d)
	}
	c.CharDev("dev/console", 0o600, 5, 1)
	c.CharDev("dev/null", 0o666, 1, 3)
	c.File("init", 0o755, debianInit)
	c.File("bin/busybox", 0o755, bb)
	for _, l := range libs {
		data, err := os.ReadFile(l)
		if err != nil {
			return fmt.Errorf("vmnet image: %w", err)
		}
		d := strings.TrimPrefix(l, "/")
		mkdir(filepath.Dir(d))
		c.File(d, 0o755, data)
	}
	for _, a := range []string{"sh", "mount", "umount", "modprobe", "insmod", "mkdir", "sleep", "cat", "switch_root", "echo"} {
		c.Symlink("bin/"+a, "/bin/busybox")
	}
	// The kernel asks /sbin/modprobe for modules it wants on its own.
	c.Symlink("sbin/modprobe", "/bin/busybox")
	rd := "lib/modules/" + rel
	for _, mf := range modFiles {
		data, err := os.ReadFile(filepath.Join(moddir, mf))
		if err != nil {
			return fmt.Errorf("vmnet image: %w", err)
		}
		mkdir(filepath.Dir(rd + "/" + mf))
		c.File(rd+"/"+mf, 0o644, data)
	}
	dep, err := md.subsetDep(moddir, modFiles)
	if err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	c.File(rd+"/modules.dep", 0o644, dep)
	if data, err := os.ReadFile(filepath.Join(moddir, "modules.builtin")); err == nil {
		c.File(rd+"/modules.builtin", 0o644, data)
	}
	c.File("etc/vmnet/modules", 0o644, []byte(strings.Join(DebianBootModules, "\n")+"\n"))
	if err := c.Close(); err != nil {
		return fmt.Errorf("vmnet image: write initramfs: %w", err)
	}
	return f.Close()
}

// loadDebian returns the complete debian-12 image in dir.
func loadDebian(dir string) (Disk, error) {
	var m debianManifest
	data, err := os.ReadFile(filepath.Join(dir, fileManifest))
	if err != nil {
		return Disk{}, err
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return Disk{}, fmt.Errorf("vmnet image: %s: %w", filepath.Join(dir, fileManifest), err)
	}
	d := Disk{
		Name: m.Name, Dir: dir, Disk: filepath.Join(dir, fileDisk), Format: "raw",
		Kernel: filepath.Join(dir, fileVmlinux), Initrd: filepath.Join(dir, fileDebInitrd),
		Cmdline: DebianCmdline, Packages: m.Packages, Key: m.Key,
	}
	for _, f := range []string{d.Disk, d.Kernel, d.Initrd} {
		if _, err := os.Stat(f); err != nil {
			return Disk{}, err
		}
	}
	return d, nil
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	return nil
}

// duBytes sums the sizes of the regular files under dir.
func duBytes(dir string) (int64, error) {
	var n int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			n += fi.Size()
		}
		n += 4096 // a block for every inode, directories included
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("vmnet image: %w", err)
	}
	return n, nil
}

// uuidFromKey makes the file system's UUID and hash seed follow the
// image's inputs, so a rebuild does not differ in them.
func uuidFromKey(key string) string {
	k := key + strings.Repeat("0", 32)
	return k[0:8] + "-" + k[8:12] + "-" + k[12:16] + "-" + k[16:20] + "-" + k[20:32]
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// allocated is the space a file takes on disk.
func allocated(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
