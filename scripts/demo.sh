#!/usr/bin/env bash
# The demo: in a private network namespace, make a bridge and a
# multi-queue vnet_hdr tap and show them as the kernel sees them, then boot
# a guest on its own bridge that pings the host over IPv4 and IPv6 and
# reports its queues and offloads, and tear everything down again.
set -euo pipefail
cd "$(dirname "$0")/.."
vmnet=./vmnet
ns=vmnet-demo-$$
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() { ip netns del "$ns" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$ns"
SECONDS=0

say "what this kernel offers"
$vmnet features

say "a bridge and a 4-queue vnet_hdr tap with TSO, in namespace $ns"
$vmnet --netns "$ns" bridge create demo-br --mtu 9000 --address 10.99.0.1/24
$vmnet --netns "$ns" tap create demo-tap --queues 4 --offload csum,tso4,tso6 --bridge demo-br
$vmnet --netns "$ns" tap show demo-tap
$vmnet --netns "$ns" bridge show demo-br
$vmnet --netns "$ns" tap delete demo-tap
$vmnet --netns "$ns" bridge delete demo-br

say "boot a guest (examples/ci.toml) and talk to the host from inside"
$vmnet --netns "$ns" run examples/ci.toml ci --timeout 5m -- \
  'ping -c 3 10.80.0.1 && ping -c 2 fd80::1 && ethtool -l eth0 | tail -n 5 && ethtool -k eth0 | grep -E "^(tcp-segmentation|generic-segmentation|tx-checksumming)"'

say "nothing is left behind"
ip -n "$ns" -o link show
echo; echo "demo finished in ${SECONDS} s"
