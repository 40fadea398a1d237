// Package qemu starts QEMU guests wired to vmnet's multi-queue vnet_hdr
// taps (fds inherited, never opened by QEMU), streams their serial console,
// and drives them over QMP: status, NIC hot-plug, shutdown.
package qemu
