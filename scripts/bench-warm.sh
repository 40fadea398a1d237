#!/bin/bash
# Cold and warm boots side by side in one run: wall time of
#   vmnet run examples/ci.toml ci -- true
# with --cold and without (a restore from the snapshot of the guest's
# shape), alternating, N times each (default 5). The snapshot is saved by
# a first, untimed warm run. Prints every time and the median of each.
# Needs root, qemu-system-x86_64 and the test image (built on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-5}
bin=$(mktemp -d)/vmnet
trap 'rm -rf "$(dirname "$bin")"' EXIT
go build -o "$bin" ./cmd/vmnet
"$bin" run --quiet examples/ci.toml ci -- true # builds the image and the snapshot
t() { # t ARGS...: wall seconds of one run
	local s e
	s=$(date +%s.%N)
	"$bin" run --quiet "$@" examples/ci.toml ci -- true
	e=$(date +%s.%N)
	awk -v s="$s" -v e="$e" 'BEGIN {printf "%.3f\n", e - s}'
}
cold=() warm=()
for ((i = 0; i < n; i++)); do
	cold+=("$(t --cold)")
	warm+=("$(t)")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "cold: ${cold[*]}"
echo "warm: ${warm[*]}"
mc=$(median "${cold[@]}") mw=$(median "${warm[@]}")
awk -v c="$mc" -v w="$mw" 'BEGIN {printf "median cold %.2fs, warm %.2fs, warm/cold %.2f\n", c, w, w / c}'
