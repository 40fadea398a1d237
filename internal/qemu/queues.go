package qemu

import (
	"os"

	"github.com/vmnet/vmnet/tap"
	"golang.org/x/sys/unix"
)

// reattachQueues re-enables every tap queue before QEMU gets it. QEMU
// detaches the queues a guest does not use (TUNSETQUEUE), and that state
// belongs to the file description vmnet shares with QEMU, so it outlives
// the netdev. QEMU 7.2 given a detached queue aborts ("could not disable
// queue", virtio_net_set_queue_pairs assertion) the next time it resets
// the device. Attaching an attached queue fails with EINVAL, which is
// fine; other errors (not a tap) are left for QEMU to report.
func reattachQueues(files []*os.File) {
	for _, f := range files {
		tap.AttachFile(f)
	}
}

// passable returns a dup of f for QMP getfd that can be sent without
// harm. File.Fd switches a file that Go put into
// non-blocking mode back to blocking. O_NONBLOCK belongs to the file
// description that QEMU shares, so a running QEMU (whose tap reads loop
// until EAGAIN) would then block in read and hang. A dup wrapped by
// os.NewFile while the description is already non-blocking is one Go did
// not switch, so its Fd leaves the mode alone.
func passable(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	if err := unix.SetNonblock(nfd, true); err != nil {
		unix.Close(nfd)
		return nil, err
	}
	return os.NewFile(uintptr(nfd), f.Name()), nil
}
