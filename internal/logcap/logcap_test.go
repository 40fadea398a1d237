package logcap

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

var dropRE = regexp.MustCompile(`^\[vmnet: (\d+) bytes of older output dropped; the log keeps at most (\d+) KiB\]\n`)

// check reads the log and verifies the cap, the dropped-bytes line and
// that what is left is exactly the newest output, starting at a line.
func check(t *testing.T, path string, limit int64, all []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(got)) > limit {
		t.Fatalf("log is %d bytes, cap %d", len(got), limit)
	}
	m := dropRE.FindSubmatch(got)
	if m == nil {
		if !bytes.Equal(got, all) {
			t.Fatalf("log without a dropped line is not the whole output (%d of %d bytes)", len(got), len(all))
		}
		return
	}
	dropped, _ := strconv.Atoi(string(m[1]))
	rest := got[len(m[0]):]
	if dropped+len(rest) != len(all) {
		t.Fatalf("dropped %d + kept %d != written %d", dropped, len(rest), len(all))
	}
	if !bytes.Equal(rest, all[dropped:]) {
		t.Fatalf("kept part is not the newest output")
	}
	if dropped > 0 && all[dropped-1] != '\n' {
		t.Errorf("kept part does not start at a line (dropped %d)", dropped)
	}
	if int64(len(rest)) < limit/2-lineSlack {
		t.Errorf("kept only %d bytes of a %d byte cap", len(rest), limit)
	}
}

func TestCapKeepsNewest(t *testing.T) {
	for _, chunk := range []int{1, 100, 4000, 50000, 300000} {
		t.Run(strconv.Itoa(chunk), func(t *testing.T) {
			const limit = 64 << 10
			path := filepath.Join(t.TempDir(), "console.log")
			l, err := Create(path, limit, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			var all bytes.Buffer
			size := 1 << 20
			if chunk == 1 {
				size = 200 << 10 // a syscall per byte
			}
			for i := 0; all.Len() < size; i++ {
				fmt.Fprintf(&all, "line %d %s\n", i, bytes.Repeat([]byte{'x'}, i%200))
			}
			data := all.Bytes()
			for off := 0; off < len(data); off += chunk {
				p := data[off:min(off+chunk, len(data))]
				if n, err := l.Write(p); n != len(p) || err != nil {
					t.Fatalf("write: %d %v", n, err)
				}
				if off < 5*chunk || off%(97*chunk) == 0 {
					check(t, path, limit, data[:off+len(p)])
				}
			}
			check(t, path, limit, data)
			if l.Dropped() == 0 {
				t.Error("nothing dropped")
			}
		})
	}
}

// A log without newlines still stays under the cap.
func TestCapNoLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	l, err := Create(path, MinMax, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	all := bytes.Repeat([]byte("0123456789"), 10000)
	for off := 0; off < len(all); off += 333 {
		l.Write(all[off:min(off+333, len(all))])
	}
	got, _ := os.ReadFile(path)
	m := dropRE.FindSubmatch(got)
	if len(got) > MinMax || m == nil || !bytes.HasSuffix(all, got[len(m[0]):]) {
		t.Fatalf("log %d bytes: %q", len(got), got[:min(len(got), 120)])
	}
}

// Another writer appending through its own descriptor (the Go runtime on
// a supervisor's fd 2) is counted and cut like the rest.
func TestCapSharedAppend(t *testing.T) {
	path := filepath.Join(t.TempDir(), "supervisor.log")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	other, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	other.WriteString("started\n")
	l, err := New(f, MinMax*4)
	if err != nil {
		t.Fatal(err)
	}
	var all bytes.Buffer
	all.WriteString("started\n")
	for i := range 2000 {
		s := fmt.Sprintf("vmnet: step %d\n", i)
		if i%10 == 0 {
			other.WriteString(s)
		} else {
			l.Write([]byte(s))
		}
		all.WriteString(s)
		if i%10 == 9 {
			check(t, path, MinMax*4, all.Bytes())
		}
	}
	check(t, path, MinMax*4, all.Bytes())
	if _, err := New(os.Stdin, 0); err == nil {
		if st, _ := os.Stdin.Stat(); st != nil && !st.Mode().IsRegular() {
			t.Error("New accepted a non-regular file")
		}
	}
}

func TestCreateRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	os.WriteFile(target, []byte("keep me"), 0o600)
	link := filepath.Join(dir, "console.log")
	os.Symlink(target, link)
	if l, err := Create(link, 0, 0o600); err == nil {
		l.Close()
		t.Fatal("Create followed a symbolic link")
	}
	if b, _ := os.ReadFile(target); string(b) != "keep me" {
		t.Errorf("link target changed: %q", b)
	}
}
