// Package cachefile keeps small JSON facts in vmnet's cache directory
// (the host scan, QEMU's version lines, the KVM verdict): a file is read
// whole and written whole, then renamed into place, so that concurrent
// vmnet processes see the old contents or the new; a file that is
// missing, unreadable or unwritable is a miss, never an error.
package cachefile

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// Read decodes the JSON file at path into v, and reports whether it did.
func Read(path string, v any) bool {
	b, err := os.ReadFile(path)
	return err == nil && json.Unmarshal(b, v) == nil
}

// Write stores v as JSON at path, making its directory. It is best
// effort: what cannot be kept is computed again by the next process.
func Write(path string, v any) {
	b, err := json.Marshal(v)
	if err != nil || os.MkdirAll(filepath.Dir(path), 0o755) != nil {
		return
	}
	tmp := fmt.Sprintf("%s.tmp%d", path, os.Getpid())
	if os.WriteFile(tmp, b, 0o644) != nil || os.Rename(tmp, path) != nil {
		os.Remove(tmp)
	}
}

// FileID names the version of the file at path: its size, modification
// and change times, inode and device ("absent" if it cannot be read). A
// file rewritten or replaced gets another, even within one second.
func FileID(path string) string {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return "absent"
	}
	return fmt.Sprintf("size %d mtime %d.%09d ctime %d.%09d inode %d dev %d",
		st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec, st.Ino, st.Dev)
}
