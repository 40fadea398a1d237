#!/usr/bin/env bash
# Measures vmnet's userspace links against the kernel, side by side in one run
# (the machine is shared and noisy: compare only figures from the same run).
#
#   sudo tests/bench-link.sh            # or: make bench-link
#   T=10 PROFILE=0 tests/bench-link.sh  # longer runs, no CPU profiles
#
# Topology, in private namespaces named ${ID}* (removed on exit):
#   ns A: veth 10.77.0.1 -- ns L: bridge brA + tap tA   <vmnet link>   tap tB + bridge brB -- ns B: veth 10.77.0.2
# iperf3 client in A, server in B, TCP, one stream, T seconds. Cases:
#   kernel       A and B joined by one veth pair (the ceiling)
#   kernel-noTSO the same with `ethtool -K tso off gso off` on both ends
#   bridged      the link's own topology with brA and brB joined by a kernel veth
#                pair instead of vmnet (what a userspace link replaces)
#   bridged-noTSO  the same with tso/gso off on that veth pair
#   passthrough-kernel  tap:tA <-> tap:tB with the default datapath: the kernel forwards
#                (a tc redirect each way; vmnet's process only installs it)
#   passthrough  tap:tA <-> tap:tB, both vnet_hdr, --datapath userspace (super-frames pass
#                whole through vmnet's process)
#   segment      tap:tA <-> tap:tB,vnet_hdr=off (vmnet segments in software)
#   gro          tap:tA,vnet_hdr=off <-> tap:tB (A's kernel segments into tA; vmnet
#                merges the frames into super-frames for tB: software GRO)
#   gro-off      the same with an old vmnet (LINK_NOGRO=binary; skipped without it)
#   segment-old  segment with that old vmnet (LINK_NOGRO; skipped without it)
# The cases after passthrough-kernel measure the userspace data plane: they run with
# --datapath userspace where the link would otherwise be a kernel redirect.
#   udp          tap:tA <-> udp:127.0.0.1:P1 ... udp:127.0.0.1:P2 <-> tap:tB (two link processes)
#   udp-noTSO    the same with both taps vnet_hdr=off: MTU-sized frames only (what
#                ubridge or QEMU's socket backend carry), sent with UDP_SEGMENT
#   udp-gro      udp with tA vnet_hdr=off: MTU-sized frames cross the tunnel, the
#                receiving link merges them for tB (software GRO)
#   udp-key      udp with key=FILE on both ends (authenticated, encrypted)
#   udp-key-noTSO  udp-noTSO with key=FILE
#   vxlan        tap:tA <-> vxlan:... on host 1 (ns L), vxlan:... <-> tap:tB on host 2 (a
#                namespace H that takes brB and vB for the case), the hosts joined by a veth
#                underlay of MTU 1550 (VXLAN adds 50 bytes to the taps' 1500): kernel vxlan
#                devices, tc redirects between them and the taps. (Not over loopback: the
#                kernel hands vxlan for a local address to the local device unencapsulated.)
#   vxlan-us     the same with --datapath userspace (the links read the vxlan devices with
#                AF_PACKET)
#   vxlan-bridged  the same two hosts without vmnet: each vxlan device a port of its bridge
#                (what a multi-host lab's network does; no target)
# Environment: T (seconds, default 5), P (iperf3 parallel streams, default 1), QUEUES (queues of the link's
# taps, default 1: with more, each queue has its own reading and writing thread), CASES (default: all, in the order above), LINK (a vmnet binary; default builds
# ./cmd/vmnet), LINK_NOGRO (a vmnet binary without GRO for gro-off), PROFILE=1 (default) writes CPU profiles of
# the link processes and prints `go tool pprof -top` for them.
set -euo pipefail
cd "$(dirname "$0")/.."

T=${T:-5}
P=${P:-1}
QUEUES=${QUEUES:-1}
Q=
[ "$QUEUES" -gt 1 ] && Q=",queues=$QUEUES"
PROFILE=${PROFILE:-1}
[ "$(id -u)" = 0 ] || { echo "bench-link: needs root (network namespaces, taps)" >&2; exit 1; }
for p in iperf3 ethtool jq ip; do
  command -v "$p" >/dev/null || { echo "bench-link: $p is missing (apt-get install $p)" >&2; exit 1; }
done

ID=vb$$
WORK=$(mktemp -d /tmp/bench-link.XXXXXX)
NSS=()
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for n in "${NSS[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  # A vxlan case's second host, made in a subshell (NSS there is its own).
  [ -z "${NH:-}" ] || ip netns del "$NH" 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${LINK:-}" ]; then
  go build -o "$WORK/vmnet" ./cmd/vmnet
  LINK=$WORK/vmnet
fi
# Force the userspace data path where the binary has a kernel one (older
# binaries have only userspace and no --datapath flag).
datapath() {
  local help
  help=$("$1" link --help 2>/dev/null || true)
  case $help in *--datapath*) echo "--datapath userspace" ;; esac
}
US=$(datapath "$LINK")
US_NOGRO=
[ -n "${LINK_NOGRO:-}" ] && US_NOGRO=$(datapath "$LINK_NOGRO")

addns() { ip netns add "$1"; NSS+=("$1"); ip -n "$1" link set lo up; }

# iperf A -> B; prints Gbit/s received.
iperf() {
  local a=$1 b=$2 addr=$3
  ip netns exec "$b" timeout $((T + 20)) iperf3 -s -1 >/dev/null 2>&1 &
  local srv=$!
  for _ in $(seq 50); do
    ip netns exec "$b" ss -ltnH 'sport = :5201' 2>/dev/null | grep -q . && break
    sleep 0.1
  done
  local out
  out=$(ip netns exec "$a" timeout $((T + 15)) iperf3 -c "$addr" -t "$T" -P "$P" -J 2>/dev/null || true)
  wait "$srv" 2>/dev/null || true
  echo "$out" >"$WORK/iperf.$(date +%s%N).json"
  if ! echo "$out" | jq -e '.end.sum_received.bits_per_second' >/dev/null 2>&1; then
    echo "bench-link: iperf3 $a -> $b failed: $(echo "$out" | jq -r '.error // empty' 2>/dev/null)" >&2
  fi
  echo "$out" | jq -r '(.end.sum_received.bits_per_second // 0) / 1e9 | . * 100 | round / 100' 2>/dev/null || echo 0
}

# Kernel ceiling: a veth pair straight between two namespaces.
kernel() {
  local ka=${ID}ka kb=${ID}kb
  addns "$ka"; addns "$kb"
  ip -n "$ka" link add e0 type veth peer name e0 netns "$kb"
  ip -n "$ka" addr add 10.78.0.1/24 dev e0; ip -n "$ka" link set e0 up
  ip -n "$kb" addr add 10.78.0.2/24 dev e0; ip -n "$kb" link set e0 up
  if [ "$1" = notso ]; then
    ip netns exec "$ka" ethtool -K e0 tso off gso off >/dev/null
    ip netns exec "$kb" ethtool -K e0 tso off gso off >/dev/null
  fi
  iperf "$ka" "$kb" 10.78.0.2
  ip netns del "$ka"; ip netns del "$kb"
}

# The bridged topology for the link cases, made once.
NA=${ID}a NB=${ID}b NL=${ID}l
addns "$NA"; addns "$NB"; addns "$NL"
for s in A B; do
  n=${ID}${s,,}
  ip -n "$NL" link add "br$s" type bridge
  ip -n "$NL" link set "br$s" type bridge forward_delay 0 stp_state 0
  ip -n "$NL" link set "br$s" up
  ip -n "$NL" link add "v$s" type veth peer name eth0 netns "$n"
  ip -n "$NL" link set "v$s" master "br$s" up
done
# Bridged frames skip iptables (br_netfilter, when loaded, would otherwise
# run every frame through netfilter: a cost of the bridge, not of the link).
# BRNF=1 keeps it, as on a host with default sysctls.
if [ "${BRNF:-0}" != 1 ] && [ -e /proc/sys/net/bridge ]; then
  ip netns exec "$NL" sh -c 'for f in /proc/sys/net/bridge/bridge-nf-call-*; do echo 0 >"$f"; done'
fi
ip -n "$NA" addr add 10.77.0.1/24 dev eth0; ip -n "$NA" link set eth0 up
ip -n "$NB" addr add 10.77.0.2/24 dev eth0; ip -n "$NB" link set eth0 up

# startlink NAME ENDPOINT ENDPOINT: run a link process in NL, wait for it.
startlink() {
  local name=$1; shift
  rm -f "$WORK/$name.ready"
  local prof=()
  [ "$PROFILE" = 1 ] && prof=(--cpuprofile "$WORK/$name.prof")
  ip netns exec "${LNS:-$NL}" "$LINK" link --ready "$WORK/$name.ready" "${prof[@]}" "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do
    [ -e "$WORK/$name.ready" ] && return 0
    kill -0 "${PIDS[-1]}" 2>/dev/null || break
    sleep 0.05
  done
  echo "bench-link: link $name did not start:" >&2; cat "$WORK/$name.log" >&2; exit 1
}
stoplinks() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
plug() { ip -n "$NL" link set tA master brA up; ip -n "$NL" link set tB master brB up; }

# The same topology without vmnet: brA and brB joined by a kernel veth pair.
bridged() {
  ip -n "$NL" link add jA type veth peer name jB
  if [ "$1" = notso ]; then
    ip netns exec "$NL" ethtool -K jA tso off gso off >/dev/null
    ip netns exec "$NL" ethtool -K jB tso off gso off >/dev/null
  fi
  ip -n "$NL" link set jA master brA up
  ip -n "$NL" link set jB master brB up
  sleep 0.5
  iperf "$NA" "$NB" 10.77.0.2
  ip -n "$NL" link del jA
}

# The second host for the vxlan cases: namespace H takes brB's port vB
# (B's veth) into a bridge of its own, and a veth underlay joins L and H.
NH=${ID}h
host2() {
  addns "$NH"
  ip -n "$NL" link set vB nomaster
  ip -n "$NL" link set vB netns "$NH"
  ip -n "$NH" link add brB type bridge
  ip -n "$NH" link set brB type bridge forward_delay 0 stp_state 0
  ip -n "$NH" link set brB up
  ip -n "$NH" link set vB master brB up
  if [ "${BRNF:-0}" != 1 ] && [ -e /proc/sys/net/bridge ]; then
    ip netns exec "$NH" sh -c 'for f in /proc/sys/net/bridge/bridge-nf-call-*; do echo 0 >"$f"; done'
  fi
  ip -n "$NL" link add ul mtu 1550 type veth peer name ul mtu 1550 netns "$NH"
  ip -n "$NL" addr add 10.79.0.1/24 dev ul; ip -n "$NL" link set ul up
  ip -n "$NH" addr add 10.79.0.2/24 dev ul; ip -n "$NH" link set ul up
}
# host2done gives vB back to brB in L and removes H.
host2done() {
  # Delete the underlay now: a namespace's devices go asynchronously after
  # `ip netns del`, and the next case makes ul again.
  ip -n "$NL" link del ul
  ip -n "$NH" link set vB netns "$NL"
  ip -n "$NL" link set vB master brB up
  ip netns del "$NH"
}

# The two hosts joined by kernel vxlan devices in their bridges.
vxlanbridged() {
  host2
  ip -n "$NL" link add vx77 type vxlan id 77 remote 10.79.0.2 dstport 4789 dev ul
  ip -n "$NH" link add vx77 type vxlan id 77 remote 10.79.0.1 dstport 4789 dev ul
  ip -n "$NL" link set vx77 master brA up
  ip -n "$NH" link set vx77 master brB up
  sleep 0.5
  iperf "$NA" "$NB" 10.77.0.2
  ip -n "$NL" link del vx77
  host2done
}

linkcase() {
  local name=$1
  case $name in
    passthrough-kernel) startlink "$name" "tap:tA$Q" "tap:tB$Q" ;;
    passthrough) startlink "$name" $US "tap:tA$Q" "tap:tB$Q" ;;
    segment) startlink "$name" $US "tap:tA$Q" "tap:tB,vnet_hdr=off$Q" ;;
    gro) startlink "$name" $US "tap:tA,vnet_hdr=off$Q" "tap:tB$Q" ;;
    gro-off) LINK=$LINK_NOGRO startlink "$name" $US_NOGRO "tap:tA,vnet_hdr=off$Q" "tap:tB$Q" ;;
    segment-old) LINK=$LINK_NOGRO startlink "$name" $US_NOGRO "tap:tA$Q" "tap:tB,vnet_hdr=off$Q" ;;
    udp | udp-noTSO | udp-gro | udp-key | udp-key-noTSO)
      local p1=$((20000 + $$ % 20000)) p2=$((20001 + $$ % 20000)) opt= optA= key=
      case $name in *noTSO) opt=,vnet_hdr=off optA=,vnet_hdr=off ;; udp-gro) optA=,vnet_hdr=off ;; esac
      case $name in udp-key*)
        [ -e "$WORK/tunnel.key" ] || (umask 077; head -c 32 /dev/urandom >"$WORK/tunnel.key")
        key=",key=$WORK/tunnel.key" ;;
      esac
      startlink "$name-1" "tap:tA$optA$Q" "udp:127.0.0.1:$p1,remote=127.0.0.1:$p2$key"
      startlink "$name-2" "udp:127.0.0.1:$p2,remote=127.0.0.1:$p1$key" "tap:tB$opt$Q"
      ;;
    vxlan | vxlan-us)
      local dp=
      [ "$name" = vxlan-us ] && dp=$US
      host2
      startlink "$name-1" $dp "tap:tA$Q" "vxlan:10.79.0.2,vni=77"
      LNS=$NH startlink "$name-2" $dp "vxlan:10.79.0.1,vni=77" "tap:tB$Q"
      ip -n "$NL" link set tA master brA up; ip -n "$NH" link set tB master brB up
      sleep 0.5
      iperf "$NA" "$NB" 10.77.0.2
      stoplinks
      host2done
      return
      ;;
  esac
  plug
  sleep 0.5 # bridge ports forward at once (forward_delay 0); let ARP settle
  iperf "$NA" "$NB" 10.77.0.2
  # The process that made the tap without vnet_hdr (tB; tA in udp-gro).
  case $name in
    udp-gro) napicpu "$name-1" ;;
    udp*) napicpu "$name-2" ;;
    *) napicpu "$name" ;;
  esac
  stoplinks
}

# napicpu NAME: the CPU time of the kernel threads that ran NAPI polls for
# the link's taps (a tap the link creates without vnet_hdr has threaded
# NAPI: that work leaves the link process), for the CPU-per-GB table.
# Kernel threads are not in any namespace: a tA or tB of another run at
# the same time would be counted too.
napicpu() {
  local t=0 f c
  for f in /proc/[0-9]*/comm; do
    read -r c <"$f" 2>/dev/null || continue
    case $c in napi/tA-* | napi/tB-*)
      t=$((t + $(awk '{print $14 + $15}' "${f%/comm}/stat" 2>/dev/null || echo 0))) ;;
    esac
  done
  echo "$t" >"$WORK/$1.napi"
}

declare -A R
ALL="kernel kernel-noTSO bridged bridged-noTSO passthrough-kernel passthrough segment segment-old gro gro-off udp udp-noTSO udp-gro udp-key udp-key-noTSO vxlan vxlan-us vxlan-bridged"
CASES=${CASES:-$ALL}
for c in $ALL; do R[$c]=-; done
for c in $CASES; do
  case $c in
    kernel) R[$c]=$(kernel tso) ;;
    kernel-noTSO) R[$c]=$(kernel notso) ;;
    bridged) R[$c]=$(bridged tso) ;;
    bridged-noTSO) R[$c]=$(bridged notso) ;;
    gro-off | segment-old) [ -n "${LINK_NOGRO:-}" ] && R[$c]=$(linkcase "$c") ;;
    vxlan-bridged) R[$c]=$(vxlanbridged) ;;
    passthrough-kernel | passthrough | segment | gro | udp | udp-noTSO | udp-gro | udp-key | udp-key-noTSO | vxlan | vxlan-us) R[$c]=$(linkcase "$c") ;;
    *) echo "bench-link: unknown case $c" >&2; exit 2 ;;
  esac
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%5.0f%%", 100 * a / b; else print "  n/a" }'; }
echo
echo "bench-link: iperf3 TCP, $P stream(s), link taps with $QUEUES queue(s), ${T}s, $(nproc) CPUs, $(uname -r), link command $(basename "$LINK")"
printf "%-18s %10s %10s   %s\n" case Gbit/s "of kernel" "target"
printf "%-18s %10s %10s   %s\n" kernel "${R[kernel]}" "100%" "(ceiling)"
printf "%-18s %10s %10s   %s\n" kernel-noTSO "${R[kernel-noTSO]}" "$(ratio "${R[kernel-noTSO]}" "${R[kernel]}")" ""
printf "%-18s %10s %10s   %s\n" bridged "${R[bridged]}" "$(ratio "${R[bridged]}" "${R[kernel]}")" "(same topology, kernel veth between the bridges)"
printf "%-18s %10s %10s   %s\n" bridged-noTSO "${R[bridged-noTSO]}" "$(ratio "${R[bridged-noTSO]}" "${R[kernel]}")" "(the same, tso/gso off)"
printf "%-18s %10s %10s   %s\n" passthrough-kernel "${R[passthrough-kernel]}" "$(ratio "${R[passthrough-kernel]}" "${R[kernel]}")" \
  ">= 80% of bridged: $(ratio "${R[passthrough-kernel]}" "${R[bridged]}" | tr -d ' ') (default datapath: kernel redirect)"
printf "%-18s %10s %10s   %s\n" passthrough "${R[passthrough]}" "$(ratio "${R[passthrough]}" "${R[kernel]}")" \
  "(userspace) of bridged: $(ratio "${R[passthrough]}" "${R[bridged]}" | tr -d ' ')"
printf "%-18s %10s %10s   %s\n" segment "${R[segment]}" "$(ratio "${R[segment]}" "${R[kernel]}")" \
  ">= 50% of bridged-noTSO: $(ratio "${R[segment]}" "${R[bridged-noTSO]}" | tr -d ' ')"
printf "%-18s %10s %10s   %s\n" segment-old "${R[segment-old]}" "$(ratio "${R[segment-old]}" "${R[kernel]}")" \
  "of bridged-noTSO: $(ratio "${R[segment-old]}" "${R[bridged-noTSO]}" | tr -d ' '); segment is $(awk -v a="${R[segment]}" -v b="${R[segment-old]}" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }') of this"
printf "%-18s %10s %10s   %s\n" gro "${R[gro]}" "$(ratio "${R[gro]}" "${R[kernel]}")" \
  "(no target) of bridged-noTSO: $(ratio "${R[gro]}" "${R[bridged-noTSO]}" | tr -d ' ')"
printf "%-18s %10s %10s   %s\n" gro-off "${R[gro-off]}" "$(ratio "${R[gro-off]}" "${R[kernel]}")" \
  "gro is $(awk -v a="${R[gro]}" -v b="${R[gro-off]}" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }') of this"
printf "%-18s %10s %10s   %s\n" udp "${R[udp]}" "$(ratio "${R[udp]}" "${R[kernel]}")" \
  ">= 50% of bridged: $(ratio "${R[udp]}" "${R[bridged]}" | tr -d ' ')"
printf "%-18s %10s %10s   %s\n" udp-noTSO "${R[udp-noTSO]}" "$(ratio "${R[udp-noTSO]}" "${R[kernel]}")" "(no target; ubridge: 1.6 at kernel 13-19)"
printf "%-18s %10s %10s   %s\n" udp-gro "${R[udp-gro]}" "$(ratio "${R[udp-gro]}" "${R[kernel]}")" \
  "(no target) of udp-noTSO: $(ratio "${R[udp-gro]}" "${R[udp-noTSO]}" | tr -d ' ')"
printf "%-18s %10s %10s   %s\n" udp-key "${R[udp-key]}" "$(ratio "${R[udp-key]}" "${R[kernel]}")" \
  "(no target) of udp: $(ratio "${R[udp-key]}" "${R[udp]}" | tr -d ' ')"
printf "%-18s %10s %10s   %s\n" udp-key-noTSO "${R[udp-key-noTSO]}" "$(ratio "${R[udp-key-noTSO]}" "${R[kernel]}")" \
  "(no target) of udp-noTSO: $(ratio "${R[udp-key-noTSO]}" "${R[udp-noTSO]}" | tr -d ' ')"
printf "%-18s %10s %10s   %s\n" vxlan "${R[vxlan]}" "$(ratio "${R[vxlan]}" "${R[kernel]}")" \
  ">= 50% of bridged: $(ratio "${R[vxlan]}" "${R[bridged]}" | tr -d ' ') (tunnel over a veth underlay; default datapath: kernel)"
printf "%-18s %10s %10s   %s\n" vxlan-us "${R[vxlan-us]}" "$(ratio "${R[vxlan-us]}" "${R[kernel]}")" \
  "(userspace) of bridged: $(ratio "${R[vxlan-us]}" "${R[bridged]}" | tr -d ' ')"
printf "%-18s %10s %10s   %s\n" vxlan-bridged "${R[vxlan-bridged]}" "$(ratio "${R[vxlan-bridged]}" "${R[kernel]}")" \
  "(no vmnet: vxlan devices in the bridges) vxlan is $(ratio "${R[vxlan]}" "${R[vxlan-bridged]}" | tr -d ' ') of this"
echo
# CPU per byte does not depend on what else the machine runs as much as
# throughput does: on a loaded machine compare these too.
echo "link CPU (user+system of the link process, plus its taps' NAPI threads where it made any) per GB read in its busier direction:"
for f in "$WORK"/*.log; do
  napi=0
  [ -s "${f%.log}.napi" ] && napi=$(cat "${f%.log}.napi")
  awk -v n="$(basename "$f" .log)" -v napi="$napi" -v hz="$(getconf CLK_TCK)" '
    / -> .* frames .* bytes/ { for (i = 1; i <= NF; i++) if ($i == "bytes") { if ($(i-1) + 0 > max) max = $(i-1) + 0; break } }
    /cpu: user/ { u = $3; s = $5; sub("s", "", u); sub("s", "", s); cpu = u + s }
    END {
      if (max == 0) exit
      k = napi / hz
      printf "   %-16s %6.2f s/GB  (%.2f s for %.2f GB", n, (cpu + k) / (max / 1e9), cpu + k, max / 1e9
      if (k > 0) printf "; %.2f s of it in NAPI threads", k
      print ")"
    }' "$f"
done
echo
for f in "$WORK"/*.log; do
  echo "== link $(basename "$f" .log) counters at exit:"; sed 's/^/   /' "$f"
done
if [ "$PROFILE" = 1 ]; then
  for f in "$WORK"/*.prof; do
    [ -s "$f" ] || continue
    echo "== CPU profile, link $(basename "$f" .prof) (go tool pprof -top):"
    go tool pprof -top -nodecount=25 "$LINK" "$f" 2>/dev/null | sed 's/^/   /'
  done
fi
