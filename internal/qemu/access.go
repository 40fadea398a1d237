package qemu

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"
)

// checkUserAccess makes sure that QEMU, running as s.User, can open what
// it still opens by path: the disk (read and write, through its
// directories) and kernel and initrd, which it reads through fds vmnet
// passes (so only the files' own permissions count). Without this check
// QEMU fails later with a bare "Permission denied". Sockets are bound by
// vmnet and passed as fds, so QEMU needs no directory at all.
func checkUserAccess(s Spec) error {
	u := s.User
	if u == nil || u.UID == 0 {
		return nil
	}
	for _, p := range []struct{ path, what string }{{s.Kernel, "kernel"}, {s.Initrd, "initrd"}} {
		if p.path == "" {
			continue
		}
		if err := userCan(u, p.path, 4, false); err != nil {
			return fmt.Errorf("%s: QEMU runs as %s but %s: %w (make it readable, e.g. chmod o+r)", s.name(), u, p.what, err)
		}
	}
	// A snapshot=on disk and the seed reach QEMU as read-only fds.
	if s.Disk != "" && !s.DiskSnapshot {
		if err := userCan(u, s.Disk, 6, true); err != nil {
			return fmt.Errorf("%s: QEMU runs as %s but disk: %w (give the user access, or set user in the lab file)", s.name(), u, err)
		}
	}
	return nil
}

// userCan checks bits on path for u and, with parents, search permission
// on every directory above it.
func userCan(u *User, path string, bits uint32, parents bool) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	if parents {
		for d := filepath.Dir(abs); ; d = filepath.Dir(d) {
			if err := allowed(u, d, 1); err != nil {
				return err
			}
			if d == "/" {
				break
			}
		}
	}
	return allowed(u, abs, bits)
}

// allowed decides like the kernel's generic permission check: owner,
// then named-user ACL entries, then owning group, named groups and
// group ACL entries (limited by the mask), then others.
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
	inGroup := func(g uint32) bool { return g == u.GID || slices.Contains(u.Groups, g) }
	have := m & 7
	switch {
	case sys.Uid == u.UID:
		have = m >> 6 & 7
	default:
		if acl, ok := readACL(path); ok {
			have = acl.perm(u, sys.Gid, inGroup)
		} else if inGroup(sys.Gid) {
			have = m >> 3 & 7
		}
	}
	if have&bits != bits {
		return fmt.Errorf("%s (mode %04o, owner %d:%d) does not allow it %s", path, m, sys.Uid, sys.Gid, bitsText(bits))
	}
	return nil
}

// posixACL is a decoded system.posix_acl_access attribute.
type posixACL struct {
	userObj, groupObj, other, mask uint32
	hasMask                        bool
	users, groups                  map[uint32]uint32
}

// ACL tags (include/uapi/linux/posix_acl.h).
const (
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclGroup    = 0x08
	aclMask     = 0x10
	aclOther    = 0x20
)

// readACL reads path's access ACL (version 2: a 4-byte header, then
// entries of tag u16, perm u16, id u32, little endian).
func readACL(path string) (posixACL, bool) {
	buf := make([]byte, 4+8*64)
	n, err := unix.Getxattr(path, "system.posix_acl_access", buf)
	if err != nil || n < 4 || (n-4)%8 != 0 || binary.LittleEndian.Uint32(buf) != 2 {
		return posixACL{}, false
	}
	a := posixACL{users: map[uint32]uint32{}, groups: map[uint32]uint32{}}
	for e := buf[4:n]; len(e) >= 8; e = e[8:] {
		tag, perm, id := binary.LittleEndian.Uint16(e), uint32(binary.LittleEndian.Uint16(e[2:])&7), binary.LittleEndian.Uint32(e[4:])
		switch tag {
		case aclUserObj:
			a.userObj = perm
		case aclUser:
			a.users[id] = perm
		case aclGroupObj:
			a.groupObj = perm
		case aclGroup:
			a.groups[id] = perm
		case aclMask:
			a.mask, a.hasMask = perm, true
		case aclOther:
			a.other = perm
		}
	}
	return a, true
}

// perm is what the ACL grants u, who does not own the file (gid is the
// file's group, which the group-owner entry stands for).
func (a posixACL) perm(u *User, gid uint32, inGroup func(uint32) bool) uint32 {
	mask := func(p uint32) uint32 {
		if a.hasMask {
			return p & a.mask
		}
		return p
	}
	if p, ok := a.users[u.UID]; ok {
		return mask(p)
	}
	var p uint32
	found := inGroup(gid)
	if found {
		p = a.groupObj
	}
	for g, gp := range a.groups {
		if inGroup(g) {
			p, found = p|gp, true
		}
	}
	if found {
		return mask(p)
	}
	return a.other
}

func bitsText(bits uint32) string {
	switch bits {
	case 1:
		return "to search it"
	case 4:
		return "to read it"
	default:
		return "to read and write it"
	}
}
