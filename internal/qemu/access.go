package qemu

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// checkUserAccess makes sure that QEMU, running as s.User, can reach what
// it opens itself: kernel, initrd and disk, and the run directory where it
// creates its QMP socket and pidfile. Without this check QEMU fails later
// with a bare "Permission denied". It reads mode bits only (no ACLs) and
// knows QEMU has no supplementary groups.
func checkUserAccess(s Spec) error {
	u := s.User
	if u == nil || u.UID == 0 {
		return nil
	}
	type need struct {
		path, what string
		bits       uint32 // 4 read, 2 write, 1 search
	}
	needs := []need{}
	for _, p := range []struct{ path, what string }{{s.Kernel, "kernel"}, {s.Initrd, "initrd"}} {
		if p.path != "" {
			needs = append(needs, need{p.path, p.what, 4})
		}
	}
	if s.Disk != "" {
		needs = append(needs, need{s.Disk, "disk", 6})
	}
	if s.ControlSocket != "" && filepath.Dir(filepath.Clean(s.ControlSocket)) != filepath.Clean(s.RunDir) {
		needs = append(needs, need{filepath.Dir(s.ControlSocket), "control socket directory", 3})
	}
	for _, n := range needs {
		if err := userCan(u, n.path, n.bits); err != nil {
			return fmt.Errorf("%s: QEMU runs as uid %d but %s: %w", s.name(), u.UID, n.what, err)
		}
	}
	// The run directory itself is chowned to the user; its parents must
	// be searchable.
	if err := userCanSearch(u, filepath.Dir(filepath.Clean(s.RunDir))); err != nil {
		return fmt.Errorf("%s: QEMU runs as uid %d but cannot reach its run directory %s: %w", s.name(), u.UID, s.RunDir, err)
	}
	return nil
}

// userCan checks bits on path and search permission on every parent.
func userCan(u *User, path string, bits uint32) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	if err := userCanSearch(u, filepath.Dir(abs)); err != nil {
		return err
	}
	return allowed(u, abs, bits)
}

func userCanSearch(u *User, dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for d := abs; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			if err := allowed(u, d, 1); err != nil {
				return err
			}
		}
		if d == "/" {
			return nil
		}
	}
}

func allowed(u *User, path string, bits uint32) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	m := uint32(st.Mode().Perm())
	var have uint32
	switch {
	case sys.Uid == u.UID:
		have = m >> 6 & 7
	case sys.Gid == u.GID:
		have = m >> 3 & 7
	default:
		have = m & 7
	}
	if have&bits != bits {
		return fmt.Errorf("%s (mode %04o, owner %d:%d) does not allow it %s", path, m, sys.Uid, sys.Gid, bitsText(bits))
	}
	return nil
}

func bitsText(bits uint32) string {
	switch bits {
	case 1:
		return "to search it"
	case 4:
		return "to read it"
	case 6:
		return "to read and write it"
	default:
		return "to create files in it"
	}
}
