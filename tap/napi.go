package tap

// NAPI on a tap: frames vmnet writes one by one (a destination without a
// vnet header takes nothing larger than the MTU) otherwise each travel
// alone through the bridge and the receiving stack, inside vmnet's write.
// With IFF_NAPI each queue gets a NAPI instance and written frames go
// through the kernel's GRO, which merges consecutive TCP segments of a
// flow, so the bridge and the receiving TCP see one skb per up to 64 KB.
// The kernel flushes GRO when a NAPI poll completes, and a poll follows
// every write: only the device's gro_flush_timeout lets GRO keep a flow's
// segments across writes. Measured with tests/bench-link.sh (segment
// case, 1514-byte frames written one by one; see README):
//
//	IFF_NAPI alone                        0.9x   of the plain tap
//	IFF_NAPI, gro_flush_timeout 20 µs     1.0-1.3x
//	IFF_NAPI, gro_flush_timeout 50 µs     1.0-2.1x
//	IFF_NAPI, gro_flush_timeout 200 µs    1.0-5.1x, median 1.7 (the link's choice)
//	IFF_NAPI, gro_flush_timeout 1 ms      1.0-1.4x
//	IFF_NAPI_FRAGS (alone / with 50 µs)   0.7x / 0.4x
//
// IFF_NAPI is a property of each attached queue (the kernel's tun_file),
// asked for at TUNSETIFF: every queue a Tap attaches (Create, AddQueue)
// asks for it, each gets its own NAPI instance, and an fd handed to QEMU
// keeps it (not measured with a guest: the labs' taps do not ask for it).
// A queue QEMU attaches by name itself does not have it.
// TUNGETIFF reports the device's flags as the latest attach set them.
// The link sets NAPI only on taps it creates without vnet_hdr
// (internal/link, napiGROFlush).
//
// Threaded NAPI (the device's sysfs "threaded", Config.NAPIThreaded,
// Tap.SetNAPIThreaded) moves those polls out of the writer's write()
// into a kernel thread per NAPI instance (napi/NAME-N): a write then only
// queues the frame and wakes the thread. The link turns it on only while
// it writes in bulk (internal/link, napiSwitch): for a trickle, the
// wake-up per frame costs more than the poll it moves.

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// NAPI reports whether the tap's queues were attached with IFF_NAPI and
// IFF_NAPI_FRAGS, as the kernel reports the device's flags (TUNGETIFF).
func (t *Tap) NAPI() (napi, frags bool, err error) {
	qs := t.Queues()
	if len(qs) == 0 {
		return false, false, fmt.Errorf("tap %s: read flags: no queue attached", t.name)
	}
	var flags uint16
	var ierr error
	if err := qs[0].rc.Control(func(fd uintptr) {
		var ifr *unix.Ifreq
		if ifr, ierr = unix.NewIfreq(""); ierr == nil {
			if ierr = unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr); ierr == nil {
				flags = ifr.Uint16()
			}
		}
	}); err != nil {
		return false, false, fmt.Errorf("tap %s: read flags: %w", t.name, err)
	}
	if ierr != nil {
		return false, false, fmt.Errorf("tap %s: read flags: %w", t.name, ierr)
	}
	return flags&unix.IFF_NAPI != 0, flags&unix.IFF_NAPI_FRAGS != 0, nil
}

// NAPIThreaded reads whether the device's NAPI polls run in kernel
// threads of their own (sysfs "threaded"), in the tap's namespace.
func (t *Tap) NAPIThreaded() (bool, error) {
	var on bool
	err := t.inNS(func() error {
		err := withNetSysfs(func(root int) error {
			s, err := readAt(root, "class/net/"+t.name+"/threaded")
			on = strings.TrimSpace(s) != "0" && strings.TrimSpace(s) != ""
			return err
		})
		if err != nil {
			return fmt.Errorf("tap %s: read threaded NAPI: %w", t.name, err)
		}
		return nil
	})
	return on, err
}

// SetNAPIThreaded turns the device's threaded NAPI (see
// Config.NAPIThreaded) on or off in the tap's namespace. The kernel
// takes the change while frames flow: a poll running finishes in the old
// mode. It needs a queue attached with NAPI. On a closed Tap it fails
// with os.ErrClosed and touches nothing (the namespace handle is gone, so
// a device of the same name elsewhere must not be reached); Close waits
// for a change under way.
func (t *Tap) SetNAPIThreaded(on bool) error {
	return t.inNS(func() error { return setNAPIThreaded(t.name, on) })
}

// setNAPIThreaded sets the device's sysfs "threaded" (see
// Config.NAPIThreaded) in the calling thread's namespace.
func setNAPIThreaded(name string, on bool) error {
	v, what := "0", "off"
	if on {
		v, what = "1", "on"
	}
	err := withNetSysfs(func(root int) error {
		return writeAt(root, "class/net/"+name+"/threaded", v)
	})
	if err != nil {
		return fmt.Errorf("tap %s: turn threaded NAPI %s (needs Linux 5.12 or later and a queue attached with NAPI): %w", name, what, err)
	}
	return nil
}

// GROFlushTimeout reads the device's gro_flush_timeout in the tap's
// namespace.
func (t *Tap) GROFlushTimeout() (time.Duration, error) {
	var d time.Duration
	err := t.inNS(func() error {
		var err error
		d, err = groFlushTimeout(t.name)
		return err
	})
	return d, err
}

// SetGROFlushTimeout sets the device's gro_flush_timeout (see
// Config.GROFlushTimeout) in the tap's namespace.
func (t *Tap) SetGROFlushTimeout(d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("tap %s: negative GRO flush timeout %v: %w", t.name, d, unix.EINVAL)
	}
	return t.inNS(func() error { return setGROFlushTimeout(t.name, d) })
}

func setGROFlushTimeout(name string, d time.Duration) error {
	err := withNetSysfs(func(root int) error {
		return writeAt(root, "class/net/"+name+"/gro_flush_timeout", strconv.FormatInt(d.Nanoseconds(), 10))
	})
	if err != nil {
		return fmt.Errorf("tap %s: set GRO flush timeout %v: %w", name, d, err)
	}
	return nil
}

func groFlushTimeout(name string) (time.Duration, error) {
	var d time.Duration
	err := withNetSysfs(func(root int) error {
		s, err := readAt(root, "class/net/"+name+"/gro_flush_timeout")
		if err != nil {
			return err
		}
		ns, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		d = time.Duration(ns)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("tap %s: read GRO flush timeout: %w", name, err)
	}
	return d, nil
}

// withNetSysfs runs fn with a sysfs of the calling thread's network
// namespace: a fresh instance (fsopen, fsmount) that is never attached
// to any mount tree and disappears with its fd. The /sys of the mount
// namespace shows the devices of whichever network namespace mounted it
// (a test's or a lab's namespace is not it), so a write there could
// reach another namespace's device of the same name. The caller's thread
// must be locked.
func withNetSysfs(fn func(root int) error) error {
	fs, err := unix.Fsopen("sysfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("open a sysfs of this network namespace (fsopen, Linux 5.2 or later): %w", err)
	}
	defer unix.Close(fs)
	if err := unix.FsconfigCreate(fs); err != nil {
		return fmt.Errorf("open a sysfs of this network namespace: %w", err)
	}
	mnt, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
	if err != nil {
		return fmt.Errorf("open a sysfs of this network namespace (fsmount): %w", err)
	}
	defer unix.Close(mnt)
	return fn(mnt)
}

func writeAt(dir int, path, value string) error {
	fd, err := unix.Openat(dir, path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, []byte(value)); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func readAt(dir int, path string) (string, error) {
	fd, err := unix.Openat(dir, path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	var b [64]byte
	n, err := unix.Read(fd, b[:])
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return string(b[:n]), nil
}
