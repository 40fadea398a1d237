package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Disk modes: how a guest's writes reach (or do not reach) an image.
const (
	// DiskOverlay writes into a qcow2 overlay on the image, kept in the
	// VM's run directory (so it goes with the lab) and reused when the VM
	// starts again; the image itself is only read.
	DiskOverlay = "overlay"
	// DiskSnapshot is QEMU's snapshot=on: a temporary overlay QEMU makes
	// and deletes itself; writes are lost when QEMU exits.
	DiskSnapshot = "snapshot"
	// DiskPersistent writes into the image.
	DiskPersistent = "persistent"
)

// QEMUImg is the program that makes and inspects disk images (Debian
// package qemu-utils).
const QEMUImg = "qemu-img"

// Disk is one disk image of a guest, attached as a virtio disk in the
// order of Spec.Disks (the first is vda).
type Disk struct {
	Path     string // the image: a file or a block device
	Format   string // raw (default), qcow2, ...
	Mode     string // overlay (default), snapshot or persistent; ignored when ReadOnly
	ReadOnly bool   // the guest sees a read-only disk; the image is opened read-only

	// Overlay is where an overlay-mode disk's overlay lives; default
	// RunDir/disk-N.qcow2. It must lie in RunDir, which only root can
	// write.
	Overlay string
}

// DiskFiles are the open files of one disk that QEMU inherits. QEMU
// reaches them as fd sets (/dev/fdset/N): it opens a node read-only or
// read-write and takes the fd of that access mode from the set, so a
// writable node needs both. QEMU's user then needs no access to the
// image's path (it may sit in root's home), and QEMU's image locks still
// work, as every start opens its own file descriptions.
type DiskFiles struct {
	// Top is the node the guest sees: the overlay in overlay mode, else
	// the image. TopRW is nil when QEMU opens it only for reading.
	TopRO, TopRW *os.File
	// Base is the image under an overlay (overlay mode only), read-only.
	Base *os.File
}

func (d Disk) withDefaults(i int, runDir string) (Disk, error) {
	if d.Format == "" {
		d.Format = "raw"
	}
	if d.Mode == "" {
		d.Mode = DiskOverlay
	}
	switch d.Mode {
	case DiskOverlay, DiskSnapshot, DiskPersistent:
	default:
		return d, fmt.Errorf("disk %d (%s): mode %q is not one of overlay, snapshot, persistent", i, d.Path, d.Mode)
	}
	if d.Path == "" {
		return d, fmt.Errorf("disk %d: no image path", i)
	}
	if !validID(d.Format) {
		return d, fmt.Errorf("disk %d (%s): format %q is not a QEMU format name like raw or qcow2", i, d.Path, d.Format)
	}
	if d.overlay() {
		if d.Overlay == "" {
			d.Overlay = filepath.Join(runDir, "disk-"+strconv.Itoa(i)+".qcow2")
		}
		if filepath.Dir(filepath.Clean(d.Overlay)) != filepath.Clean(runDir) {
			return d, fmt.Errorf("disk %d (%s): overlay %s is not in the run dir %s", i, d.Path, d.Overlay, runDir)
		}
	}
	return d, nil
}

// overlay reports whether the guest writes into an overlay vmnet makes.
func (d Disk) overlay() bool { return !d.ReadOnly && d.Mode == DiskOverlay }

// writable reports whether QEMU opens the top node for writing.
func (d Disk) writable() bool { return !d.ReadOnly && d.Mode != DiskSnapshot }

// fdSets are the QEMU fd set ids of disk i: its top node and its base.
func fdSets(i int) (top, base int) { return 2*i + 1, 2*i + 2 }

// fdSetRE finds the fd set QEMU names in an error about an image.
var fdSetRE = regexp.MustCompile(`/dev/fdset/(\d+)`)

// ImageInfo is what qemu-img reports about an image.
type ImageInfo struct {
	Format          string `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	BackingFilename string `json:"full-backing-filename"`
	BackingFormat   string `json:"backing-filename-format"`
}

// runQEMUImg runs qemu-img with a bound on its run time; an error carries
// qemu-img's own message.
func runQEMUImg(ctx context.Context, args ...string) ([]byte, error) {
	if _, err := exec.LookPath(QEMUImg); err != nil {
		return nil, fmt.Errorf("%s not found (install qemu-utils): %w", QEMUImg, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var out, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, QEMUImg, args...)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		msg = strings.TrimPrefix(msg, QEMUImg+": ")
		if msg == "" {
			msg = err.Error()
		}
		return nil, errors.New(msg)
	}
	return out.Bytes(), nil
}

// InspectImage reads path as an image of the given format (no probing:
// a raw file that merely looks like qcow2 stays raw). It fails when the
// file is missing or does not hold that format.
func InspectImage(ctx context.Context, path, format string) (ImageInfo, error) {
	// -U: only read the header; a lock held by a running guest is
	// QEMU's to report, with the VM's name.
	out, err := runQEMUImg(ctx, "info", "-U", "--output=json", "-f", format, path)
	if err != nil {
		return ImageInfo{}, err
	}
	var info ImageInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return ImageInfo{}, fmt.Errorf("cannot read %s's answer: %w", QEMUImg, err)
	}
	return info, nil
}

// CreateOverlay makes a qcow2 overlay at overlay on the image base (an
// absolute path) of the given format. The overlay records both, so that
// nothing is ever probed; the base is only read.
func CreateOverlay(ctx context.Context, base, format, overlay string) error {
	if !filepath.IsAbs(base) {
		return fmt.Errorf("overlay base %s is not an absolute path", base)
	}
	_, err := runQEMUImg(ctx, "create", "-q", "-f", "qcow2", "-b", base, "-F", format, overlay)
	return err
}

// prepareDisks checks every disk of s and opens what QEMU inherits; for
// an overlay-mode disk it first makes the overlay in RunDir (or reuses the
// one an earlier start of this VM made on the same image). Errors name
// the VM and the image and say what to do. The caller closes the files.
//
// made lists the overlays this call created: a Start that fails later
// removes them again.
func prepareDisks(ctx context.Context, s Spec) (_ []DiskFiles, made []string, err error) {
	var files []DiskFiles
	defer func() {
		if err != nil {
			closeDisks(files)
			for _, p := range made {
				os.Remove(p)
			}
		}
	}()
	for i, d := range s.Disks {
		what := fmt.Sprintf("%s: disk %s", s.name(), d.Path)
		st, err := os.Stat(d.Path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, made, fmt.Errorf("%s: the image does not exist; fix the path in the lab file", what)
			}
			return nil, made, fmt.Errorf("%s: %w", what, err)
		}
		if st.IsDir() {
			return nil, made, fmt.Errorf("%s: is a directory, not a disk image", what)
		}
		// Any file is a raw image without a backing file: asking qemu-img
		// (a process start on the way to every warm exec guest's boot,
		// whose program comes on a raw disk) tells nothing more.
		var info ImageInfo
		if d.Format != "raw" || !st.Mode().IsRegular() {
			info, err = InspectImage(ctx, d.Path, d.Format)
		}
		if err != nil {
			return nil, made, fmt.Errorf("%s: cannot be read as a %s image (%v); set the disk's format to what the file holds (qemu-img info shows it)", what, d.Format, err)
		}
		// vmnet hands QEMU the image, but QEMU opens the image's own
		// backing file by path, as its user.
		if b := info.BackingFilename; b != "" && s.User != nil && s.User.UID != 0 {
			if err := userCan(s.User, b, 4, true); err != nil {
				return nil, made, fmt.Errorf("%s: the image is an overlay on %s, which QEMU opens itself, as %s: %w (make it readable for that user, or flatten the image with qemu-img convert)", what, b, s.User, err)
			}
		}
		var df DiskFiles
		top := d.Path
		if d.overlay() {
			created, err := ensureOverlay(ctx, d)
			if err != nil {
				return nil, made, fmt.Errorf("%s: overlay %s: %w", what, d.Overlay, err)
			}
			if created {
				made = append(made, d.Overlay)
			}
			top = d.Overlay
			if df.Base, err = openDisk(d.Path, os.O_RDONLY); err != nil {
				return nil, made, fmt.Errorf("%s: %w", what, err)
			}
		}
		files = append(files, df)
		if files[i].TopRO, err = openDisk(top, os.O_RDONLY); err != nil {
			return nil, made, fmt.Errorf("%s: %w", what, err)
		}
		if d.writable() {
			if files[i].TopRW, err = openDisk(top, os.O_RDWR); err != nil {
				return nil, made, fmt.Errorf("%s: open for writing: %w (mode %s writes into the image; use mode overlay to leave it alone)", what, err, d.Mode)
			}
		}
	}
	return files, made, nil
}

// ensureOverlay makes d's overlay, or keeps the one that exists when it
// is a qcow2 overlay on the same image and format (a VM that starts again
// in the same lab keeps what its guest wrote).
func ensureOverlay(ctx context.Context, d Disk) (created bool, err error) {
	base, err := filepath.Abs(d.Path)
	if err != nil {
		return false, err
	}
	if fi, err := os.Lstat(d.Overlay); err == nil {
		if fi.Mode().IsRegular() {
			if info, err := InspectImage(ctx, d.Overlay, "qcow2"); err == nil && info.BackingFilename == base && info.BackingFormat == d.Format {
				return false, nil
			}
		}
		// The run directory is root's and vmnet's alone: what sits at
		// the overlay's name is an overlay of an earlier lab file.
		if err := os.Remove(d.Overlay); err != nil {
			return false, err
		}
	}
	if err := CreateOverlay(ctx, base, d.Format, d.Overlay); err != nil {
		return false, err
	}
	return true, nil
}

// openDisk opens an image for QEMU: a regular file or a block device,
// never a link's surprise (a FIFO or a directory).
func openDisk(path string, flag int) (*os.File, error) {
	f, err := os.OpenFile(path, flag|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err == nil && !st.Mode().IsRegular() && st.Mode()&os.ModeDevice == 0 {
		err = fmt.Errorf("%s is neither a file nor a block device", path)
	}
	if err == nil {
		// QEMU expects blocking I/O on its image fds.
		_, err = unix.FcntlInt(f.Fd(), unix.F_SETFL, flag&unix.O_ACCMODE)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func closeDisks(files []DiskFiles) {
	for _, df := range files {
		for _, f := range []*os.File{df.TopRO, df.TopRW, df.Base} {
			if f != nil {
				f.Close()
			}
		}
	}
}

// diskArgs adds the -add-fd and -drive arguments of disk i; fd registers
// a file QEMU inherits and returns its number.
func diskArgs(i int, d Disk, df DiskFiles, machine string, fd func(*os.File) string) ([]string, error) {
	if df.TopRO == nil || (d.writable() && df.TopRW == nil) || (d.overlay() && df.Base == nil) {
		return nil, fmt.Errorf("disk %s: image not opened", d.Path)
	}
	topSet, baseSet := fdSets(i)
	var args []string
	addFd := func(f *os.File, set int) {
		args = append(args, "-add-fd", "fd="+fd(f)+",set="+strconv.Itoa(set))
	}
	if df.TopRW != nil {
		addFd(df.TopRW, topSet)
	}
	addFd(df.TopRO, topSet)
	drive := "file=/dev/fdset/" + strconv.Itoa(topSet)
	switch {
	case d.ReadOnly:
		drive += ",format=" + d.Format + ",readonly=on"
	case d.overlay():
		addFd(df.Base, baseSet)
		// The overlay names the image by path; the base's fd set takes
		// its place, as QEMU's user may not reach that path.
		drive += ",format=qcow2,backing.driver=" + d.Format + ",backing.file.filename=/dev/fdset/" + strconv.Itoa(baseSet)
	case d.Mode == DiskSnapshot:
		drive += ",format=" + d.Format + ",snapshot=on"
	default:
		drive += ",format=" + d.Format
	}
	id := "vmnet-disk" + strconv.Itoa(i)
	if machine == MachineMicroVM {
		args = append(args, "-drive", "id="+id+",if=none,"+drive, "-device", "virtio-blk-device,drive="+id)
	} else {
		args = append(args, "-drive", "id="+id+",if=virtio,"+drive)
	}
	return args, nil
}

// lockError turns QEMU's image locking failure into words: which disk,
// who holds it, what to do. It returns nil when stderr holds none.
func lockError(s Spec, stderr string) error {
	shared := strings.Contains(stderr, `Failed to get shared "write" lock`)
	if !shared && !strings.Contains(stderr, `Failed to get "write" lock`) {
		return nil
	}
	path := "an image"
	if m := fdSetRE.FindStringSubmatch(stderr); m != nil {
		if n, err := strconv.Atoi(m[1]); err == nil && n > 0 && (n-1)/2 < len(s.Disks) {
			path = s.Disks[(n-1)/2].Path
		}
	}
	if shared {
		return fmt.Errorf("%s: disk %s is being written by another running VM (a QEMU with it in mode persistent), so this VM cannot use it; stop that VM, or give it mode overlay or snapshot for this disk", s.name(), path)
	}
	return fmt.Errorf("%s: disk %s is in use by another running VM, and two VMs cannot write one image (mode persistent) without corrupting it; stop the other VM, or use mode overlay or snapshot for this disk in one of them", s.name(), path)
}
