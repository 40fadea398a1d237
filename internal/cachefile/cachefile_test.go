package cachefile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestReadWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "fact.json")
	var got map[string]int
	if Read(path, &got) {
		t.Fatal("a missing file was read")
	}
	Write(path, map[string]int{"a": 1})
	if !Read(path, &got) || got["a"] != 1 {
		t.Fatalf("read back %v", got)
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Errorf("left beside the file: %v", ents)
	}
	os.WriteFile(path, []byte("{not json"), 0o644)
	if Read(path, &got) {
		t.Error("a garbled file was read")
	}
}

func TestFileID(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if id := FileID(path); id != "absent" {
		t.Errorf("missing file: %q", id)
	}
	os.WriteFile(path, []byte("one"), 0o644)
	id := FileID(path)
	if id == "absent" || FileID(path) != id {
		t.Fatalf("unstable id %q", id)
	}
	// Same size, rewritten at once: the change time's nanoseconds or the
	// inode (a replacement) tell the versions apart.
	tmp := path + ".new"
	os.WriteFile(tmp, []byte("two"), 0o644)
	os.Rename(tmp, path)
	if FileID(path) == id {
		t.Errorf("a replaced file kept its id %q", id)
	}
}
