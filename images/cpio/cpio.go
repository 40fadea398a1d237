// Package cpio writes "newc" cpio archives, the format the Linux kernel
// unpacks as an initramfs. Archives may be concatenated: the kernel unpacks
// them in order and later entries replace earlier ones, which is how extra
// files (such as /vmnet/run) are appended to a prebuilt guest image. Each
// archive, compressed or not, must start at a multiple of 4 bytes into the
// concatenated file (pad with zero bytes); a Writer's output is a
// multiple of 4 long.
package cpio

import (
	"fmt"
	"io"
	"path"
	"strings"
)

// File mode type bits as stored in the newc header.
const (
	TypeDir     = 0o040000
	TypeFile    = 0o100000
	TypeSymlink = 0o120000
	TypeChar    = 0o020000
)

// Writer writes one newc archive. Entry names are relative ("bin/sh");
// a leading "/" is removed. Parent directories are not created
// implicitly: add them first with Dir.
type Writer struct {
	w      io.Writer
	ino    uint32
	off    int64
	err    error
	closed bool
}

// NewWriter returns a Writer that writes to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w, ino: 1} }

// Dir adds a directory.
func (c *Writer) Dir(name string, perm uint32) error {
	return c.entry(name, TypeDir|perm&0o7777, 0, 0, nil)
}

// File adds a regular file with the given contents.
func (c *Writer) File(name string, perm uint32, data []byte) error {
	return c.entry(name, TypeFile|perm&0o7777, 0, 0, data)
}

// Symlink adds a symbolic link name -> target.
func (c *Writer) Symlink(name, target string) error {
	return c.entry(name, TypeSymlink|0o777, 0, 0, []byte(target))
}

// CharDev adds a character device node; the kernel creates it while
// unpacking, so no privileges are needed to build the archive.
func (c *Writer) CharDev(name string, perm uint32, major, minor uint32) error {
	return c.entry(name, TypeChar|perm&0o7777, major, minor, nil)
}

// Close writes the trailer. It does not close the underlying writer.
func (c *Writer) Close() error {
	if c.closed {
		return c.err
	}
	err := c.raw("TRAILER!!!", 0, 0, 0, 0, nil)
	c.closed = true
	return err
}

func (c *Writer) entry(name string, mode, rmajor, rminor uint32, data []byte) error {
	if c.closed {
		return fmt.Errorf("cpio: write %s after Close", name)
	}
	clean := strings.TrimPrefix(path.Clean("/"+name), "/")
	if clean == "" || clean == "TRAILER!!!" {
		return fmt.Errorf("cpio: invalid entry name %q", name)
	}
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == TypeDir {
		nlink = 2
	}
	return c.raw(clean, c.ino, mode, nlink, rmajor<<16|rminor, data)
}

// raw writes one header, name and data, each padded to 4 bytes. The
// device numbers are packed as major<<16|minor in rdev.
func (c *Writer) raw(name string, ino, mode, nlink, rdev uint32, data []byte) error {
	if c.err != nil {
		return c.err
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev>>16, rdev&0xffff, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name))
	c.write([]byte{0})
	c.pad()
	c.write(data)
	c.pad()
	return c.err
}

func (c *Writer) write(b []byte) {
	if c.err != nil || len(b) == 0 {
		return
	}
	n, err := c.w.Write(b)
	c.off += int64(n)
	c.err = err
}

func (c *Writer) pad() {
	if r := c.off % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}
