// Package netns runs code inside a Linux network namespace.
//
// Taps are created in the namespace of the calling OS thread, and netlink
// sockets keep the namespace they were opened in; these helpers pin the
// goroutine to a thread, switch it, and always switch it back.
package netns

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Handle is an open reference to a network namespace.
type Handle = vns.NsHandle

// initial is the namespace the process started in, taken while package
// initialisation still runs on the main thread, before any code can move
// a thread elsewhere. It is where the host's routes and name resolution
// are, which a fresh namespace lacks.
var initial, initialErr = vns.Get()

// DoInitial runs fn on a thread in the namespace the process started in,
// whatever namespace the caller works in. Anything that reaches the
// network (package downloads) or must outlive a namespace the caller
// entered (a detached supervisor) starts from there.
func DoInitial(fn func() error) error {
	if initialErr != nil {
		return fmt.Errorf("netns: namespace at start: %w", initialErr)
	}
	if cur, err := vns.Get(); err == nil {
		same := cur.Equal(initial)
		cur.Close()
		if same {
			return fn() // no setns, so no privilege needed
		}
	}
	return Do(initial, fn)
}

// StartedOffline reports whether the namespace the process started in
// has no default route (IPv4 or IPv6): a process started by `unshare -n`
// or in a lab's namespace, whose downloads (DoInitial) cannot reach a
// mirror, which a failed download should say.
func StartedOffline() bool {
	// Default routes that are up and not reject routes (the kernel lists
	// its IPv6 null entry, a reject route, on lo in every namespace).
	usable := func(hexFlags string) bool {
		f, err := strconv.ParseUint(hexFlags, 16, 32)
		return err == nil && f&unix.RTF_UP != 0 && f&unix.RTF_REJECT == 0
	}
	found := false
	err := DoInitial(func() error {
		for _, f := range []struct {
			path      string
			isDefault func([]string) bool
		}{
			// Iface Destination Gateway Flags RefCnt Use Metric Mask ...
			{"/proc/thread-self/net/route", func(c []string) bool {
				return len(c) > 7 && c[1] == "00000000" && c[7] == "00000000" && usable(c[3])
			}},
			// Destination PrefixLen Source SrcLen NextHop Metric RefCnt Use Flags Iface
			{"/proc/thread-self/net/ipv6_route", func(c []string) bool {
				return len(c) > 8 && strings.Trim(c[0], "0") == "" && c[1] == "00" && usable(c[8])
			}},
		} {
			b, err := os.ReadFile(f.path)
			if err != nil {
				continue
			}
			for _, l := range strings.Split(string(b), "\n") {
				if f.isDefault(strings.Fields(l)) {
					found = true
				}
			}
		}
		return nil
	})
	return err == nil && !found
}

// Current returns a handle to the calling thread's namespace.
func Current() (Handle, error) { return vns.Get() }

// Open returns a handle to the namespace named by `ip netns` (under
// /run/netns) or by an absolute path such as /proc/PID/ns/net.
func Open(name string) (Handle, error) {
	path := name
	if !filepath.IsAbs(name) {
		path = filepath.Join("/run/netns", name)
	}
	h, err := vns.GetFromPath(path)
	if err != nil {
		return vns.None(), fmt.Errorf("netns %s: %w (create it with `ip netns add %s`)", name, err, name)
	}
	return h, nil
}

// New creates a fresh, unnamed network namespace and returns a handle to
// it without moving the caller into it. The namespace lives as long as a
// handle (or an interface or process inside it) keeps it alive.
func New() (Handle, error) {
	var h Handle
	err := withThread(func(orig Handle) error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("netns: unshare: %w", err)
		}
		var err error
		h, err = vns.Get()
		return err
	})
	return h, err
}

// Do runs fn with the calling goroutine locked to a thread inside ns.
// Goroutines that fn starts do not inherit the namespace.
func Do(ns Handle, fn func() error) error {
	return withThread(func(orig Handle) error {
		if err := vns.Set(ns); err != nil {
			return fmt.Errorf("netns: setns: %w", err)
		}
		return fn()
	})
}

// DoNamed runs fn inside the namespace with the given name or path.
func DoNamed(name string, fn func() error) error {
	h, err := Open(name)
	if err != nil {
		return err
	}
	defer h.Close()
	return Do(h, fn)
}

// DoPrivate runs fn inside a fresh namespace that disappears when fn
// returns and nothing else holds it.
func DoPrivate(fn func() error) error {
	return withThread(func(orig Handle) error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("netns: unshare: %w", err)
		}
		return fn()
	})
}

// withThread locks the goroutine to its thread, remembers the thread's
// namespace and restores it after fn. If it cannot be restored the thread
// stays locked, so the runtime discards it instead of reusing it.
func withThread(fn func(orig Handle) error) error {
	runtime.LockOSThread()
	orig, err := vns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns: current namespace: %w", err)
	}
	defer orig.Close()
	ferr := fn(orig)
	if err := vns.Set(orig); err != nil {
		fmt.Fprintf(os.Stderr, "netns: cannot restore namespace, discarding thread: %v\n", err)
		return ferr
	}
	runtime.UnlockOSThread()
	return ferr
}

// ID identifies a network namespace: the device and inode of its nsfs
// file, as stat(2) of /proc/PID/ns/net reports them. Two handles refer to
// the same namespace exactly when their IDs are equal. The kernel may
// reuse an inode number once a namespace is gone.
type ID struct {
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
}

// String formats id the way /proc/PID/ns/net links read: net:[INODE].
func (id ID) String() string { return fmt.Sprintf("net:[%d]", id.Ino) }

// Identify returns the ID of the calling thread's namespace. Lock the
// goroutine to its thread (Do does) when namespaces differ between
// threads.
func Identify() (ID, error) { return IdentifyPath("/proc/thread-self/ns/net") }

// IdentifyPath returns the ID of the namespace at path (a name under
// /run/netns is not resolved; use Open's rules and pass a path).
func IdentifyPath(path string) (ID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return ID{}, fmt.Errorf("netns %s: %w", path, err)
	}
	return ID{Dev: st.Dev, Ino: st.Ino}, nil
}

// NamesOf returns the names `ip netns` knows id by (the entries of
// /run/netns bound to it), usually zero or one.
func NamesOf(id ID) []string {
	ents, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range ents {
		if got, err := IdentifyPath(filepath.Join("/run/netns", e.Name())); err == nil && got == id {
			out = append(out, e.Name())
		}
	}
	return out
}
