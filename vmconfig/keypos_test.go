package vmconfig

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/vmnet/vmnet/internal/testenv"
)

func TestKeyPositions(t *testing.T) {
	doc := `# comment
[lab]
name = "x" # trailing
  "quoted.key" = 1
dotted . key = 2
[[vm]]
name = 'a'
s = """multi
line = "not a key"
"""
lit = '''
x = 1'''
arr = [
  1, # c
  [2, 3],
  "]",
]
nic = [{ network = "n", q.r = 1 }, {mac="m"}]
[[vm]]
  [[vm.nic]]
  network = "n"
  [[vm.nic]]
  network = "m"
  [vm.nic.sub]
  d = 1979-05-27 07:32:00Z
  e = "x\"y" ; junk
`
	sc := scanKeys([]byte(doc))
	li := newLineIndex("f", []byte(doc))
	want := map[string]string{
		"lab":                  "2:1",
		"lab.name":             "3:1",
		`lab."quoted.key"`:     "4:3",
		"lab.dotted.key":       "5:1",
		"vm[0]":                "6:1",
		"vm[0].name":           "7:1",
		"vm[0].s":              "8:1",
		"vm[0].lit":            "11:1",
		"vm[0].arr":            "13:1",
		"vm[0].arr[0]":         "14:3",
		"vm[0].arr[1]":         "15:3",
		"vm[0].arr[1][1]":      "15:7",
		"vm[0].arr[2]":         "16:3",
		"vm[0].nic":            "18:1",
		"vm[0].nic[0]":         "18:8",
		"vm[0].nic[0].network": "18:10",
		"vm[0].nic[0].q.r":     "18:25",
		"vm[0].nic[1].mac":     "18:37",
		"vm[1]":                "19:1",
		"vm[1].nic[0]":         "20:3",
		"vm[1].nic[0].network": "21:3",
		"vm[1].nic[1]":         "22:3",
		"vm[1].nic[1].network": "23:3",
		"vm[1].nic[1].sub":     "24:3",
		"vm[1].nic[1].sub.d":   "25:3",
		"vm[1].nic[1].sub.e":   "26:3",
	}
	for path, w := range want {
		off, ok := sc.pos[path]
		if !ok {
			t.Errorf("%s: not found", path)
			continue
		}
		p := li.pos(off)
		if got := strings.TrimPrefix(p.String(), "f:"); got != w {
			t.Errorf("%s at %s, want %s", path, got, w)
		}
	}
	for _, bogus := range []string{"vm[0].line", "x", "vm[0].nic[0].x"} {
		if _, ok := sc.pos[bogus]; ok {
			t.Errorf("%s found but is inside a string", bogus)
		}
	}
}

// checkScanner compares the scanner's keys with the toml package's own list
// (MetaData.Keys, in document order): an oracle independent of the scanner.
func checkScanner(t *testing.T, data []byte) (compared bool) {
	var m map[string]any
	md, err := toml.Decode(string(data), &m)
	if err != nil {
		return false
	}
	sc := scanKeys(data)
	var got, want []string
	for _, e := range sc.events {
		got = append(got, toml.Key(e.segs).String())
	}
	for _, k := range md.Keys() {
		want = append(want, k.String())
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("scanner keys differ from toml's for %q:\n got %q\nwant %q", data, got, want)
	}
	// Each key's position must point at its table header or at the key
	// text, which reads back as the last parts of the key.
	for _, e := range sc.events {
		if data[e.off] == '[' {
			continue
		}
		at := &keyScanner{s: data, i: e.off}
		keys, ok := at.key()
		if !ok || len(keys) > len(e.segs) || !reflect.DeepEqual(keys, e.segs[len(e.segs)-len(keys):]) {
			t.Errorf("%s: position %d holds %q, not the key", e.path, e.off, data[e.off:min(len(data), e.off+20)])
		}
	}
	return true
}

func TestKeyScannerMatchesToml(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.toml")
	more, _ := filepath.Glob("testdata/good/*.toml")
	for _, f := range append(files, more...) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(f, func(t *testing.T) {
			if !checkScanner(t, data) {
				t.Error("toml did not accept it")
			}
		})
	}
}

// The toml package ships the toml-test suite; every valid document in it
// must scan to the same keys.
func TestKeyScannerTomlTestSuite(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/BurntSushi/toml").Output()
	if err != nil {
		testenv.Missing(t, "go list toml module: %v", err)
		return
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "internal", "toml-test", "tests", "valid")
	n, compared := 0, 0
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".toml") {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		n++
		t.Run(strings.TrimPrefix(path, dir), func(t *testing.T) {
			if checkScanner(t, data) {
				compared++
			}
		})
		return nil
	})
	if err != nil || n < 100 {
		testenv.Missing(t, "toml-test suite at %s: %d files, %v", dir, n, err)
	}
	t.Logf("%d of %d valid toml-test documents compared", compared, n)
	if compared < n*9/10 {
		t.Errorf("only %d of %d valid documents decoded", compared, n)
	}
}

func FuzzKeyScanner(f *testing.F) {
	for _, s := range []string{"a=1", "[a]\nb.c=1", "[[a]]\n[[a.b]]\nx=[{y=1}]", `"a.b"='c'`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkScanner(t, data)
		li := newLineIndex("f", data)
		for path, off := range scanKeys(data).pos {
			if off < 0 || off >= len(data) {
				t.Fatalf("%s: offset %d outside the data", path, off)
			}
			_ = li.pos(off)
		}
	})
}
