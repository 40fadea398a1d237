#!/bin/bash
# Cold and warm boots side by side in one run, alternating, N times each
# (default 5), with --cold and without (a restore from the snapshot of the
# guest's shape; the snapshots are saved by first, untimed warm runs):
#   1. wall time of `vmnet run examples/ci.toml ci -- true`;
#   2. a lab of two guests: `vmnet up --detach` until a ping from one guest
#      to the other answers, then `vmnet down` (in a throw-away network
#      namespace);
#   3. `CGO_ENABLED=0 go test -count=1 -exec "vmnet exec [--cold]" ./tap/`,
#      cold, warm and, with OLD=path of an older vmnet binary, that binary
#      cold (the reference the warm goal is stated against), alternating;
#      with OLD_TESTS=a git revision as well, the old binary runs that
#      revision's tap tests (the tests got faster too, so the old cold run
#      of today's tests is not the run the goal was set against);
#      skipped with TAP=0; TAP_ONLY=1 skips 1 and 2.
# Prints every time and the medians. Needs root, qemu-system-x86_64 and
# the test image (built on first use). Labs of 2, 8 and 32 guests (up to
# every guest pinging its neighbour, down, QEMU CPU, RSS and PSS per
# guest) are the Go benchmark BenchmarkLabUp:
#   go test -run '^$' -bench LabUp -benchtime 3x ./internal/lab/
#   VMNET_BENCH_LAB=2,8,32 go test -run '^$' -bench LabUp -benchtime 1x -timeout 60m ./internal/lab/
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-5}
tmp=$(mktemp -d)
bin=$tmp/vmnet
ns=vmnet-bench-$$
trap 'ip netns del "$ns" 2>/dev/null || true; rm -rf "$tmp"' EXIT
go build -o "$bin" ./cmd/vmnet
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
if [[ ${TAP_ONLY:-0} != 1 ]]; then
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
echo "cold: ${cold[*]}"
echo "warm: ${warm[*]}"
mc=$(median "${cold[@]}") mw=$(median "${warm[@]}")
awk -v c="$mc" -v w="$mw" 'BEGIN {printf "median cold %.2fs, warm %.2fs, warm/cold %.2f\n", c, w, w / c}'

cat >"$tmp/two.toml" <<EOT
[lab]
name = "benchtwo"
state_dir = "$tmp/state"
[defaults]
memory = "256M"
accel = "tcg"
[[network]]
name = "lan"
addresses = ["10.95.0.1/24"]
[[vm]]
name = "a"
  [[vm.nic]]
  network = "lan"
  address = ["10.95.0.11/24"]
[[vm]]
name = "b"
  [[vm.nic]]
  network = "lan"
  address = ["10.95.0.12/24"]
EOT
ip netns add "$ns"
lab() { # lab [--cold]: prints "UP DOWN": seconds to a ping between the guests, and of vmnet down
	local s m e
	s=$(date +%s.%N)
	"$bin" --netns "$ns" -q up "$tmp/two.toml" --detach "$@" >/dev/null
	"$bin" --netns "$ns" -q sh benchtwo a -- 'ping -c 1 -W 10 10.95.0.12 >/dev/null'
	m=$(date +%s.%N)
	"$bin" --netns "$ns" -q down benchtwo >/dev/null
	e=$(date +%s.%N)
	awk -v s="$s" -v m="$m" -v e="$e" 'BEGIN {printf "%.3f %.3f\n", m - s, e - m}'
}
lab >/dev/null # saves the snapshot of the lab's shape
cup=() cdown=() wup=() wdown=()
for ((i = 0; i < n; i++)); do
	read -r u d < <(lab --cold)
	cup+=("$u") cdown+=("$d")
	read -r u d < <(lab)
	wup+=("$u") wdown+=("$d")
done
echo "two-guest lab, up to a ping, cold: ${cup[*]}"
echo "two-guest lab, up to a ping, warm: ${wup[*]}"
echo "vmnet down, cold guests: ${cdown[*]}"
echo "vmnet down, warm guests: ${wdown[*]}"
awk -v c="$(median "${cup[@]}")" -v w="$(median "${wup[@]}")" -v cd="$(median "${cdown[@]}")" -v wd="$(median "${wdown[@]}")" \
	'BEGIN {printf "median up to a ping: cold %.2fs, warm %.2fs, warm/cold %.2f; down: %.2fs (cold guests), %.2fs (warm)\n", c, w, w / c, cd, wd}'
fi

[[ ${TAP:-1} == 0 ]] && exit 0
gotest() { # gotest BINARY [--cold]: wall seconds of go test ./tap/ run in guests (in $dir)
	local s e
	s=$(date +%s.%N)
	(cd "${dir:-.}" && CGO_ENABLED=0 go test -count=1 -exec "$*" ./tap/) >"$tmp/tap.out" 2>&1 || {
		cat "$tmp/tap.out" >&2
		return 1
	}
	e=$(date +%s.%N)
	awk -v s="$s" -v e="$e" 'BEGIN {printf "%.3f\n", e - s}'
}
"$bin" exec --help >/dev/null
CGO_ENABLED=0 go test -count=1 -exec "$bin exec" ./tap/ >/dev/null # saves the exec snapshot
olddir=.
if [[ -n ${OLD:-} && -n ${OLD_TESTS:-} ]]; then
	olddir=$tmp/old-tests
	mkdir "$olddir"
	git archive "$OLD_TESTS" | tar -x -C "$olddir"
	(cd "$olddir" && CGO_ENABLED=0 go test -count=1 -run '^$' ./tap/ >/dev/null) # builds the old test binary
fi
tcold=() twarm=() told=() toldnew=()
for ((i = 0; i < n; i++)); do
	[[ -n ${OLD:-} ]] && told+=("$(dir=$olddir gotest "$OLD exec --cold")")
	[[ $olddir != . ]] && toldnew+=("$(gotest "$OLD exec --cold")")
	tcold+=("$(gotest "$bin exec --cold")")
	twarm+=("$(gotest "$bin exec")")
done
[[ -n ${OLD:-} ]] && echo "go test ./tap/, $OLD cold${OLD_TESTS:+ (tests of $OLD_TESTS)}: ${told[*]}"
[[ $olddir != . ]] && echo "go test ./tap/, $OLD cold (today's tests): ${toldnew[*]}"
echo "go test ./tap/, cold: ${tcold[*]}"
echo "go test ./tap/, warm: ${twarm[*]}"
mo=0 mon=0
[[ -n ${OLD:-} ]] && mo=$(median "${told[@]}")
[[ $olddir != . ]] && mon=$(median "${toldnew[@]}")
awk -v c="$(median "${tcold[@]}")" -v w="$(median "${twarm[@]}")" -v o="$mo" -v on="$mon" \
	'BEGIN {printf "median go test ./tap/: cold %.2fs, warm %.2fs, warm/cold %.2f", c, w, w / c; if (o > 0) printf "; old cold %.2fs, warm/old cold %.2f", o, w / o; if (on > 0) printf "; old cold on today'"'"'s tests %.2fs, warm/that %.2f", on, w / on; printf "\n"}'
