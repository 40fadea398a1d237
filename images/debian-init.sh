#!/bin/sh
# /init of the debian-12 image's initramfs: load the drivers of the root
# disk, the NICs, the guest agent's channel and the seed volume (Debian
# builds them as modules), mount the root file system and hand over to
# systemd. Busybox only: no udev, no scripts, so it costs well under a
# second under TCG where Debian's own initramfs-tools takes several.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/vmnet/modules); do
	modprobe "$m" || echo "vmnet-initrd: cannot load module $m" >/dev/console
done
root=/dev/vda
fstype=ext4
for w in $(cat /proc/cmdline); do
	case "$w" in
	root=*) root=${w#root=} ;;
	rootfstype=*) fstype=${w#rootfstype=} ;;
	esac
done
i=0
while [ ! -b "$root" ] && [ $i -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
mkdir -p /newroot
if ! mount -t "$fstype" -o rw,noatime "$root" /newroot; then
	echo "VMNET-ERROR: cannot mount the root file system $root ($fstype)" >/dev/console
	exec sh </dev/console >/dev/console 2>&1
fi
umount /sys
umount /proc
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
