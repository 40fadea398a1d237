package qemu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Root must never follow a link that another user planted. vmnet keeps
// everything it creates for a VM in directories that belong to root and
// that nobody else can write (RootDir checks that), binds the sockets
// there itself, and opens every file it writes with O_NOFOLLOW.

// RootDir makes dir (and missing parents) and gives it mode perm. It
// refuses a dir that is a symlink or that belongs to someone else than
// the caller, since another user could swap files inside it; the mode is
// set through the opened directory, not the path. perm must not allow
// group or others to write.
func RootDir(dir string, perm os.FileMode) error {
	if perm&0o022 != 0 {
		return fmt.Errorf("directory %s: mode %04o would let others write into it", dir, perm)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o711); err != nil {
		return fmt.Errorf("directory %s: %w", dir, err)
	}
	if err := unix.Mkdir(dir, uint32(perm)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("directory %s: %w", dir, err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			return fmt.Errorf("directory %s is a symlink or not a directory: vmnet will not use it (remove it)", dir)
		}
		return fmt.Errorf("directory %s: %w", dir, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("directory %s: %w", dir, err)
	}
	if int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("directory %s belongs to uid %d, not to uid %d running vmnet: another user could plant links in it; remove it (an older vmnet gave it to QEMU's user)", dir, st.Uid, os.Geteuid())
	}
	if os.FileMode(st.Mode)&os.ModePerm != perm {
		if err := unix.Fchmod(fd, uint32(perm)); err != nil {
			return fmt.Errorf("directory %s: chmod: %w", dir, err)
		}
	}
	return nil
}

// CreateFile creates path for writing with O_NOFOLLOW: a symlink in its
// place makes it fail rather than write through the link. With excl, an
// existing file is an error too; else an existing regular file is
// truncated.
func CreateFile(path string, perm os.FileMode, excl bool) (*os.File, error) {
	flags := os.O_WRONLY | os.O_CREATE | unix.O_NOFOLLOW | unix.O_CLOEXEC
	if excl {
		flags |= os.O_EXCL
	} else {
		flags |= os.O_TRUNC | unix.O_NONBLOCK // a planted fifo must not hang us
	}
	f, err := os.OpenFile(path, flags, perm)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%s is a symlink: vmnet does not write through links (remove it)", path)
		}
		return nil, err
	}
	if !excl {
		st, err := f.Stat()
		if err == nil && !st.Mode().IsRegular() {
			err = fmt.Errorf("%s is not a regular file (%v): remove it", path, st.Mode().Type())
		}
		if err == nil {
			err = unix.SetNonblock(int(f.Fd()), false)
		}
		if err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, nil
}

// ListenUnix binds a listening unix socket at path with mode perm from
// the start (Linux gives the new node the mode of the unbound socket's
// inode, so there is no window in which others could connect), replacing
// a stale socket left by an earlier run but never anything else. The
// directory should be RootDir's.
func ListenUnix(path string, perm os.FileMode) (*os.File, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket (%v): remove it", path, st.Mode().Type())
		}
		os.Remove(path) // unlink removes a link itself, never its target
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), path)
	if err := unix.Fchmod(fd, uint32(perm)); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		f.Close()
		return nil, fmt.Errorf("bind %s: %w", path, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	return f, nil
}

// writePidfile records QEMU's pid and start time, for the check that no
// QEMU runs on the same RunDir, without following a link.
func writePidfile(path string, pid int) error {
	os.Remove(path)
	f, err := CreateFile(path, 0o600, true)
	if err != nil {
		return err
	}
	_, err = f.WriteString(strconv.Itoa(pid) + " " + procStart(pid) + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// openBootFile opens a kernel or initrd for QEMU to read through
// /proc/self/fd. The file must be a regular file.
func openBootFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err == nil && !st.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", path)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
