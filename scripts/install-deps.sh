#!/usr/bin/env bash
# Installs the Debian packages vmnet's tests and demo need (as root).
# Packages already present are not touched, so a second run is quick.
# qemu-utils: qemu-img makes the copy-on-write overlays of VM disks.
# graphviz: tests have dot parse the graph `vmnet status -o dot` prints.
set -euo pipefail
# mmdebstrap, e2fsprogs, genisoimage: the debian-12 image (root file system
# from Debian packages, mkfs.ext4 -d) and the cloud-init seeds.
pkgs=(apt dpkg libc-bin iproute2 ethtool qemu-system-x86 qemu-utils cpio kmod xz-utils zstd iperf3 tcpdump tshark procps util-linux graphviz mmdebstrap e2fsprogs genisoimage)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing packages: ${missing[*]}; run as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# apt-get download (used by the image recipe) needs package lists.
if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ]; then
  apt-get update -q
fi
command -v go >/dev/null || { echo "install-deps: Go 1.26 or newer is needed on PATH (https://go.dev/dl)" >&2; exit 1; }
