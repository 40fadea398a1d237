#!/bin/sh
# Run by mmdebstrap (customize hook) with the root directory as $1: the
# settings that make the debian-12 image boot quickly under TCG and take
# its identity from cloud-init.
set -eu
r=$1
# The root file system is /dev/vda, mounted read-write by the initramfs.
printf '/dev/vda / ext4 rw,noatime 0 1\n' >"$r/etc/fstab"
# Units that only cost boot time in a throwaway lab guest.
chroot "$r" systemctl mask --quiet \
	apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service \
	man-db.timer man-db.service dpkg-db-backup.timer dpkg-db-backup.service \
	e2scrub_all.timer e2scrub_all.service e2scrub_reap.service fstrim.timer \
	getty@tty1.service getty-static.service kmod-static-nodes.service \
	systemd-networkd-wait-online.service \
	systemd-fsck-root.service systemd-remount-fs.service \
	systemd-hwdb-update.service systemd-journal-catalog-update.service \
	systemd-update-utmp.service systemd-update-utmp-runlevel.service \
	systemd-pstore.service systemd-binfmt.service \
	sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount \
	modprobe@fuse.service modprobe@drm.service modprobe@configfs.service \
	sys-kernel-config.mount
# The ACPI power button (vmnet down) powers the guest off cleanly: acpid
# sees the button's key on its input device (button and evdev come from
# the initramfs) and asks systemd. systemctl falls back from logind
# (there is no D-Bus) to systemd's private socket.
mkdir -p "$r/etc/acpi/events"
printf 'event=button/power\naction=/bin/systemctl poweroff\n' >"$r/etc/acpi/events/vmnet-power"
# cloud-init writes systemd-networkd files (there is no ifupdown or netplan).
chroot "$r" systemctl enable --quiet systemd-networkd.service acpid.service acpid.socket
# Every VM gets its own SSH host keys from cloud-init at first boot.
rm -f "$r"/etc/ssh/ssh_host_*
mkdir -p "$r/etc/cloud/cloud.cfg.d"
cat >"$r/etc/cloud/cloud.cfg.d/90-vmnet.cfg" <<'CFG'
# vmnet: the seed is a NoCloud volume labelled cidata; no network probes.
datasource_list: [NoCloud, None]
# ed25519 only: RSA key generation takes seconds under TCG.
ssh_genkeytypes: [ed25519]
# Only what a lab guest needs: every module costs seconds of Python under
# TCG (locale, grub-dpkg and apt-configure took 15-30 s each). Disks are
# sized by vmnet (no growpart/resizefs), packages come from the recipe.
cloud_init_modules: [seed_random, bootcmd, write-files, set_hostname, update_hostname, update_etc_hosts, users-groups, ssh]
cloud_config_modules: [runcmd]
cloud_final_modules: [package-update-upgrade-install, write-files-deferred, scripts-per-once, scripts-per-boot, scripts-per-instance, scripts-user, final-message]
CFG
# The kernel comes from outside the image (-kernel); its modules are added
# by vmnet. No bootloader.
