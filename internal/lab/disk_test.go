package lab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmnet/vmnet/images"
	"github.com/vmnet/vmnet/internal/qemu"
	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/vmconfig"
)

// diskLab writes body as dir/lab.toml and loads it with the real file
// checks (the disk images exist).
func diskLab(t *testing.T, dir, body string) *vmconfig.Lab {
	t.Helper()
	path := filepath.Join(dir, "lab.toml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := vmconfig.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// patternImage writes a 4 MiB raw image and returns its SHA-256.
func patternImage(t *testing.T, path string) [32]byte {
	t.Helper()
	b := bytes.Repeat([]byte("vmnet-base "), 4<<20/11+1)[:4<<20]
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func sumOf(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// diskImage is the test image (its /init loads the virtio disk driver).
func diskImage(t *testing.T) images.Image {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireProgram(t, qemu.DefaultBinary)
	testenv.RequireProgram(t, qemu.QEMUImg)
	img, err := images.Ensure(context.Background(), images.Options{})
	if err != nil {
		testenv.Missing(t, "guest image: %v", err)
	}
	return img
}

// dataDiskLab is a lab (its name goes in for the %q) of one test-image
// VM with an extra raw disk, data.raw, in the default mode.
const dataDiskLab = `[lab]
name = %q
state_dir = "state"
[[vm]]
name = "g"
  [[vm.disk]]
  path = "data.raw"
`

// guestWrite overwrites the guest's vda (a block device: dd would make a
// file in its place) with zeros and reads it back (dropping the guest's
// caches), so the write went through QEMU.
const guestWrite = "test -b /dev/vda && dd if=/dev/zero of=/dev/vda bs=64k count=16 conv=fsync 2>/dev/null && echo 3 > /proc/sys/vm/drop_caches && " +
	"test \"$(head -c 1048576 /dev/vda | tr -d '\\0' | wc -c)\" = 0 && echo zeroed"

// TestDiskOverlayLab (issue 11, disks): a test-image VM with an extra raw
// disk in the default mode gets a qcow2 overlay in its state directory;
// the guest overwrites its disk and reads its own write back; after
// `down` the base image's SHA-256 is unchanged and no overlay is left.
func TestDiskOverlayLab(t *testing.T) {
	testenv.RequirePrivateRun(t)
	img := diskImage(t)
	ns := testenv.NetNS(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "data.raw")
	before := patternImage(t, base)
	state := filepath.Join(dir, "state")
	cfg := diskLab(t, dir, fmt.Sprintf(dataDiskLab, "dk"))
	if d := cfg.VMs[0].Disks; len(d) != 1 || d[0].Mode != vmconfig.DiskOverlay || d[0].Boot || cfg.VMs[0].Disk != "" {
		t.Fatalf("disks %+v: want one overlay-mode data disk", d)
	}
	overlay := filepath.Join(state, "vm-g", "disk-0.qcow2")
	testenv.Do(t, ns, func() error {
		l, err := New(cfg, Options{Image: &img, Logf: t.Logf})
		if err != nil {
			return err
		}
		defer l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := l.Up(ctx, 2*time.Minute); err != nil {
			return err
		}
		info, err := qemu.InspectImage(ctx, overlay, "qcow2")
		if err != nil {
			return err
		}
		if info.BackingFilename != base || info.BackingFormat != "raw" {
			t.Errorf("overlay %+v: want one on %s (raw)", info, base)
		}
		var out bytes.Buffer
		res, err := Shell(ctx, state, "g", guestWrite, &out)
		if err != nil {
			return err
		}
		if res.Status != 0 || !strings.Contains(out.String(), "zeroed") {
			t.Errorf("guest write: status %d, output %q", res.Status, out.String())
		}
		// The write is in the overlay: it no longer reads as the base.
		if o, err := exec.Command(qemu.QEMUImg, "compare", "-U", "-f", "qcow2", "-F", "raw", overlay, base).CombinedOutput(); err == nil {
			t.Errorf("overlay still equals the base after the guest's write: %s", o)
		}
		cur, err := CurrentNetNS()
		if err != nil {
			return err
		}
		return Down(ctx, "dk", state, cur, t.Logf)
	})
	if sumOf(t, base) != before {
		t.Error("the base image changed")
	}
	if _, err := os.Stat(overlay); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("overlay left after down: %v", err)
	}
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state directory left after down: %v", err)
	}
}

// TestDiskRunThrowsOverlayAway (issue 11, disks): `vmnet run` gives the
// VM's disk an overlay in its private run directory; the guest's write
// never reaches the image, and nothing is left once the run returns.
func TestDiskRunThrowsOverlayAway(t *testing.T) {
	img := diskImage(t)
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // where Run makes its private directory
	dir := t.TempDir()
	base := filepath.Join(dir, "data.raw")
	before := patternImage(t, base)
	cfg := diskLab(t, dir, fmt.Sprintf(dataDiskLab, "dr"))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	status, err := Run(ctx, cfg, "g", guestWrite+" && ! test -e /dev/vdb",
		RunOptions{Options: Options{Image: &img, Logf: t.Logf}, BootTimeout: 2 * time.Minute, Timeout: time.Minute})
	if err != nil || status != 0 {
		t.Fatalf("run: status %d, %v", status, err)
	}
	if sumOf(t, base) != before {
		t.Error("the base image changed")
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("left in the temp dir after the run: %v", ents)
	}
	if _, err := os.Stat(filepath.Join(dir, "state")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the run made the lab's state directory: %v", err)
	}
}

// TestDiskPersistentLocked (issue 11, disks): two VMs of one lab that
// write one image through different paths (a link, which validate cannot
// see through) are refused at start by QEMU's image lock, in words that
// name the VM and the image. The VMs boot from a blank disk (firmware
// only), so no guest boots.
func TestDiskPersistentLocked(t *testing.T) {
	testenv.RequirePrivateRun(t)
	testenv.RequireRoot(t)
	testenv.RequireProgram(t, qemu.DefaultBinary)
	testenv.RequireProgram(t, qemu.QEMUImg)
	ns := testenv.NetNS(t)
	dir := t.TempDir()
	shared := filepath.Join(dir, "shared.raw")
	before := patternImage(t, shared)
	if err := os.Symlink("shared.raw", filepath.Join(dir, "link.raw")); err != nil {
		t.Fatal(err)
	}
	// Validate refuses the same path twice.
	if _, err := vmconfig.Parse(filepath.Join(dir, "lab.toml"), []byte(`[lab]
name = "dl"
[[vm]]
name = "a"
disk = "shared.raw"
disk_mode = "persistent"
[[vm]]
name = "b"
disk = "shared.raw"
disk_mode = "persistent"
`), vmconfig.Options{}); err == nil || !strings.Contains(err.Error(), `vm "b": disk `+shared+` is written by vm "a"`) {
		t.Errorf("validate: %v", err)
	}
	cfg := diskLab(t, dir, `[lab]
name = "dl"
state_dir = "state"
[defaults]
accel = "tcg"
disk_mode = "persistent"
[[vm]]
name = "a"
disk = "shared.raw"
[[vm]]
name = "b"
disk = "link.raw"
`)
	testenv.Do(t, ns, func() error {
		l, err := New(cfg, Options{MaxBoots: 1, Logf: t.Logf})
		if err != nil {
			return err
		}
		defer l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		err = l.Up(ctx, 30*time.Second)
		// Boots take turns (MaxBoots 1) in no fixed order: whichever VM
		// starts second is refused, under the path it was given.
		const words = " is in use by another running VM, and two VMs cannot write one image"
		wantA := "vm a: disk " + shared + words
		wantB := "vm b: disk " + filepath.Join(dir, "link.raw") + words
		if err == nil || !strings.Contains(err.Error(), wantA) && !strings.Contains(err.Error(), wantB) {
			t.Errorf("up: %v\nwant %q or %q", err, wantA, wantB)
		} else {
			t.Log(err)
		}
		return l.Teardown(ctx)
	})
	if sumOf(t, shared) != before {
		// Only firmware ran: it reads the boot sector, writes nothing.
		t.Error("the image changed")
	}
}
