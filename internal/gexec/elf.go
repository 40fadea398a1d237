package gexec

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// ErrDynamic marks a program that needs a dynamic loader or shared
// libraries, which the guest does not have for it.
var ErrDynamic = errors.New("dynamically linked")

// CheckStatic makes sure path can run in the guest on its own: an x86-64
// ELF executable without a program interpreter (PT_INTERP) and without
// shared library dependencies (DT_NEEDED), or a "#!" script (the guest
// has busybox sh). The error names the file and says how to fix it.
func CheckStatic(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("program %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("program %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("program %s: not a regular file", path)
	}
	head := make([]byte, 4)
	if _, err := io.ReadFull(f, head); err != nil {
		return fmt.Errorf("program %s: too short to be an executable (%d bytes)", path, st.Size())
	}
	if bytes.HasPrefix(head, []byte("#!")) {
		return nil
	}
	if !bytes.Equal(head, []byte(elf.ELFMAG)) {
		return fmt.Errorf("program %s: neither an ELF executable nor a #! script", path)
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return fmt.Errorf("program %s: %w", path, err)
	}
	if ef.Machine != elf.EM_X86_64 || ef.Class != elf.ELFCLASS64 {
		return fmt.Errorf("program %s: built for %v (%v), but the guest is x86-64: build it with GOARCH=amd64", path, ef.Machine, ef.Class)
	}
	if ef.Type != elf.ET_EXEC && ef.Type != elf.ET_DYN {
		return fmt.Errorf("program %s: ELF type %v is not an executable", path, ef.Type)
	}
	var interp string
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			b, _ := io.ReadAll(io.LimitReader(p.Open(), 4096))
			interp = strings.TrimRight(string(b), "\x00")
			if interp == "" {
				interp = "(unreadable)"
			}
		}
	}
	libs, _ := ef.ImportedLibraries() // error means no dynamic section
	if interp == "" && len(libs) == 0 {
		if ef.Type == elf.ET_DYN && ef.Entry == 0 {
			return fmt.Errorf("program %s: is a shared library, not an executable", path)
		}
		return nil
	}
	var what []string
	if interp != "" {
		what = append(what, "program interpreter "+interp)
	}
	if len(libs) > 0 {
		what = append(what, "shared libraries "+strings.Join(libs, ", "))
	}
	return fmt.Errorf("program %s: %w (%s), and the guest has none of that for it: build it with CGO_ENABLED=0 (e.g. CGO_ENABLED=0 go test -exec 'vmnet exec' ...)",
		path, ErrDynamic, strings.Join(what, "; "))
}
