#!/bin/sh
# vmnet guest /init, run by busybox sh as PID 1. The kernel command line
# contract it implements is documented in images/doc.go: keep them in sync.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
set -f # cmdline words are never globbed

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null # already there if the kernel automounted it
mkdir -p /dev/pts /dev/shm /tmp /run /root
mount -t devpts devpts /dev/pts
ln -sf /proc/self/fd /dev/fd 2>/dev/null

errors=0
err() {
	echo "VMNET-ERROR: $*"
	errors=$((errors + 1))
}

nonce=
finish() { # finish STATUS: report the exit status on its own line and power off
	# Nothing the command left behind may print after the marker: the
	# host takes the last marker line as the status.
	kill -KILL -1 2>/dev/null
	if [ -n "$nonce" ]; then
		printf '\nVMNET-EXIT=%d %s\n' "$1" "$nonce"
	else
		printf '\nVMNET-EXIT=%d\n' "$1"
	fi
	sync
	poweroff -f
	sleep 2
	reboot -f # -no-reboot turns this into a QEMU exit where poweroff is unsupported
}

ips= routes= mtus= mods= cmd64= havecmd= macs= host= now= warm=
parse() { # parse WORD...: the vmnet.* parameters (kernel command line, or the identity of a restored guest)
	for w in "$@"; do
		case "$w" in
		vmnet.ip=*) ips="$ips ${w#vmnet.ip=}" ;;
		vmnet.route=*) routes="$routes ${w#vmnet.route=}" ;;
		vmnet.mtu=*) mtus="$mtus ${w#vmnet.mtu=}" ;;
		vmnet.mac=*) macs="$macs ${w#vmnet.mac=}" ;;
		vmnet.hostname=*) host=${w#vmnet.hostname=} ;;
		vmnet.time=*) now=${w#vmnet.time=} ;;
		vmnet.warm) warm=1 ;;
		vmnet.modules=*) mods="$mods $(echo "${w#vmnet.modules=}" | tr , ' ')" ;;
		vmnet.cmd=*)
			[ -z "$havecmd" ] || err "vmnet.cmd given more than once"
			cmd64=${w#vmnet.cmd=}
			havecmd=cmdline
			;;
		vmnet.nonce=*) nonce=${w#vmnet.nonce=} ;;
		vmnet.*) err "unknown kernel parameter $w (known: vmnet.ip, vmnet.route, vmnet.mtu, vmnet.mac, vmnet.hostname, vmnet.time, vmnet.warm, vmnet.modules, vmnet.cmd, vmnet.nonce)" ;;
		esac
	done
}
parse $(cat /proc/cmdline)

# Addresses must be usable when VMNET-READY is printed: no IPv6 duplicate
# address detection. default/ is copied into each interface created later.
echo 0 >/proc/sys/net/ipv6/conf/default/accept_dad
echo 0 >/proc/sys/net/ipv6/conf/all/accept_dad

kver=$(uname -r)
builtin=/lib/modules/$kver/modules.builtin
for m in $(cat /etc/vmnet/boot-modules) $mods; do
	n=$(echo "$m" | tr - _)
	if grep -q -e "/$n.ko\$" -e "/$m.ko\$" "$builtin" 2>/dev/null; then
		continue
	fi
	if ! out=$(modprobe "$n" 2>&1) || [ -n "$out" ]; then
		err "cannot load module $m: ${out:-modprobe failed} (modules in the image: /etc/vmnet/modules; add it with Options.Modules / vmnet image build -modules)"
	fi
done

ip link set lo up

# The ACPI power button (QMP system_powerdown) powers the guest off at once
# (/etc/acpi/PWRF/00000080). Machines without ACPI have no button: no error.
for m in $(cat /etc/vmnet/power-modules); do
	modprobe -q "$m" 2>/dev/null
done
# (No globs in this script: set -f is on.)
if ls /dev/input 2>/dev/null | grep -q '^event'; then
	acpid -c /etc/acpi -l /dev/null 2>/dev/null
fi

# Every virtio NIC must be there before its interface is brought up: wait
# briefly for the network devices of virtio devices of type 1 (network).
for v in $(ls /sys/bus/virtio/devices 2>/dev/null); do
	v=/sys/bus/virtio/devices/$v
	[ "$(cat "$v/device" 2>/dev/null)" = 0x0001 ] || continue
	n=0
	while [ ! -d "$v/net" ] && [ $n -lt 50 ]; do
		sleep 0.1
		n=$((n + 1))
	done
done

# A warm boot: everything above depends only on the image and the
# machine, so the host saves the guest here (vmnet.warm), and every guest
# restored from that snapshot reads who it is from ttyS1: the same
# vmnet.* words the command line carries (plus MACs, hostname and the
# time), base64 in lines, then "END <sha256 of the words>".
if [ -n "$warm" ]; then
	exec 8<>/dev/ttyS1
	stty -F /dev/ttyS1 115200 -echo -onlcr 2>/dev/null
	echo VMNET-WARM-POINT
	: >/run/vmnet-id.b64
	sum=
	while IFS= read -r l <&8; do
		case "$l" in
		END\ *)
			sum=${l#END }
			break
			;;
		*) printf %s "$l" >>/run/vmnet-id.b64 ;;
		esac
	done
	exec 8>&-
	if base64 -d </run/vmnet-id.b64 >/run/vmnet-id 2>/dev/null && [ "$(sha256sum </run/vmnet-id)" = "$sum  -" ]; then
		IFS= read -r id </run/vmnet-id
		parse $id
	else
		err "the identity sent after the restore arrived garbled"
	fi
	# The clock stood still while the guest was saved.
	if [ -n "$now" ]; then
		date -u -s "@$now" >/dev/null 2>&1 || hwclock -s 2>/dev/null
	else
		hwclock -s 2>/dev/null
	fi
fi
[ -z "$nonce" ] || echo "$nonce" >/run/vmnet.nonce
[ -z "$host" ] || echo "$host" 2>/dev/null >/proc/sys/kernel/hostname || err "cannot set hostname $host"

if [ -z "$havecmd" ] && [ -x /vmnet/run ]; then
	havecmd=run
fi
cmd=
if [ "$havecmd" = cmdline ]; then
	if ! cmd=$(echo "$cmd64" | base64 -d 2>/dev/null); then
		err "vmnet.cmd is not valid standard base64: $cmd64"
	fi
fi

# The MAC a restored guest's NIC still has is the saved guest's: set each
# NIC's own before it is up.
for s in $macs; do
	i=${s%%:*}
	v=${s#*:}
	out=$(ip link set dev "$i" address "$v" 2>&1) || err "vmnet.mac=$s: $out"
done

# Interfaces named on the command line must exist; wait briefly for late probes.
want=
for s in $ips $mtus; do
	want="$want ${s%%:*}"
done
for i in $want; do
	n=0
	while [ ! -e "/sys/class/net/$i" ] && [ $n -lt 50 ]; do
		sleep 0.1
		n=$((n + 1))
	done
	[ -e "/sys/class/net/$i" ] || err "interface $i not found (have: $(ls /sys/class/net | tr '\n' ' '))"
done

for s in $mtus; do
	i=${s%%:*}
	v=${s#*:}
	if [ "$i" = "$s" ] || [ -z "$v" ]; then
		err "vmnet.mtu=$s: want IFACE:MTU"
	elif [ -e "/sys/class/net/$i" ]; then
		out=$(ip link set dev "$i" mtu "$v" 2>&1) || err "vmnet.mtu=$s: $out"
	fi
done

for i in $(ls /sys/class/net); do
	case "$i" in eth*) ;; *) continue ;; esac
	out=$(ip link set dev "$i" up 2>&1) || err "cannot bring up $i: $out"
done

for s in $ips; do
	i=${s%%:*}
	a=${s#*:}
	if [ "$i" = "$s" ] || [ -z "$a" ]; then
		err "vmnet.ip=$s: want IFACE:ADDR/LEN[+ADDR/LEN...]"
		continue
	fi
	[ -e "/sys/class/net/$i" ] || continue
	case "$i" in eth*) ;; *) ip link set dev "$i" up 2>/dev/null ;; esac # eth* are up already
	# Split at '+' in the shell: under TCG every program started costs
	# tens of milliseconds.
	IFS=+
	set -- $a
	IFS=' 	
'
	for x in "$@"; do
		case "$x" in
		*/*) out=$(ip addr add "$x" dev "$i" 2>&1) || err "vmnet.ip: add $x to $i: $out" ;;
		*) err "vmnet.ip=$s: address $x has no /LEN" ;;
		esac
	done
done

for s in $routes; do
	case "$s" in
	default:*)
		dst=default
		gw=${s#default:}
		;;
	*/*:*)
		p=${s%%/*}
		r=${s#*/}
		dst=$p/${r%%:*}
		gw=${r#*:}
		;;
	*)
		err "vmnet.route=$s: want DEST:GW with DEST 'default' or ADDR/LEN"
		continue
		;;
	esac
	fam=-4
	case "$gw" in *:*) fam=-6 ;; esac
	[ -n "$gw" ] || err "vmnet.route=$s: missing gateway"
	out=$(ip $fam route add "$dst" via "$gw" 2>&1) || err "vmnet.route=$s: $out"
done

if [ "$errors" -gt 0 ] && [ -n "$havecmd" ]; then
	finish 125
fi

# No command: a shell for programs on ttyS1 (no echo, no prompt, LF line
# ends) when that port exists, set up before VMNET-READY so that a host
# writing as soon as it sees the marker is not echoed.
if [ -z "$havecmd" ] && [ "$(cat /sys/class/tty/ttyS1/type 2>/dev/null || echo 0)" != 0 ]; then
	# Hold the port open so that input arriving before the shell opens it
	# is kept (a closed 8250 drops what it receives). PID 1 is no session
	# leader, so this does not make ttyS1 its controlling terminal.
	exec 9<>/dev/ttyS1
	stty -F /dev/ttyS1 115200 -echo -onlcr 2>/dev/null
	(
		exec 9>&-
		while :; do
			stty -F /dev/ttyS1 -echo -onlcr 2>/dev/null
			# stdout is a pipe, so sh is not interactive: no prompt and no
			# line editing (which would query the cursor position and eat
			# input). A ^C kills it; it is restarted.
			setsid sh -c 'sh </dev/ttyS1 2>&1 | cat >/dev/ttyS1'
			sleep 1
		done
	) &
fi

[ "$errors" -gt 0 ] || echo VMNET-READY

if [ -n "$havecmd" ]; then
	cd /
	if [ "$havecmd" = cmdline ]; then
		sh -c "$cmd" </dev/null
		st=$?
	else
		set --
		if [ -f /vmnet/args ]; then
			while IFS= read -r a || [ -n "$a" ]; do
				set -- "$@" "$a"
			done </vmnet/args
		fi
		/vmnet/run "$@" </dev/null
		st=$?
	fi
	finish "$st"
fi

# And an interactive shell on the console.
while :; do
	setsid cttyhack sh -i 9>&-
	sleep 1
done
