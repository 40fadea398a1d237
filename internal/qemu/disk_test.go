package qemu

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmnet/vmnet/internal/testenv"
)

// qemuImg runs qemu-img or qemu-io from qemu-utils.
func qemuImg(t *testing.T, prog string, args ...string) string {
	t.Helper()
	testenv.RequireProgram(t, prog)
	out, err := exec.Command(prog, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", prog, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// rawImage makes a raw image of 4 MiB filled with a pattern.
func rawImage(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, bytes.Repeat([]byte("vmnet-base "), 4<<20/11+1)[:4<<20], 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestOverlayRealQemuImg: CreateOverlay makes a real qcow2 overlay that
// records the base by absolute path and format; writes through it (by
// qemu-io, the same block layer QEMU uses) leave the base's bytes alone;
// prepareDisks reuses the overlay on a second start, and refuses a
// missing image and a file that is not of the stated format before QEMU
// would start, naming the VM and the file.
func TestOverlayRealQemuImg(t *testing.T) {
	testenv.RequireProgram(t, QEMUImg)
	dir := t.TempDir()
	base := rawImage(t, dir, "base.raw")
	before := fileSum(t, base)
	runDir := filepath.Join(dir, "run")
	if err := os.Mkdir(runDir, 0o700); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s := Spec{Name: "ov", Kernel: "/k", RunDir: runDir, Disks: []Disk{{Path: base}}}
	s, err := s.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	files, made, err := prepareDisks(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	closeDisks(files)
	overlay := filepath.Join(runDir, "disk-0.qcow2")
	if len(made) != 1 || made[0] != overlay {
		t.Fatalf("overlays made %q, want %s", made, overlay)
	}
	info, err := InspectImage(ctx, overlay, "qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if info.Format != "qcow2" || info.BackingFilename != base || info.BackingFormat != "raw" || info.VirtualSize != 4<<20 {
		t.Errorf("overlay info %+v, want qcow2 on %s (raw, 4 MiB)", info, base)
	}
	qemuImg(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 1M", "-c", "write -P 0xcd 3M 64k", overlay)
	if out := qemuImg(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0xab 0 1M", overlay); strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("overlay does not hold the write: %s", out)
	}
	if fileSum(t, base) != before {
		t.Fatal("a write through the overlay changed the base image")
	}

	// A second start keeps the overlay, and so what the guest wrote.
	files, made, err = prepareDisks(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	closeDisks(files)
	if len(made) != 0 {
		t.Errorf("overlay made again: %q", made)
	}
	if out := qemuImg(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0xcd 3M 64k", overlay); strings.Contains(out, "Pattern verification failed") {
		t.Errorf("overlay lost the write on reuse: %s", out)
	}

	// Errors before QEMU: a missing image, a wrong format.
	junk := filepath.Join(dir, "junk.qcow2")
	if err := os.WriteFile(junk, []byte("not an image"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		d    Disk
		want string
	}{
		{Disk{Path: filepath.Join(dir, "gone.raw")}, "vm ov: disk " + dir + "/gone.raw: the image does not exist"},
		{Disk{Path: junk, Format: "qcow2"}, "vm ov: disk " + junk + ": cannot be read as a qcow2 image"}, {Disk{Path: junk, Format: "qcow2"}, "Image is not in qcow2 format); set the disk's format to what the file holds"},
		{Disk{Path: junk, Format: "qcow2", Mode: DiskPersistent}, "cannot be read as a qcow2 image"},
		{Disk{Path: dir}, "is a directory"},
	} {
		s := Spec{Name: "ov", Kernel: "/k", RunDir: runDir, Disks: []Disk{tc.d}}
		s, err := s.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		_, made, err := prepareDisks(ctx, s)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("disk %+v: %v, want %q", tc.d, err, tc.want)
		}
		if len(made) != 0 {
			t.Errorf("overlay %q made for a bad image", made)
		}
	}
	// An image with a backing file of its own: QEMU opens that one by
	// path, so its user must be able to read it.
	chained := filepath.Join(dir, "chained.qcow2")
	if err := CreateOverlay(ctx, base, "raw", chained); err != nil {
		t.Fatal(err)
	}
	cs := Spec{Name: "ov", Kernel: "/k", RunDir: runDir, Disks: []Disk{{Path: chained, Format: "qcow2", Mode: DiskSnapshot}},
		User: &User{UID: 65534, GID: 65534}}
	if cs, err = cs.withDefaults(); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 { // t.TempDir is 0700: nobody cannot reach the base
		_, _, err := prepareDisks(ctx, cs)
		if want := "vm ov: disk " + chained + ": the image is an overlay on " + base + ", which QEMU opens itself, as uid 65534"; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("backing file out of QEMU's reach: %v, want %q", err, want)
		}
	}
	cs.User = nil
	files, _, err = prepareDisks(ctx, cs)
	if err != nil {
		t.Errorf("backing file for QEMU as root: %v", err)
	}
	closeDisks(files)

	if ents, _ := os.ReadDir(runDir); len(ents) != 1 {
		t.Errorf("run dir holds %v, want only the first overlay", ents)
	}
}

// diskSpec is a QEMU that boots nothing (a blank disk, firmware only,
// stopped before the first instruction), so only QEMU's start-up counts,
// run as nobody with the images in a directory nobody cannot enter.
func diskSpec(t *testing.T, name string, disks ...Disk) Spec {
	dir := t.TempDir()
	return Spec{Name: name, Machine: MachineQ35, Accel: AccelTCG, RunDir: filepath.Join(dir, "run"),
		Disks: disks, ExtraArgs: []string{"-S"}, User: &User{UID: 65534, GID: 65534}, PowerdownGrace: time.Millisecond}
}

// TestDiskModesRealQEMU: QEMU as an unprivileged user gets each mode
// through fd sets (the images sit in a 0700 directory); snapshot mode is
// QEMU's snapshot=on (QEMU reports a temporary overlay on the image);
// two VMs writing one persistent image: the second is refused with the
// lock failure put in words naming VM and image; a snapshot on an image
// another VM writes is refused too; overlays on one base run side by
// side; a failed start removes the overlay it made.
func TestDiskModesRealQEMU(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireProgram(t, DefaultBinary)
	testenv.RequireProgram(t, QEMUImg)
	dir := t.TempDir() // 0700, root's
	img := rawImage(t, dir, "shared.raw")
	before := fileSum(t, img)

	a := start(t, diskSpec(t, "a", Disk{Path: img, Mode: DiskPersistent}))
	if !strings.Contains(strings.Join(a.Cmdline(), " "), "file=/dev/fdset/1,format=raw ") {
		t.Errorf("persistent disk: %q", a.Cmdline())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	b := diskSpec(t, "b", Disk{Path: img, Mode: DiskPersistent})
	if vm, err := Start(ctx, b); err == nil {
		vm.Stop(ctx)
		t.Fatal("a second VM writing the persistent image started")
	} else if want := "vm b: disk " + img + " is in use by another running VM, and two VMs cannot write one image"; !strings.Contains(err.Error(), want) {
		t.Errorf("second writer: %v\nwant %q", err, want)
	} else {
		t.Log(err)
	}
	c := diskSpec(t, "c", Disk{Path: img, Mode: DiskSnapshot})
	if vm, err := Start(ctx, c); err == nil {
		vm.Stop(ctx)
		t.Fatal("a snapshot of an image another VM writes started")
	} else if want := "vm c: disk " + img + " is being written by another running VM"; !strings.Contains(err.Error(), want) {
		t.Errorf("reader of a written image: %v\nwant %q", err, want)
	}
	o := diskSpec(t, "o", Disk{Path: img})
	if vm, err := Start(ctx, o); err == nil {
		vm.Stop(ctx)
		t.Fatal("an overlay on an image another VM writes started")
	}
	if ents, _ := os.ReadDir(o.RunDir); len(ents) != 0 {
		t.Errorf("failed start left %v in its run dir", ents)
	}
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	// Without the writer: a snapshot and two overlays on one base. The
	// snapshot's temporary overlay does not depend on root's TMPDIR,
	// which QEMU's user may not be able to write.
	t.Setenv("TMPDIR", t.TempDir())
	s := start(t, diskSpec(t, "s", Disk{Path: img, Mode: DiskSnapshot}))
	if !strings.Contains(strings.Join(s.Cmdline(), " "), "format=raw,snapshot=on") {
		t.Errorf("snapshot disk: %q", s.Cmdline())
	}
	raw, err := s.QMP(ctx, "query-block", nil)
	if err != nil {
		t.Fatal(err)
	}
	// QEMU's temporary overlay (a qcow2 in its temp dir) over the image.
	if !strings.Contains(string(raw), `"drv": "qcow2"`) || !strings.Contains(string(raw), `"backing-image"`) {
		t.Errorf("snapshot=on shows no temporary overlay: %s", raw)
	}
	o1 := start(t, diskSpec(t, "o1", Disk{Path: img}))
	o2 := start(t, diskSpec(t, "o2", Disk{Path: img}, Disk{Path: img, ReadOnly: true}))
	for _, vm := range []*VM{o1, o2} {
		raw, err := vm.QMP(ctx, "query-block", nil)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(raw), `"backing-image"`) {
			t.Errorf("vm %s: no backing image: %s", vm.Name(), raw)
		}
		if _, err := os.Stat(filepath.Join(vm.spec.RunDir, "disk-0.qcow2")); err != nil {
			t.Errorf("vm %s: overlay: %v", vm.Name(), err)
		}
	}
	if fileSum(t, img) != before {
		t.Error("the image changed")
	}
}

// A raw disk file is taken as it is: qemu-img would only say it is raw,
// and running it costs a process start on the way to every warm exec
// guest's boot. Another format is still checked by qemu-img.
func TestRawDiskWithoutQemuImg(t *testing.T) {
	dir := t.TempDir()
	img := rawImage(t, dir, "prog.raw")
	t.Setenv("PATH", t.TempDir()) // no qemu-img
	for _, d := range []Disk{{Path: img, ReadOnly: true}, {Path: img, Mode: DiskPersistent}} {
		s, err := Spec{Name: "raw", Kernel: "/k", RunDir: filepath.Join(dir, "run"), Disks: []Disk{d}}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		files, _, err := prepareDisks(context.Background(), s)
		if err != nil {
			t.Fatalf("%+v: %v", d, err)
		}
		closeDisks(files)
	}
	s, err := Spec{Name: "q", Kernel: "/k", RunDir: filepath.Join(dir, "run"), Disks: []Disk{{Path: img, Format: "qcow2", ReadOnly: true}}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := prepareDisks(context.Background(), s); err == nil || !strings.Contains(err.Error(), "qemu-img not found") {
		t.Errorf("qcow2 without qemu-img: %v", err)
	}
}
