package snapshot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/images"
)

// The RAM file's integrity. QEMU 7.2 opens a memory-backend-file
// read-write even for the private (copy-on-write) mapping of a restored
// guest, and its readonly=on turns the guest's RAM into ROM (a guest
// restored or booted on it does not run), so the file must stay
// writable by QEMU's user, and a compromised QEMU could change what later
// guests map. Every restore therefore checks the file against the digest
// recorded when it was saved. Hashing about 100 MiB of data costs tens of
// milliseconds, so the digest is trusted while the file's identity (device,
// inode, size, modification and change time) is the one recorded with it:
// any write (write, a shared mapping, truncate, fallocate, utimes) moves
// the change time, which no unprivileged writer can set back. A changed
// identity means a full hash.

// fileID is what identifies a file's contents without reading them.
type fileID struct {
	Dev   uint64 `json:"dev"`
	Ino   uint64 `json:"ino"`
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtime_ns"`
	Ctime int64  `json:"ctime_ns"`
}

func idOf(f *os.File) (fileID, error) {
	st, err := f.Stat()
	if err != nil {
		return fileID{}, err
	}
	s, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, fmt.Errorf("%s: no file status", f.Name())
	}
	return fileID{Dev: s.Dev, Ino: s.Ino, Size: s.Size,
		Mtime: s.Mtim.Sec*1e9 + s.Mtim.Nsec, Ctime: s.Ctim.Sec*1e9 + s.Ctim.Nsec}, nil
}

// ramPage is the unit of ramDigest.
const ramPage = 4096

// ramDigest is the SHA-256 of a RAM file's contents, independent of
// which zeros are holes: the size, then every 4 KiB page that is not
// all zero with its offset. Holes (most of a guest's RAM) are skipped
// without reading them (SEEK_DATA/SEEK_HOLE).
func ramDigest(f *os.File) (string, error) {
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	size := st.Size()
	h := sha256.New()
	var rec [8]byte
	binary.BigEndian.PutUint64(rec[:], uint64(size))
	h.Write(rec[:])
	buf := make([]byte, 1<<20)
	zero := make([]byte, ramPage)
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil { // no SEEK_DATA here: read everything
			data = off
		}
		end := size
		if err == nil {
			if hole, err := unix.Seek(fd, data, unix.SEEK_HOLE); err == nil {
				end = hole
			}
		}
		// Whole pages, so that the pages hashed do not depend on where
		// the file system's blocks begin and end.
		data &^= ramPage - 1
		end = min(size, (end+ramPage-1)&^(ramPage-1))
		for p := data; p < end; {
			n := min(int64(len(buf)), end-p)
			m, err := f.ReadAt(buf[:n], p)
			if err != nil && !(errors.Is(err, io.EOF) && m > 0) {
				return "", fmt.Errorf("%s: %w", f.Name(), err)
			}
			for i := 0; i < m; i += ramPage {
				pg := buf[i:min(i+ramPage, m)]
				if bytes.Equal(pg, zero[:len(pg)]) {
					continue
				}
				binary.BigEndian.PutUint64(rec[:], uint64(p)+uint64(i))
				h.Write(rec[:])
				h.Write(pg)
			}
			p += int64(m)
		}
		off = end
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// sealRAM records the digest of the saved RAM file and its identity in
// m. The file must not change while it is hashed (the saving QEMU has
// exited).
func sealRAM(f *os.File, m *Metadata) error {
	before, err := idOf(f)
	if err != nil {
		return err
	}
	sum, err := ramDigest(f)
	if err != nil {
		return err
	}
	after, err := idOf(f)
	if err != nil {
		return err
	}
	if before != after {
		return fmt.Errorf("the RAM file %s changed while it was hashed (is the saving QEMU still running?)", f.Name())
	}
	m.RAMSHA256, m.RAMFile = sum, after
	return nil
}

// checkRAM checks the RAM file against the snapshot's metadata: its
// identity as recorded, or else its digest. It returns the identity to
// record when the file changed identity but not contents (changed is
// then true).
func checkRAM(f *os.File, m Metadata) (id fileID, changed bool, err error) {
	id, err = idOf(f)
	if err != nil {
		return id, false, err
	}
	if id.Size != int64(m.Key.MemoryMiB)<<20 {
		return id, false, fmt.Errorf("%w: the RAM file %s is not %d MiB", errCorrupt, f.Name(), m.Key.MemoryMiB)
	}
	if id == m.RAMFile {
		return id, false, nil
	}
	sum, err := ramDigest(f)
	if err != nil {
		return id, false, err
	}
	if sum != m.RAMSHA256 {
		return id, false, fmt.Errorf("%w: the RAM file %s does not have the recorded checksum (it was written after the snapshot was saved)", errCorrupt, f.Name())
	}
	return id, true, nil
}

// trustRAM records id as the RAM file's identity in the snapshot's
// metadata after a full hash found the contents unchanged. It is best
// effort: it gives up when another process holds the snapshot's lock (a
// rebuild), and changes nothing when the snapshot was replaced meanwhile.
func trustRAM(ctx context.Context, dir string, meta Metadata, id fileID) {
	lctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	unlock, err := images.Lock(lctx, dir+".lock", nil)
	if err != nil {
		return
	}
	defer unlock()
	m, err := readSnapshot(dir, meta.Key)
	if err != nil || m.BuildID != meta.BuildID || m.RAMSHA256 != meta.RAMSHA256 {
		return
	}
	m.RAMFile = id
	writeMeta(dir, m)
}

// writeMeta replaces the metadata of the snapshot in dir atomically.
func writeMeta(dir string, m Metadata) error {
	b, _ := json.MarshalIndent(m, "", "  ")
	tmp := filepath.Join(dir, "."+FileMeta+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, FileMeta))
}
