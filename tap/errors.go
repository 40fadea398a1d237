package tap

import (
	"errors"
	"fmt"

	"github.com/vmnet/vmnet/names"
	"golang.org/x/sys/unix"
)

// MaxQueues is the kernel's limit on queues per tap (MAX_TAP_QUEUES).
const MaxQueues = 256

// hinted wraps a syscall error with advice; errors.Is still sees the errno.
type hinted struct {
	err  error
	hint string
}

func (h *hinted) Error() string { return h.err.Error() + " (" + h.hint + ")" }
func (h *hinted) Unwrap() error { return h.err }

// explain adds what to do to the errno values users actually meet.
// multiQueue is the flag vmnet asked for, used to explain EINVAL.
func explain(err error, op string) error {
	var hint string
	switch {
	case errors.Is(err, unix.ENOENT) && op == "open":
		hint = "/dev/net/tun is missing: load the tun module with `modprobe tun`, or create the node with `mkdir -p /dev/net && mknod /dev/net/tun c 10 200`"
	case errors.Is(err, unix.ENODEV) && op == "open":
		hint = "/dev/net/tun exists but no tun driver answers (misc 10:200): `modprobe tun`"
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		hint = "needs CAP_NET_ADMIN in the tap's network namespace, or to be the tap's owner or group"
	case errors.Is(err, unix.EBUSY) && op == "create":
		hint = "a network interface with this name already exists: pick another name, or use the existing tap as it is (`vmnet link tap:NAME ...` and QEMU attach to it)"
	case errors.Is(err, unix.EBUSY):
		hint = "the tap exists and is single-queue and already held by another file (QEMU or another vmnet); close that first, or recreate it with more than one queue"
	case errors.Is(err, unix.EINVAL) && (op == "attach" || op == "create"):
		hint = "the existing device differs in multi_queue or type (tun/tap) from what was asked, or the name is taken by a non-tun device"
	default:
		return err
	}
	return &hinted{err: err, hint: hint}
}

// checkName applies names.Interface (the kernel's dev_valid_name rules
// plus IFNAMSIZ, so a name is never truncated silently) and wraps EINVAL,
// the errno the kernel would give.
func checkName(name string) error {
	if err := names.Interface("tap", name); err != nil {
		return fmt.Errorf("tap %q: invalid name: %w: %w", name, err, unix.EINVAL)
	}
	return nil
}

func checkQueues(name string, n int) error {
	if n < 1 || n > MaxQueues {
		return fmt.Errorf("tap %s: %d queues: must be 1..%d: %w", name, n, MaxQueues, unix.EINVAL)
	}
	return nil
}

// notATap says what an interface that should have been a tap is, in the
// words of `ip link`: "is a tun device, not a tap", "is a veth interface,
// not a tap". netlink calls interfaces of a kind it does not model
// "device", which says nothing, so those are only "not a tap".
func notATap(kind string) string {
	switch kind {
	case "", "device":
		return "is not a tap (an interface of another kind has this name)"
	case "tun":
		return "is a tun device, not a tap"
	}
	return "is a " + kind + " interface, not a tap"
}
