package snapshot

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sparseRAM makes a sparse file of mib MiB with random data in chunks of
// chunk bytes every stride bytes, as a saved guest's RAM looks.
func sparseRAM(t testing.TB, mib int, chunk, stride int64) string {
	p := filepath.Join(t.TempDir(), FileRAM)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size := int64(mib) << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, chunk)
	for off := int64(0); off+chunk <= size; off += stride {
		rand.Read(buf)
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func digestOf(t *testing.T, p string) string {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := ramDigest(f)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestRAMDigest: the digest is of the contents, not of where the holes
// are (a copy with every zero written has the same digest), and one
// changed byte changes it.
func TestRAMDigest(t *testing.T) {
	p := sparseRAM(t, 8, 64<<10, 1<<20)
	// A page of zeros written in the middle of a hole is still zeros.
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 4096), 512<<10); err != nil {
		t.Fatal(err)
	}
	f.Close()
	sparse := digestOf(t, p)
	full, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	dense := filepath.Join(t.TempDir(), "dense")
	if err := os.WriteFile(dense, full, 0o600); err != nil {
		t.Fatal(err)
	}
	if d := digestOf(t, dense); d != sparse {
		t.Errorf("digest of the sparse file %s, of a dense copy %s: want equal", sparse, d)
	}
	full[3<<20+5] ^= 1
	if err := os.WriteFile(dense, full, 0o600); err != nil {
		t.Fatal(err)
	}
	if d := digestOf(t, dense); d == sparse {
		t.Error("one changed byte did not change the digest")
	}
	// A byte written into a hole.
	full[3<<20+5] ^= 1
	full[6<<20+100] = 7
	if err := os.WriteFile(dense, full, 0o600); err != nil {
		t.Fatal(err)
	}
	if d := digestOf(t, dense); d == sparse {
		t.Error("a byte written into a hole did not change the digest")
	}
}

// TestCheckRAM: a sealed RAM file is trusted by its identity without
// being read; corrupted in place at the same size (which moves its
// change time) it is hashed again and reported by name; touched without
// a change of contents it passes, with its new identity to record.
func TestCheckRAM(t *testing.T) {
	p := sparseRAM(t, 8, 64<<10, 1<<20)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := Metadata{Key: snapKey{MemoryMiB: 8}}
	if err := sealRAM(f, &m); err != nil {
		t.Fatal(err)
	}
	if _, changed, err := checkRAM(f, m); err != nil || changed {
		t.Fatalf("check of the sealed file: changed %t, %v", changed, err)
	}
	// Trusted by identity: a wrong digest is not noticed while the
	// identity is the recorded one (so a restore does not read the file).
	wrong := m
	wrong.RAMSHA256 = strings.Repeat("0", 64)
	if _, _, err := checkRAM(f, wrong); err != nil {
		t.Fatalf("unchanged identity: %v, want the digest trusted", err)
	}

	// Touched (same contents, new times): passes, with the new identity.
	time.Sleep(10 * time.Millisecond) // beyond a coarse timestamp's tick
	now := time.Now()
	if err := os.Chtimes(p, now, now); err != nil {
		t.Fatal(err)
	}
	id, changed, err := checkRAM(f, m)
	if err != nil || !changed || id == m.RAMFile {
		t.Fatalf("touched file: changed %t, %v; want passed with a new identity", changed, err)
	}

	// Corrupted in place, same size, the modification time set back.
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	if _, err := f.WriteAt([]byte("corrupt"), 2<<20+10); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	m.RAMFile = id
	_, _, err = checkRAM(f, m)
	if !errors.Is(err, errCorrupt) || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "does not have the recorded checksum") {
		t.Fatalf("corrupted file: %v, want a corrupt snapshot naming %s", err, p)
	}

	// Another size is corrupt without hashing.
	if err := f.Truncate(4 << 20); err != nil {
		t.Fatal(err)
	}
	if _, _, err := checkRAM(f, m); !errors.Is(err, errCorrupt) || !strings.Contains(err.Error(), "is not 8 MiB") {
		t.Fatalf("truncated file: %v", err)
	}
}

// BenchmarkCheckRAM is what the RAM file check costs a restore: trusted
// (its identity unchanged: one fstat) and after any change (a full hash
// of the data), for a 512 MiB RAM file with 128 MiB of data, as a saved
// exec guest's (111-117 MiB measured in the cache here).
func BenchmarkCheckRAM(b *testing.B) {
	p := sparseRAM(b, 512, 1<<20, 4<<20)
	f, err := os.Open(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var m Metadata
	m.Key.MemoryMiB = 512
	if err := sealRAM(f, &m); err != nil {
		b.Fatal(err)
	}
	b.Run("trusted", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := checkRAM(f, m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("rehash", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(128 << 20)
		changed := m
		changed.RAMFile.Ctime++
		for b.Loop() {
			if _, _, err := checkRAM(f, changed); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestTrustRAM: a RAM file found unchanged by a full hash after its
// identity changed gets its new identity recorded (the next restore does
// not hash again), unless the snapshot was replaced meanwhile.
func TestTrustRAM(t *testing.T) {
	p := sparseRAM(t, 8, 64<<10, 1<<20)
	dir := filepath.Dir(p)
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := Metadata{Key: snapKey{MemoryMiB: 8}, BuildID: "0123456789abcdef"}
	if err := sealRAM(f, &m); err != nil {
		t.Fatal(err)
	}
	if err := writeMeta(dir, m); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	now := time.Now()
	if err := os.Chtimes(p, now, now); err != nil {
		t.Fatal(err)
	}
	id, changed, err := checkRAM(f, m)
	if err != nil || !changed {
		t.Fatalf("touched file: changed %t, %v", changed, err)
	}
	other := m
	other.BuildID = "fedcba9876543210"
	trustRAM(context.Background(), dir, other, id)
	if got, err := readSnapshot(dir, m.Key); err != nil || got.RAMFile != m.RAMFile {
		t.Fatalf("after trusting for another build: %+v, %v; want the metadata unchanged", got.RAMFile, err)
	}
	trustRAM(context.Background(), dir, m, id)
	got, err := readSnapshot(dir, m.Key)
	if err != nil || got.RAMFile != id || got.RAMSHA256 != m.RAMSHA256 {
		t.Fatalf("after trusting: %+v, %v; want identity %+v", got.RAMFile, err, id)
	}
	if _, changed, err := checkRAM(f, got); err != nil || changed {
		t.Fatalf("check after trusting: changed %t, %v; want trusted", changed, err)
	}
}

// QEMU's version line is kept in the cache directory by the binary's
// identity: a second vmnet process does not start QEMU to ask, a
// changed binary is asked again.
func TestQEMUVersionKept(t *testing.T) {
	t.Setenv("VMNET_CACHE", t.TempDir())
	dir := t.TempDir()
	bin, count := filepath.Join(dir, "qemu-stand-in"), filepath.Join(dir, "runs")
	script := "#!/bin/sh\necho run >>" + count + "\necho 'QEMU emulator version 7.2.99'\necho second line\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	runs := func() int {
		b, _ := os.ReadFile(count)
		return strings.Count(string(b), "run")
	}
	fresh := func() string { // as a new vmnet process
		t.Helper()
		qemuIDMu.Lock()
		qemuIDs = map[string]string{}
		qemuIDMu.Unlock()
		v, err := qemuIdentity(bin)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	first := fresh()
	if !strings.HasSuffix(first, " QEMU emulator version 7.2.99") || runs() != 1 {
		t.Fatalf("identity %q after %d runs", first, runs())
	}
	if second := fresh(); second != first || runs() != 1 {
		t.Fatalf("second process: %q after %d runs; want %q from the cache", second, runs(), first)
	}
	if err := os.Chtimes(bin, time.Now(), time.Unix(1e9, 0)); err != nil {
		t.Fatal(err)
	}
	if third := fresh(); third == first || !strings.HasSuffix(third, " QEMU emulator version 7.2.99") || runs() != 2 {
		t.Fatalf("changed binary: %q after %d runs; want it asked again", third, runs())
	}
}
