#!/bin/sh
# Runs the bridge tests inside a guest whose kernel has the bridge
# features this host lacks (CONFIG_BRIDGE_VLAN_FILTERING). Needs an image
# built by `make image` (cached under ~/.cache/vmnet) and qemu-system-x86.
# Usage: bridge/testdata/guest-test.sh [go test flags, e.g. -test.run VLAN]
set -eu
cache=${VMNET_CACHE:-$HOME/.cache/vmnet}
img=$(ls -dt "$cache"/images/*/ | head -1)
rel=$(sed -n 's/.*"release": "\(.*\)".*/\1/p' "$img/manifest.json")
deb=$(ls "$cache"/debs/linux-image-"$rel"_*.deb | head -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
o=$work/overlay
mkdir -p "$o/vmnet" "$o/mods" "$o/usr/sbin" "$o/usr/bin" "$o/lib/x86_64-linux-gnu" "$o/lib64"

# The modules the tests need, straight from the kernel package.
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" --wildcards \
	"./lib/modules/$rel/kernel/net/llc/llc.ko" "./lib/modules/$rel/kernel/net/802/stp.ko" \
	"./lib/modules/$rel/kernel/net/bridge/bridge.ko" "./lib/modules/$rel/kernel/drivers/net/veth.ko" \
	"./lib/modules/$rel/kernel/drivers/net/tun.ko"
find "$work/lib/modules" -name '*.ko' -exec cp {} "$o/mods/" \;

# The observers: iproute2 (busybox ip has no -j) and util-linux unshare, with their libraries.
cp /usr/sbin/ip /usr/sbin/bridge "$o/usr/sbin/"
cp /usr/bin/unshare "$o/usr/bin/"
for lib in $(ldd /usr/sbin/ip /usr/sbin/bridge /usr/bin/unshare | grep -o '/[^ ]*\.so[^ ]*' | sort -u); do
	mkdir -p "$o$(dirname "$lib")"
	cp -L "$lib" "$o$lib"
done

cd "$(dirname "$0")/.."
CGO_ENABLED=0 go test -c -o "$o/bridge.test" .
if [ $# -gt 0 ]; then printf '%s\n' "$@" >"$o/vmnet/args"; fi
cat >"$o/vmnet/run" <<'RUN'
#!/bin/sh
for m in llc stp bridge veth tun; do insmod /mods/$m.ko || exit 1; done
exec /bridge.test -test.v -test.count=1 -test.timeout=600s "$@"
RUN
chmod +x "$o/vmnet/run"
(cd "$o" && find . | cpio -o -H newc 2>/dev/null | gzip -1) >"$work/overlay.cpio.gz"
cat "$img/initramfs.cpio.gz" "$work/overlay.cpio.gz" >"$work/initrd.gz"

timeout 900 qemu-system-x86_64 -M q35 -accel tcg -m 1024 -smp 2 -nographic -no-reboot \
	-kernel "$img/vmlinuz" -initrd "$work/initrd.gz" -append "console=ttyS0 quiet panic=-1" -nic none |
	tr -d '\r' | tee "$work/log" | grep -E '^(--- |    |ok|FAIL|PASS|VMNET)'
grep -qx 'VMNET-EXIT=0' "$work/log"
