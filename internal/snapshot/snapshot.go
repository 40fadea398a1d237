// Package snapshot is the cache of warm boots shared by labs (`vmnet run`,
// `vmnet up`) and `vmnet exec`. The first boot of a shape (image, QEMU,
// machine, devices) boots cold with vmnet.warm up to the image's
// snapshot point, where the guest has done everything that does not
// depend on who it is, and saves it: the RAM stays in a file the guest
// mapped shared, the device state (about 0.6 MB) goes to a second file.
// Every later boot of that shape starts QEMU with -incoming on a private
// (copy-on-write) mapping of the RAM file and sends the guest its
// identity over ttyS1.
package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmnet/vmnet/images"
	"github.com/vmnet/vmnet/images/guest"
	"github.com/vmnet/vmnet/internal/cachefile"
	"github.com/vmnet/vmnet/internal/qemu"
)

// Request is one warm boot.
type Request struct {
	// Name names the guest in messages ("vm r1", "exec").
	Name string
	// Spec is the guest as restored: the test image's kernel and initrd,
	// Append with vmnet.warm and no per-guest parameters, a ControlSocket,
	// VMGenID and the Nonce of its exit marker.
	Spec qemu.Spec
	// SaveDisks, if set, replace Spec.Disks in the saving guest: a
	// placeholder of the same size and mode as the disk a restored guest
	// gets (the device set must match, the contents need not).
	SaveDisks []qemu.Disk
	Image     images.Image
	// Words are the guest's identity (vmnet.* parameters); Boot adds the
	// wall clock.
	Words []string
	// Dir is the cache; default DefaultDir().
	Dir  string
	Logf func(format string, args ...any)
	// Step, if set, reports the start of a long step and returns its end.
	Step func(what string) func(error)
}

// Boot starts the guest from the snapshot of its shape, saving one first
// if there is none. A snapshot that cannot be restored is replaced once.
func Boot(ctx context.Context, r Request) (*qemu.VM, error) {
	if r.Logf == nil {
		r.Logf = func(string, ...any) {}
	}
	if r.Step == nil {
		r.Step = func(string) func(error) { return func(error) {} }
	}
	key, err := keyOf(r.Spec, r.Image)
	if err != nil {
		return nil, err
	}
	root := r.Dir
	if root == "" {
		if root, err = DefaultDir(); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("snapshot cache %s: %w", root, err)
	}
	dir := filepath.Join(root, key.dirName())
	var failed string // build id of a snapshot that did not restore
	for attempt := 0; ; attempt++ {
		meta, err := readSnapshot(dir, key)
		if err != nil || (failed != "" && meta.BuildID == failed) {
			if meta, err = ensureSnapshot(ctx, r, key, dir, failed); err != nil {
				return nil, err
			}
		}
		withTime := append(r.Words[:len(r.Words):len(r.Words)], "vmnet.time="+strconv.FormatInt(time.Now().Unix(), 10))
		v, err := restore(ctx, r.Spec, dir, meta, withTime)
		if err == nil {
			return v, nil
		}
		if attempt > 0 {
			return nil, err
		}
		r.Logf("%s: the snapshot %s could not be restored (%v): booting cold once to replace it", r.Name, dir, err)
		failed = meta.BuildID
	}
}

// snapshotRecipe changes whenever what a snapshot holds changes meaning
// (the image's snapshot point, the device set of a warm guest).
const snapshotRecipe = "warm-1"

// Files of a snapshot directory; the metadata is written last, so its
// presence marks the snapshot complete.
const (
	FileRAM   = "ram"
	FileState = "state"
	FileMeta  = "snapshot.json"
)

// DefaultDir is where snapshots live: next to the image cache.
func DefaultDir() (string, error) {
	c, err := images.DefaultCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(c, "snapshots"), nil
}

// snapKey is everything that changes the state of a saved guest: a
// snapshot is used only by guests whose key is equal.
type snapKey struct {
	Recipe       string    `json:"recipe"`
	Image        string    `json:"image"` // the image directory (named by its inputs' hash)
	QEMU         string    `json:"qemu"`  // binary path, size, mtime and --version
	Machine      string    `json:"machine"`
	Accel        string    `json:"accel"`
	CPUs         int       `json:"cpus"`
	MemoryMiB    int       `json:"memory_mib"`
	NICs         []snapNIC `json:"nics"`
	HotplugPorts int       `json:"hotplug_ports"`
	Append       string    `json:"append"`
	ExtraArgs    []string  `json:"extra_args"`
	UID          int64     `json:"uid"` // QEMU's user owns the RAM file
	// Disks are the attached disks' sizes and modes: a restored guest's
	// kernel knows each disk's size from before the save.
	Disks []string `json:"disks,omitempty"`
}

type snapNIC struct {
	Model  string `json:"model"`
	Queues int    `json:"queues"`
	Vhost  bool   `json:"vhost"`
}

type Metadata struct {
	Key         snapKey `json:"key"`
	StateSHA256 string  `json:"state_sha256"`
	// RAMSHA256 is ramDigest of the RAM file, trusted while the file's
	// identity is RAMFile (see integrity.go).
	RAMSHA256 string    `json:"ram_sha256"`
	RAMFile   fileID    `json:"ram_file"`
	Built     time.Time `json:"built"`
	BuildID   string    `json:"build_id"`
}

var (
	qemuIDMu sync.Mutex
	qemuIDs  = map[string]string{}
)

// qemuIdentity names the QEMU binary exactly enough that an upgrade
// changes it: path, size, modification time and its version line.
func qemuIdentity(binary string) (string, error) {
	path, err := exec.LookPath(binary)
	if err != nil {
		return "", fmt.Errorf("QEMU binary %s not found: %w (install qemu-system-x86)", binary, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	id := fmt.Sprintf("%s %d %d", path, st.Size(), st.ModTime().UnixNano())
	qemuIDMu.Lock()
	defer qemuIDMu.Unlock()
	if v, ok := qemuIDs[id]; ok {
		return v, nil
	}
	// The version line is kept in the cache directory by the binary's
	// file identity (device, inode, size, modification and change time):
	// asking QEMU is a process start (tens of milliseconds, more on a
	// loaded host) on the way to every warm boot.
	var vkey, vfile string
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		fid := fileID{Dev: sys.Dev, Ino: sys.Ino, Size: sys.Size, Mtime: sys.Mtim.Sec*1e9 + sys.Mtim.Nsec, Ctime: sys.Ctim.Sec*1e9 + sys.Ctim.Nsec}
		vkey = fmt.Sprintf("%s %+v", path, fid)
		if dir, err := images.DefaultCacheDir(); err == nil {
			vfile = filepath.Join(dir, qemuVersionFile)
		}
	}
	versions := map[string]string{}
	if vfile != "" {
		if !cachefile.Read(vfile, &versions) {
			versions = map[string]string{}
		}
	}
	line, ok := versions[vkey]
	if !ok || line == "" {
		out, err := exec.Command(path, "--version").Output()
		if err != nil {
			return "", fmt.Errorf("%s --version: %w", path, err)
		}
		line, _, _ = strings.Cut(string(out), "\n")
		line = strings.TrimSpace(line)
		if vfile != "" && line != "" {
			versions[vkey] = line
			cachefile.Write(vfile, versions)
		}
	}
	v := id + " " + line
	qemuIDs[id] = v
	return v, nil
}

// qemuVersionFile keeps qemuIdentity's version lines, in the cache
// directory.
const qemuVersionFile = "qemu-versions.json"

// Prefetch starts, in the background, the slow part of finding the
// snapshot key of a guest of spec: asking its QEMU binary for its version
// (a process start of tens of milliseconds, more on a loaded machine), so
// that it overlaps whatever the caller prepares before Boot.
func Prefetch(spec qemu.Spec) {
	bin := spec.Binary
	if bin == "" {
		bin = qemu.DefaultBinary
	}
	go qemuIdentity(bin)
}

// keyOf is the snapshot key of a warm guest's spec (the spec of the
// saving guest: Append with vmnet.warm, no per-guest parameters).
func keyOf(s qemu.Spec, img images.Image) (snapKey, error) {
	k := snapKey{Recipe: snapshotRecipe, Image: filepath.Base(img.Dir), Machine: s.Machine, Accel: s.Accel,
		CPUs: s.CPUs, MemoryMiB: s.MemoryMiB, HotplugPorts: s.HotplugPorts, Append: s.Append, ExtraArgs: s.ExtraArgs}
	if k.Machine == "" {
		k.Machine = qemu.MachineQ35
	}
	if k.CPUs == 0 {
		k.CPUs = 1
	}
	if k.MemoryMiB == 0 {
		k.MemoryMiB = 256
	}
	bin := s.Binary
	if bin == "" {
		bin = qemu.DefaultBinary
	}
	var err error
	if k.QEMU, err = qemuIdentity(bin); err != nil {
		return k, err
	}
	if k.Accel == "" || k.Accel == qemu.AccelAuto {
		k.Accel = qemu.AccelTCG
		if h := qemu.HostCaps(true, false); h.KVM {
			k.Accel = qemu.AccelKVM
		}
	}
	vhost := qemu.HostCaps(false, false).VhostNet
	for _, n := range s.NICs {
		m := n.Model
		if m == "" {
			m = qemu.ModelVirtioPCI
		}
		k.NICs = append(k.NICs, snapNIC{Model: m, Queues: len(n.Queues), Vhost: n.Vhost == qemu.VhostOn || (n.Vhost != qemu.VhostOff && vhost)})
	}
	if s.User != nil {
		k.UID = int64(s.User.UID)
	}
	for _, d := range s.Disks {
		st, err := os.Stat(d.Path)
		if err != nil {
			return k, fmt.Errorf("%s: disk: %w", s.Name, err)
		}
		k.Disks = append(k.Disks, fmt.Sprintf("%s %s ro=%t %d", d.Format, d.Mode, d.ReadOnly, st.Size()))
	}
	return k, nil
}

func (k snapKey) dirName() string {
	b, _ := json.Marshal(k)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12])
}

// readSnapshot reads a complete snapshot's metadata and checks it is the
// one for key, with a state file of the recorded checksum.
func readSnapshot(dir string, key snapKey) (Metadata, error) {
	var m Metadata
	b, err := os.ReadFile(filepath.Join(dir, FileMeta))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("snapshot %s: %w", dir, err)
	}
	kb, _ := json.Marshal(key)
	mb, _ := json.Marshal(m.Key)
	if string(kb) != string(mb) {
		return m, fmt.Errorf("snapshot %s is of another shape", dir)
	}
	if m.RAMSHA256 == "" {
		return m, fmt.Errorf("snapshot %s has no checksum of its RAM file (saved by an older vmnet)", dir)
	}
	return m, nil
}

// ensureSnapshot builds the snapshot in dir unless another process did
// while this one waited for the lock. A snapshot whose build id is
// failed is replaced.
func ensureSnapshot(ctx context.Context, r Request, key snapKey, dir, failed string) (Metadata, error) {
	unlock, err := images.Lock(ctx, dir+".lock", nil)
	if err != nil {
		return Metadata{}, err
	}
	defer unlock()
	if m, err := readSnapshot(dir, key); err == nil && (failed == "" || m.BuildID != failed) {
		return m, nil
	}
	done := r.Step(r.Name + ": save a snapshot of its shape")
	m, err := buildSnapshot(ctx, r, key, dir)
	done(err)
	return m, err
}

// buildSnapshot boots the saving guest cold to its snapshot point, saves
// it into a new directory and renames that into place.
func buildSnapshot(ctx context.Context, r Request, key snapKey, dir string) (_ Metadata, err error) {
	m := Metadata{Key: key}
	spec := r.Spec
	if r.SaveDisks != nil {
		spec.Disks = r.SaveDisks
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".build-")
	if err != nil {
		return m, fmt.Errorf("snapshot cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	ram, err := os.OpenFile(filepath.Join(tmp, FileRAM), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return m, fmt.Errorf("snapshot cache: %w", err)
	}
	defer ram.Close()
	// QEMU 7.2 opens the RAM file read-write even for a private mapping,
	// so QEMU's user owns it.
	if spec.User != nil {
		if err := ram.Chown(int(spec.User.UID), int(spec.User.GID)); err != nil {
			return m, fmt.Errorf("snapshot cache: %w", err)
		}
	}
	state, err := os.OpenFile(filepath.Join(tmp, FileState), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return m, fmt.Errorf("snapshot cache: %w", err)
	}
	defer state.Close()
	s := spec
	s.RAM, s.RAMShared, s.Incoming = ram, true, nil
	s.ConsoleLog, s.ConsoleTee, s.Nonce = "", nil, ""
	v, err := qemu.Start(ctx, s)
	if err != nil {
		return m, err
	}
	defer v.Quit(context.Background())
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := v.WaitWarmPoint(wctx); err != nil {
		return m, err
	}
	if err := v.Save(wctx, state); err != nil {
		return m, err
	}
	v.Quit(ctx)
	if err := state.Sync(); err != nil {
		return m, err
	}
	if _, err := state.Seek(0, io.SeekStart); err != nil {
		return m, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, state); err != nil {
		return m, err
	}
	m.StateSHA256 = hex.EncodeToString(h.Sum(nil))
	if err := sealRAM(ram, &m); err != nil {
		return m, err
	}
	m.Built = time.Now().UTC()
	m.BuildID = guest.NewNonce()
	b, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, FileMeta), append(b, '\n'), 0o644); err != nil {
		return m, err
	}
	// Replace what is there (an incomplete or refused snapshot): move it
	// aside first, rename cannot replace a directory.
	old := ""
	if _, err := os.Stat(dir); err == nil {
		old = filepath.Join(filepath.Dir(dir), ".old-"+filepath.Base(dir)+"-"+m.BuildID)
		if err := os.Rename(dir, old); err != nil {
			return m, fmt.Errorf("snapshot cache: %w", err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		return m, fmt.Errorf("snapshot cache: %w", err)
	}
	if old != "" {
		os.RemoveAll(old) // clones still running keep their mapping
	}
	return m, nil
}

// errCorrupt marks a snapshot whose files do not match its metadata.
var errCorrupt = errors.New("snapshot is corrupt")

// restore starts a guest from the snapshot in dir and tells it words.
func restore(ctx context.Context, spec qemu.Spec, dir string, meta Metadata, words []string) (_ *qemu.VM, err error) {
	state, err := os.Open(filepath.Join(dir, FileState))
	if err != nil {
		return nil, err
	}
	defer state.Close()
	h := sha256.New()
	if _, err := io.Copy(h, state); err != nil {
		return nil, err
	}
	if hex.EncodeToString(h.Sum(nil)) != meta.StateSHA256 {
		return nil, fmt.Errorf("%w: the state file %s does not have the recorded checksum", errCorrupt, filepath.Join(dir, FileState))
	}
	if _, err := state.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	ram, err := os.Open(filepath.Join(dir, FileRAM))
	if err != nil {
		return nil, err
	}
	defer ram.Close()
	id, changed, err := checkRAM(ram, meta)
	if err != nil {
		return nil, err
	}
	if changed {
		// Same contents under a new identity (touched, copied): record it,
		// so that the next restore need not hash again.
		trustRAM(ctx, dir, meta, id)
	}
	s := spec
	s.RAM, s.RAMShared, s.Incoming = ram, false, state
	v, err := qemu.Start(ctx, s)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			v.Quit(context.Background())
		}
	}()
	if err := v.Restore(ctx); err != nil {
		return nil, err
	}
	if err := v.SendIdentity(ctx, words); err != nil {
		return nil, err
	}
	return v, nil
}

// Prune removes every snapshot (and leftovers of interrupted
// builds) and returns the directories removed. Guests running from a
// snapshot keep their mapping of its RAM file.
func Prune() ([]string, error) {
	root, err := DefaultDir()
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, e := range ents {
		p := filepath.Join(root, e.Name())
		if strings.HasSuffix(e.Name(), ".lock") {
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			return removed, fmt.Errorf("snapshot cache: %w", err)
		}
		removed = append(removed, p)
	}
	return removed, nil
}
