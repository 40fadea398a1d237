package gexec

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmnet/vmnet/images"
	"github.com/vmnet/vmnet/images/guest"
	"github.com/vmnet/vmnet/internal/qemu"
	"github.com/vmnet/vmnet/internal/snapshot"
)

// Warm execs. The guest is restored from a snapshot of the plain test
// image taken at its snapshot point, so the program cannot come in the
// initramfs: it comes on a read-only virtio disk (vda) that holds the
// overlay archive, padded with zeros to archiveDiskSize. The saving guest
// had a zero placeholder of that size there, which it never read (the
// kernel reads a disk's first blocks when it probes the partitions, and
// drops them from its cache when it closes the device), so the device
// set matches and the restored guest reads the archive that is there
// now. The command sent with the identity unpacks it and runs the
// wrapper, as a cold boot's /init would.

// archiveDiskSize is the size of the archive disk: every restored guest
// must see the size its snapshot saw. Sparse, so it costs nothing; it
// bounds program, host programs and testdata together.
const archiveDiskSize = 512 << 20

// unpackCmd is the command a restored guest runs: drop any cached block
// of vda (from before the save), unpack the archive into / and run the
// wrapper.
const unpackCmd = "blockdev --flushbufs /dev/vda 2>/dev/null; " +
	"if ! out=$(cpio -i -d -u </dev/vda 2>&1); then echo \"" + errorPrefix + "cannot unpack the program from its disk: $out\"; exit 125; fi; " +
	"exec /" + guestRun

// coldReason says why this run boots cold ("" for warm).
func (o *Options) coldReason() string {
	switch {
	case o.Cold:
		return "warm boots are off (--cold)"
	case o.Machine == qemu.MachineMicroVM:
		return "microvm has one serial port (the identity of a restored guest travels on the second) and no VM generation id device"
	}
	return ""
}

// bootWarm restores a guest from the snapshot of its shape (saving one
// first if there is none) and gives it the program on its disk.
func (o *Options) bootWarm(ctx context.Context, img images.Image, run string, user *qemu.User, nonce string, out *outputFilter, t0 time.Time, res *Result) (*qemu.VM, time.Time, error) {
	var buf bytes.Buffer
	// The saved guest loaded the modules before its snapshot point
	// (vmnet.modules): under TCG loading them takes about a second.
	if err := o.writeOverlay(ctx, &buf, img, nil); err != nil {
		return nil, time.Time{}, err
	}
	if buf.Len() > archiveDiskSize {
		return nil, time.Time{}, fmt.Errorf("program, host programs and testdata take %d MiB, more than the %d MiB disk of a warm boot", buf.Len()>>20, archiveDiskSize>>20)
	}
	archive := filepath.Join(run, "archive")
	placeholder := filepath.Join(run, "placeholder")
	for _, f := range []struct {
		path string
		data []byte
	}{{archive, buf.Bytes()}, {placeholder, nil}} {
		if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
			return nil, time.Time{}, err
		}
		if err := os.Truncate(f.path, archiveDiskSize); err != nil {
			return nil, time.Time{}, err
		}
	}
	res.Image = time.Since(t0)

	machine := o.Machine
	if machine == "" {
		machine = qemu.MachineQ35
	}
	app := guestCmdline
	if len(o.Modules) > 0 {
		app += " vmnet.modules=" + strings.Join(o.Modules, ",")
	}
	app += " vmnet.warm"
	disk := func(p string) []qemu.Disk { return []qemu.Disk{{Path: p, Format: "raw", ReadOnly: true}} }
	spec := qemu.Spec{
		Name: "exec", Machine: machine, Accel: o.Accel, CPUs: o.CPUs, MemoryMiB: o.MemoryMiB,
		Kernel: img.Kernel, Initrd: img.Initrd, Append: app,
		Disks:  disk(archive),
		RunDir: run, ConsoleTee: out, Logf: o.Logf, User: user,
		ControlSocket: filepath.Join(run, "control"), VMGenID: true, Nonce: nonce,
	}
	words, err := guest.Args{Nonce: nonce, Cmd: unpackCmd}.Params()
	if err != nil {
		return nil, time.Time{}, err
	}
	logf := o.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	start := time.Now()
	vm, err := snapshot.Boot(ctx, snapshot.Request{Name: "vmnet exec", Spec: spec, SaveDisks: disk(placeholder),
		Image: img, Words: words, Dir: o.SnapshotDir, Logf: logf,
		Step: func(what string) func(error) {
			s := time.Now()
			return func(err error) {
				if err == nil {
					logf("%s: %.3fs", what, time.Since(s).Seconds())
					start = time.Now() // the boot of this run starts now
				}
			}
		}})
	return vm, start, err
}
