package qemu

import (
	"os"

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
		rc, err := f.SyscallConn()
		if err != nil {
			continue
		}
		rc.Control(func(fd uintptr) {
			ifr, err := unix.NewIfreq("")
			if err != nil {
				return
			}
			ifr.SetUint16(unix.IFF_ATTACH_QUEUE)
			unix.IoctlIfreq(int(fd), unix.TUNSETQUEUE, ifr)
		})
	}
}
