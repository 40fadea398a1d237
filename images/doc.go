// Package images builds the small bootable test guest of vmnet: the
// current Debian kernel (vmlinux for QEMU's PVH entry, and vmlinuz) and a
// busybox initramfs with virtio-net, ethtool and iperf3, cached by inputs.
//
// # Boot
//
// qemu-system-x86_64 -kernel Image.Kernel (or Image.KernelCompressed)
// -initrd Image.Initrd -append "DefaultCmdline vmnet.…" with the console
// on the first serial port (ttyS0). -no-reboot makes a guest panic
// (panic=-1) end QEMU instead of rebooting.
//
// # Kernel command line (read by /init from /proc/cmdline)
//
// Values must not contain spaces; every parameter may repeat unless noted.
//
//	vmnet.ip=IFACE:ADDR/LEN[+ADDR/LEN...]
//	    Add addresses (IPv4 or IPv6, with prefix length) to IFACE. IFACE
//	    ends at the first ':'. IPv6 duplicate address detection is off,
//	    so addresses are usable at VMNET-READY.
//	vmnet.route=DEST:GW
//	    Add a route. DEST is "default" or ADDR/LEN; it ends at the first
//	    ':' after "default" or after the '/' of ADDR/LEN, so both may be
//	    IPv6: vmnet.route=default:fd00::1, vmnet.route=fd01::/64:fd00::1,
//	    vmnet.route=10.1.0.0/16:10.0.0.1. GW containing ':' makes it an
//	    IPv6 route. Routes are added after all addresses.
//	vmnet.mtu=IFACE:MTU
//	    Set the MTU of IFACE (before addresses and routes).
//	vmnet.modules=a,b
//	    Load these modules too (modprobe, dependencies from modules.dep).
//	    They must be in the image (Options.Modules); built-ins are fine.
//	vmnet.cmd=BASE64
//	    Standard base64 (with padding) of a shell command run with sh -c
//	    (see CmdArg). At most once. The whole kernel command line is
//	    limited to 2047 bytes: longer programs go into /vmnet/run.
//
// Any other vmnet.* parameter is an error.
//
// # What /init does
//
// It mounts proc, sysfs, devtmpfs, devpts; loads BootModules (virtio_pci,
// virtio_mmio, virtio_net, each with its dependencies) and vmnet.modules;
// brings up lo and every ethN; waits up to 5 s for each interface named
// in vmnet.ip/vmnet.mtu; applies vmnet.mtu, vmnet.ip, vmnet.route in that
// order. Then it prints the line
//
//	VMNET-READY
//
// on the console. If anything failed it prints instead one line per
// problem
//
//	VMNET-ERROR: <what, naming the parameter, module or interface>
//
// and no VMNET-READY. Hosts match markers as whole lines after removing
// "\r" (the serial console ends lines with "\r\n").
//
// A command is given by vmnet.cmd, or else by an executable /vmnet/run in
// the initramfs (append a second cpio archive to Image.Initrd, see
// package cpio), called with the lines of /vmnet/args as its arguments
// (one argument per line, no quoting). The command runs in / as root with
// stdin /dev/null, stdout and stderr on the console. Afterwards /init
// prints "\nVMNET-EXIT=<status>\n" (a newline first, so the marker is on
// its own line even after output without a final newline) and powers the
// machine off (poweroff -f; reboot -f if that fails). After VMNET-ERROR
// with a command given, the command is not run: VMNET-EXIT=125.
//
// Without a command the guest keeps running: a shell for programs on
// ttyS1 if that port exists (no echo, no prompt, "\n" line ends; for
// example a unix-socket -serial the host connects to) and an interactive
// shell on the console, both restarted when they exit. After VMNET-ERROR
// the shells start too (for debugging), without VMNET-READY.
//
// # Cache
//
// Under Options.CacheDir (DefaultCacheDir): debs/ keeps the downloaded
// kernel package; images/<uname -r>-<12 hex of the input hash>/ holds
// vmlinux, vmlinuz, initramfs.cpio.gz and manifest.json (written last;
// an image directory without it is incomplete). The hash covers the
// recipe version, /init, the kernel package and version, the module list
// and the contents of every host file copied in. Builds take a lock
// (images/.lock) and happen in images/.build-* renamed into place.
package images
