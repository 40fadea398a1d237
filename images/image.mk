# Makefile fragment for the vmnet guest image; include it from the root
# Makefile with `include images/image.mk`.
#
#   make image          build (or reuse) the guest image in the cache
#   make image-test     boot tests of the image (needs root for the tap test)
#   make image-deps     install what the recipe and its tests need (Debian 12)

IMAGE_MODULES ?=
IMAGE_DEBS := apt dpkg kmod xz-utils libc-bin iproute2 iperf3 ethtool qemu-system-x86 cpio

.PHONY: image image-test image-deps
image:
	go run ./images/cmd/vmnet-image $(if $(IMAGE_MODULES),-modules $(IMAGE_MODULES))

image-test:
	go test -count=1 -timeout 20m ./images/...

image-deps:
	sudo apt-get update
	sudo apt-get install -y --no-install-recommends $(IMAGE_DEBS)
