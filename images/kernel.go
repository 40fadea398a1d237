package images

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// unpackKernel writes vmlinuz and the module tree of the kernel package
// into dir (dir/boot/vmlinuz-R, dir/lib/modules/R/...) without running
// any maintainer script, then generates modules.dep with depmod: the
// package ships modules.order but leaves modules.dep to its postinst.
func unpackKernel(ctx context.Context, deb, dir string, k debPkg) error {
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", deb)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("vmnet image: dpkg-deb: %w", err)
	}
	vmlinuz := "boot/vmlinuz-" + k.Release
	modPrefix := "lib/modules/" + k.Release + "/"
	found := false
	tr := tar.NewReader(bufio.NewReaderSize(out, 1<<20))
	var terr error
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			terr = fmt.Errorf("vmnet image: read %s: %w", deb, err)
			break
		}
		name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		if h.Typeflag != tar.TypeReg || (name != vmlinuz && !strings.HasPrefix(name, modPrefix)) {
			continue
		}
		if name == vmlinuz {
			found = true
		}
		dst := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			terr = err
			break
		}
		f, err := os.Create(dst)
		if err == nil {
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			terr = fmt.Errorf("vmnet image: extract %s: %w", name, err)
			break
		}
	}
	io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil && terr == nil {
		terr = fmt.Errorf("vmnet image: dpkg-deb --fsys-tarfile %s: %w: %s", deb, err, strings.TrimSpace(stderr.String()))
	}
	if terr != nil {
		return terr
	}
	if !found {
		return fmt.Errorf("vmnet image: %s has no /%s", deb, vmlinuz)
	}
	if _, err := run(ctx, "", "depmod", "-b", dir, k.Release); err != nil {
		return fmt.Errorf("vmnet image: %w", err)
	}
	return nil
}

// extractFile returns one regular file of a package.
func extractFile(ctx context.Context, deb, name string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", deb)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("vmnet image: dpkg-deb: %w", err)
	}
	var data []byte
	tr := tar.NewReader(out)
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		if h.Typeflag == tar.TypeReg && strings.TrimPrefix(path.Clean("/"+h.Name), "/") == name {
			data, err = io.ReadAll(tr)
			if err != nil {
				data = nil
			}
			break
		}
	}
	io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("vmnet image: dpkg-deb --fsys-tarfile %s: %w: %s", deb, err, strings.TrimSpace(stderr.String()))
	}
	if data == nil {
		return nil, fmt.Errorf("vmnet image: %s has no /%s", deb, name)
	}
	return data, nil
}

// modDeps is a parsed modules.dep: module name -> path relative to the
// module directory, and name -> dependency names in modprobe's order
// (the last one is loaded first).
type modDeps struct {
	path    map[string]string
	deps    map[string][]string
	builtin map[string]bool
}

// modName is the kernel's name for a module file: basename without the
// .ko[.xz|.zst|.gz] suffix, with '-' folded to '_'.
func modName(file string) string {
	b := path.Base(file)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

func readModDeps(moddir string) (*modDeps, error) {
	md := &modDeps{path: map[string]string{}, deps: map[string][]string{}, builtin: map[string]bool{}}
	data, err := os.ReadFile(filepath.Join(moddir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("vmnet image: %w", err)
	}
	for i, line := range strings.Split(string(data), "\n") {
		if line == "" {
			continue
		}
		file, rest, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("vmnet image: %s/modules.dep:%d: no ':'", moddir, i+1)
		}
		n := modName(file)
		md.path[n] = file
		for _, d := range strings.Fields(rest) {
			md.deps[n] = append(md.deps[n], modName(d))
		}
	}
	if data, err := os.ReadFile(filepath.Join(moddir, "modules.builtin")); err == nil {
		for _, line := range strings.Fields(string(data)) {
			md.builtin[modName(line)] = true
		}
	}
	return md, nil
}

// closure returns the module files needed for names and their
// dependencies, and the names that are built into the kernel.
func (md *modDeps) closure(release string, names []string) (files []string, builtin []string, err error) {
	need := map[string]bool{}
	for _, n := range names {
		n = strings.ReplaceAll(n, "-", "_")
		if _, ok := md.path[n]; !ok {
			if md.builtin[n] {
				builtin = append(builtin, n)
				continue
			}
			return nil, nil, fmt.Errorf("vmnet image: module %q is not in kernel %s (neither in modules.dep nor built in)", n, release)
		}
		need[n] = true
		for _, d := range md.deps[n] {
			need[d] = true
		}
	}
	for n := range need {
		p, ok := md.path[n]
		if !ok {
			return nil, nil, fmt.Errorf("vmnet image: modules.dep of %s names %s but has no entry for it", release, n)
		}
		files = append(files, p)
	}
	sort.Strings(files)
	return files, builtin, nil
}

// subsetDep writes the modules.dep lines for files only, so that busybox
// modprobe in the guest resolves dependencies the same way.
func (md *modDeps) subsetDep(moddir string, files []string) ([]byte, error) {
	keep := map[string]bool{}
	for _, f := range files {
		keep[f] = true
	}
	data, err := os.ReadFile(filepath.Join(moddir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	for _, line := range strings.Split(string(data), "\n") {
		file, _, _ := strings.Cut(line, ":")
		if keep[file] {
			b.WriteString(line)
			b.WriteByte('\n')
		}
	}
	return b.Bytes(), nil
}

// extractVmlinux returns the uncompressed kernel ELF from a bzImage, as
// scripts/extract-vmlinux does, but located through the boot protocol
// header (payload_offset/payload_length, protocol >= 2.08) instead of by
// scanning for magic bytes.
func extractVmlinux(ctx context.Context, bz []byte) ([]byte, error) {
	if len(bz) < 0x250 || string(bz[0x202:0x206]) != "HdrS" {
		return nil, errors.New("not a bzImage (no HdrS boot header)")
	}
	if v := binary.LittleEndian.Uint16(bz[0x206:]); v < 0x208 {
		return nil, fmt.Errorf("boot protocol %#x is older than 2.08 (no payload fields)", v)
	}
	setup := int(bz[0x1f1])
	if setup == 0 {
		setup = 4
	}
	off := (setup+1)*512 + int(binary.LittleEndian.Uint32(bz[0x248:]))
	n := int(binary.LittleEndian.Uint32(bz[0x24c:]))
	if off+n > len(bz) || n < 8 {
		return nil, fmt.Errorf("payload %d+%d outside the %d-byte file", off, n, len(bz))
	}
	// The payload ends with the 4-byte uncompressed size.
	p := bz[off : off+n-4]
	var (
		out []byte
		err error
	)
	switch {
	case bytes.HasPrefix(p, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		out, err = filter(ctx, p, "xz", "-dc", "--single-stream")
	case bytes.HasPrefix(p, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		out, err = filter(ctx, p, "zstd", "-dcq")
	case bytes.HasPrefix(p, []byte{0x1f, 0x8b}):
		var zr *gzip.Reader
		if zr, err = gzip.NewReader(bytes.NewReader(p)); err == nil {
			zr.Multistream(false)
			out, err = io.ReadAll(zr)
		}
	default:
		return nil, fmt.Errorf("payload compression with magic % x is not supported (xz, zstd, gzip are)", p[:6])
	}
	if err != nil {
		return nil, err
	}
	if err := checkPVH(out); err != nil {
		return nil, err
	}
	return out, nil
}

func filter(ctx context.Context, in []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		pkg := map[string]string{"xz": "xz-utils", "zstd": "zstd"}[name]
		return nil, fmt.Errorf("%s %s: %w: %s (needs package %s)", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()), pkg)
	}
	return out, nil
}

// xenElfnotePhys32Entry is the note QEMU looks for to boot an ELF kernel
// through the PVH entry point (include/xen/interface/elfnote.h).
const xenElfnotePhys32Entry = 18

// checkPVH verifies that vmlinux is an x86-64 ELF with a PVH entry note;
// without it QEMU refuses to boot the ELF with -kernel.
func checkPVH(vmlinux []byte) error {
	f, err := elf.NewFile(bytes.NewReader(vmlinux))
	if err != nil {
		return fmt.Errorf("uncompressed kernel is not ELF: %w", err)
	}
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("uncompressed kernel is %v, want x86-64", f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data, err := io.ReadAll(p.Open())
		if err != nil {
			return err
		}
		for len(data) >= 12 {
			namesz := int(binary.LittleEndian.Uint32(data))
			descsz := int(binary.LittleEndian.Uint32(data[4:]))
			typ := binary.LittleEndian.Uint32(data[8:])
			nameEnd := 12 + (namesz+3)&^3
			end := nameEnd + (descsz+3)&^3
			if end > len(data) || namesz > len(data) {
				break
			}
			name := strings.TrimRight(string(data[12:12+namesz]), "\x00")
			if name == "Xen" && typ == xenElfnotePhys32Entry {
				return nil
			}
			data = data[end:]
		}
	}
	return errors.New("uncompressed kernel has no PVH entry note (Xen note 18, CONFIG_PVH): QEMU cannot boot it as ELF; use the vmlinuz")
}
