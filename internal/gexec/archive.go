package gexec

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/vmnet/vmnet/images"
	"github.com/vmnet/vmnet/images/cpio"
)

// MaxTestdata bounds the testdata/ directory carried into the guest: it
// lives in guest RAM, in the initramfs.
const MaxTestdata = 64 << 20

// Paths inside the guest.
const (
	guestProgDir = "vmnet/prog" // the program, under its own base name
	guestBinDir  = "vmnet/bin"  // host programs (first in PATH)
	guestRun     = "vmnet/run"  // the wrapper /init runs
)

// overlay is the extra newc archive appended to the image's initramfs.
type overlay struct {
	c    *cpio.Writer
	dirs map[string]bool
	size int64
}

func newOverlay(w io.Writer) *overlay {
	return &overlay{c: cpio.NewWriter(w), dirs: map[string]bool{}}
}

// Directories the base image has with other permissions than 0755: an
// appended entry for them would change them.
var specialDirs = map[string]uint32{"tmp": 0o1777, "root": 0o700}

func (o *overlay) mkdir(d string) {
	d = strings.TrimPrefix(path.Clean("/"+d), "/")
	if d == "" || o.dirs[d] {
		return
	}
	o.mkdir(path.Dir(d))
	o.dirs[d] = true
	perm, ok := specialDirs[d]
	if !ok {
		perm = 0o755
	}
	o.c.Dir(d, perm)
}

func (o *overlay) file(name string, perm uint32, data []byte) {
	o.mkdir(path.Dir(name))
	o.c.File(name, perm, data)
	o.size += int64(len(data))
}

func (o *overlay) symlink(name, target string) {
	o.mkdir(path.Dir(name))
	o.c.Symlink(name, target)
}

func (o *overlay) close() error { return o.c.Close() }

// addTestdata copies the directory tree src (regular files, directories,
// symlinks) to dst in the guest, refusing more than limit bytes.
func (o *overlay) addTestdata(src, dst string, limit int64) error {
	var total int64
	var files []string
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
		}
		files = append(files, p)
		return nil
	})
	if err != nil {
		return fmt.Errorf("testdata %s: %w", src, err)
	}
	if total > limit {
		return fmt.Errorf("testdata %s holds %d MiB, more than the %d MiB vmnet exec carries into the guest (it lives in guest RAM): make it smaller or move large files out of testdata/",
			src, total>>20, limit>>20)
	}
	for _, p := range files {
		rel, _ := filepath.Rel(src, p)
		name := path.Join(dst, filepath.ToSlash(rel))
		info, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("testdata: %w", err)
		}
		switch {
		case info.IsDir():
			o.mkdir(name)
		case info.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return fmt.Errorf("testdata: %w", err)
			}
			o.symlink(name, t)
		case info.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return fmt.Errorf("testdata: %w", err)
			}
			o.file(name, uint32(info.Mode().Perm()), data)
		default:
			// Sockets, fifos, devices: nothing a test reads as data.
		}
	}
	return nil
}

var lddPath = regexp.MustCompile(`(?:=>\s*)?(/[^\s]+)\s+\(0x`)

// sharedLibs lists the libraries (and the loader) a host program needs,
// as ldd resolves them on this host.
func sharedLibs(ctx context.Context, prog string) ([]string, error) {
	out, err := exec.CommandContext(ctx, "ldd", prog).CombinedOutput()
	if err != nil {
		if bytes.Contains(out, []byte("not a dynamic executable")) {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %v: %s", prog, err, bytes.TrimSpace(out))
	}
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		l := sc.Text()
		if strings.Contains(l, "not found") {
			return nil, fmt.Errorf("host program %s: ldd: %s", prog, strings.TrimSpace(l))
		}
		if m := lddPath.FindStringSubmatch(l); m != nil {
			libs = append(libs, m[1])
		}
	}
	return libs, nil
}

// addPrograms copies host programs into /vmnet/bin and their shared
// libraries to the paths the host has them at, leaving out those the
// image carries already (by host path: the same files, on the guest's
// PATH): every byte of the archive is unpacked anew in each guest. The
// libraries ldd lists are kept in cacheDir (images.CachedLibs).
func (o *overlay) addPrograms(ctx context.Context, cacheDir string, progs []string, carried []string) error {
	seen := map[string]bool{}
	for _, c := range carried {
		seen[c] = true
	}
	var libs []string
	for _, p := range progs {
		if seen[p] {
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("host program: %w", err)
		}
		o.file(path.Join(guestBinDir, filepath.Base(p)), 0o755, data)
		l, err := images.CachedLibs(cacheDir, p, func() ([]string, error) { return sharedLibs(ctx, p) })
		if err != nil {
			return err
		}
		for _, x := range l {
			if !seen[x] {
				seen[x] = true
				libs = append(libs, x)
			}
		}
	}
	sort.Strings(libs)
	for _, l := range libs {
		data, err := os.ReadFile(l) // follows the host's symlinks
		if err != nil {
			return fmt.Errorf("library for host programs: %w", err)
		}
		o.file(l, 0o755, data)
	}
	return nil
}

// shQuote quotes s for sh.
func shQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// wrapperScript is /vmnet/run: it loads the modules, prepares the console
// and environment, says VMNET-EXEC-START and execs the program in dir.
func wrapperScript(prog, dir string, args, env, mkdirs, modules []string, keepKernelLog bool) []byte {
	var b strings.Builder
	b.WriteString("#!/bin/sh\n# Written by vmnet exec: runs the program with its arguments, environment and directory.\n")
	if len(modules) > 0 {
		// One modprobe for all: every process start costs under TCG.
		// Built-in modules need nothing (busybox modprobe does not know them).
		b.WriteString("read -r rel </proc/sys/kernel/osrelease\nbuiltin=$(cat /lib/modules/$rel/modules.builtin 2>/dev/null)\nmods=\n")
		for _, m := range modules {
			m = strings.ReplaceAll(m, "-", "_")
			fmt.Fprintf(&b, "case \"$builtin\" in */%s.ko*|*/%s.ko*) ;; *) mods=\"$mods %s\" ;; esac\n",
				m, strings.ReplaceAll(m, "_", "-"), m)
		}
		b.WriteString("if [ -n \"$mods\" ] && ! out=$(modprobe -a $mods 2>&1); then\n" +
			"\techo \"" + errorPrefix + "cannot load kernel modules$mods: $out\"\n\texit 125\nfi\n")
	}
	if !keepKernelLog {
		// The console is the program's stdout: only emergencies may interrupt it.
		b.WriteString("echo 1 >/proc/sys/kernel/printk\n")
	}
	// Output goes to the host as it is written: LF stays LF.
	b.WriteString("stty -onlcr <&1 2>/dev/null\n")
	b.WriteString("export PATH=/" + guestBinDir + ":/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp USER=root LOGNAME=root\n")
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&b, "export %s=%s\n", k, shQuote(v))
	}
	for _, d := range mkdirs {
		fmt.Fprintf(&b, "mkdir -p %s\n", shQuote(d))
	}
	fmt.Fprintf(&b, "cd %s || { echo \"%scannot enter %s\"; exit 125; }\n", shQuote(dir), errorPrefix, strings.ReplaceAll(dir, `"`, ""))
	b.WriteString("echo " + startLine + "\n")
	b.WriteString("exec " + shQuote(prog))
	for _, a := range args {
		b.WriteString(" " + shQuote(a))
	}
	b.WriteString(" </dev/null\n")
	return []byte(b.String())
}
