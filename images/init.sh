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

# A shell for programs on ttyS1 (no echo, no prompt, LF line ends),
# started again when killed (a ^C). start_shell FIFO: its first shell
# reads commands from FIFO (opened read-write, so nothing blocks) until
# it is sent "exec </dev/ttyS1": a warm guest starts it before its
# snapshot point, so that a restored guest starts no program for it.
# The caller holds ttyS1 open (fd 9).
start_shell() {
	(
		exec 9>&-
		gate=$1
		while :; do
			stty -F /dev/ttyS1 -echo -onlcr 2>/dev/null
			# sh is not interactive (no prompt and no line editing, which
			# would query the cursor position and eat input): its stdin
			# is a FIFO when it starts, or its stdout a pipe.
			if [ -n "$gate" ]; then
				setsid sh -s <>"$gate" >/dev/ttyS1 2>&1
				gate=
			else
				setsid sh -c 'sh </dev/ttyS1 2>&1 | cat >/dev/ttyS1'
			fi
			sleep 1
		done
	) &
}

nonce=
acked() { # acked: whether the host answered the exit marker within 2 s
	while IFS= read -r -t 2 l; do
		[ "$l" != "VMNET-ACK $nonce" ] || return 0
	done
	return 1
}
finish() { # finish STATUS: report the exit status on its own line and power off
	# Nothing the command left behind may print after the marker: the
	# host takes the last marker line as the status.
	kill -KILL -1 2>/dev/null
	if [ -n "$nonce" ]; then
		# A marker still in the serial port's buffers is dropped by
		# power-off, and draining the output first (as below) did not
		# always keep it: vmnet answers each marker it reads with
		# "VMNET-ACK <nonce>" on the console (guest.AckLine), and until
		# it has, the marker is printed again. No echo: the answer is
		# not output.
		stty -echo <&1 2>/dev/null
		for _ in 1 2 3; do
			printf '\nVMNET-EXIT=%d %s\n' "$1" "$nonce"
			! acked || break
		done
	else
		printf '\nVMNET-EXIT=%d\n' "$1"
		# stty applies a setting only once the output has drained
		# (TCSADRAIN), which keeps the marker from being overtaken by
		# the kernel's own power-off lines.
		stty -onlcr <&1 2>/dev/null
	fi
	sync
	poweroff -f
	sleep 2
	reboot -f # -no-reboot turns this into a QEMU exit where poweroff is unsupported
}

ips= routes= mtus= mods= cmd64= havecmd= macs= host= now= warm= nogen=
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
shellgate= hserve=
# The helper and its FIFOs (see images/helper; the ttyS1 shell's calls
# use them too: guest.ShellProgram).
helper=/usr/sbin/vmnet-helper hreq=/run/vmnet-helper-req hans=/run/vmnet-helper-ans
if [ -n "$warm" ]; then
	# PID 1 holds ttyS1 open from here on (a closed 8250 drops what it
	# receives).
	exec 9<>/dev/ttyS1
	stty -F /dev/ttyS1 115200 -echo -onlcr 2>/dev/null
	# What costs a restored guest most under TCG is starting programs
	# (each one tens of milliseconds, translated anew in every clone):
	# start what does not depend on the identity now. The NICs come up
	# without IPv6 addresses (addr_gen_mode none: the saved MAC's
	# link-local address would be every clone's); the identity's MACs are
	# set first, then their link-local addresses made. The shell on ttyS1
	# waits for its FIFO until the identity has been read.
	set +f
	for i in /sys/class/net/eth*; do
		[ -e "$i" ] || continue
		i=${i##*/}
		echo 1 >"/proc/sys/net/ipv6/conf/$i/addr_gen_mode"
		ip link set dev "$i" up
		nogen="$nogen $i"
	done
	set -f
	shellgate=/run/vmnet-shell
	mkfifo $shellgate /run/vmnet-shell-up $hreq $hans
	start_shell $shellgate
	# The helper reads the identity from ttyS1, sets the clock and the
	# network: a restored guest starts no program for that.
	$helper serve $hreq $hans <&9 9>&- &
	hserve=1
	# The host saves the guest as soon as it sees the marker: first let
	# what was started finish starting (the shell and the helper answer
	# through FIFOs) and the kernel finish bringing the links up
	# (operstate), or every clone would do that work again.
	echo 'echo >/run/vmnet-shell-up' >$shellgate
	read -r _ </run/vmnet-shell-up
	echo hello >$hreq
	read -r _ <$hans
	for i in $nogen; do
		n=0
		while { read -r st </sys/class/net/$i/operstate; } 2>/dev/null && [ "$st" != up ] && [ $n -lt 30 ]; do
			sleep 0.1
			n=$((n + 1))
		done
	done
	echo VMNET-WARM-POINT
	echo identity >$hreq
	IFS= read -r a <$hans
	case "$a" in
	OK*) parse ${a#OK} ;;
	*) err "${a#ERR }" ;;
	esac
	# The clock stood still while the guest was saved.
	a=
	if [ -n "$now" ]; then
		echo "clock $now" >$hreq
		IFS= read -r a <$hans
	fi
	[ "$a" = OK ] || hwclock -s 2>/dev/null
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

# One ip process applies the network set-up (under TCG every program
# started costs tens of milliseconds): netcmd WHAT ARGS... adds the line
# ARGS to its batch; WHAT names the line in error messages (empty: its
# failure is no error).
net=/run/vmnet-net
: >$net
nlines=0
netcmd() {
	nlines=$((nlines + 1))
	eval "netwhat$nlines=\$1"
	shift
	echo "$*" >>$net
}

# The MAC a restored guest's NIC still has is the saved guest's: set each
# NIC's own before it is up (or, in a warm guest, before it has IPv6
# addresses).
for s in $macs; do
	netcmd "vmnet.mac=$s" link set dev "${s%%:*}" address "${s#*:}"
done

for s in $mtus; do
	i=${s%%:*}
	v=${s#*:}
	case "$v" in '' | *[!0-9]*) v= ;; esac # a number, or ip stops the whole batch
	if [ "$i" = "$s" ] || [ -z "$v" ]; then
		err "vmnet.mtu=$s: want IFACE:MTU"
	elif [ -e "/sys/class/net/$i" ]; then
		netcmd "vmnet.mtu=$s" link set dev "$i" mtu "$v"
	fi
done

set +f
for i in /sys/class/net/eth*; do
	[ -e "$i" ] || continue
	netcmd "cannot bring up ${i##*/}" link set dev "${i##*/}" up
done
set -f

for s in $ips; do
	i=${s%%:*}
	a=${s#*:}
	if [ "$i" = "$s" ] || [ -z "$a" ]; then
		err "vmnet.ip=$s: want IFACE:ADDR/LEN[+ADDR/LEN...]"
		continue
	fi
	[ -e "/sys/class/net/$i" ] || continue
	case "$i" in eth*) ;; *) netcmd "" link set dev "$i" up ;; esac # eth* are up already
	# Split at '+' in the shell, not with a program.
	IFS=+
	set -- $a
	IFS=' 	
'
	for x in "$@"; do
		case "$x" in
		*/*) netcmd "vmnet.ip: add $x to $i" addr add "$x" dev "$i" ;;
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
	if [ -z "$gw" ]; then
		err "vmnet.route=$s: missing gateway"
		continue
	fi
	# (A batch line takes no -4/-6: ip takes the gateway's family.)
	netcmd "vmnet.route=$s" route add "$dst" via "$gw"
done

# The helper (resident in a warm guest) applies the lines over
# rtnetlink, each on its own, and reports each line that failed as
# "Command failed FILE:LINE" after the line's error, as ip -batch does.
st=0 out=
if [ $nlines -gt 0 ] && [ -n "$hserve" ]; then
	echo "batch $net" >$hreq
	while IFS= read -r l; do
		case "$l" in
		END\ *)
			st=${l#END }
			break
			;;
		esac
		out="$out$l
"
	done <$hans
elif [ $nlines -gt 0 ]; then
	out=$($helper batch $net 2>&1) || st=1
fi
if [ "$st" != 0 ]; then
	prev= found=
	while IFS= read -r l; do
		case "$l" in
		"Command failed $net:"*)
			found=1
			eval "w=\$netwhat${l##*:}"
			[ -z "$w" ] || err "$w: $prev"
			;;
		*) prev=$l ;;
		esac
	done <<EOF
$out
EOF
	[ -n "$found" ] || err "network set-up from vmnet.mac, vmnet.mtu, vmnet.ip and vmnet.route: $out"
fi

# A warm guest's NICs make their IPv6 link-local addresses now, from
# their own MACs.
for i in $nogen; do
	echo 0 >"/proc/sys/net/ipv6/conf/$i/addr_gen_mode"
done

if [ "$errors" -gt 0 ] && [ -n "$havecmd" ]; then
	finish 125
fi

# No command: a shell for programs on ttyS1 (no echo, no prompt, LF line
# ends) when that port exists, set up before VMNET-READY so that a host
# writing as soon as it sees the marker is not echoed. A warm guest
# started it before its snapshot point: it is told to read ttyS1 now.
ttys1=0
{ read -r ttys1 </sys/class/tty/ttyS1/type; } 2>/dev/null
if [ -z "$havecmd" ] && [ -n "$shellgate" ]; then
	echo 'exec </dev/ttyS1' >$shellgate
elif [ -z "$havecmd" ] && [ "$ttys1" != 0 ]; then
	# Hold the port open so that input arriving before the shell opens it
	# is kept (a closed 8250 drops what it receives). PID 1 is no session
	# leader, so this does not make ttyS1 its controlling terminal.
	exec 9<>/dev/ttyS1
	stty -F /dev/ttyS1 115200 -echo -onlcr 2>/dev/null
	mkfifo $hreq $hans
	$helper serve $hreq $hans </dev/null 9>&- &
	# Until the helper has the request FIFO open, a request written to
	# it is lost when the writer closes it: wait for its answer.
	echo hello >$hreq
	read -r _ <$hans
	start_shell
fi

[ "$errors" -gt 0 ] || echo VMNET-READY

if [ -n "$havecmd" ]; then
	exec 9>&- # a warm guest's ttyS1 (see above): not the command's
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

# And an interactive shell on the console, started by the first line
# typed there, which it runs first (through ENV): until then the guest
# starts no program for it (three, each costing tens of milliseconds
# under TCG, in every guest).
first=/run/vmnet-console-first
while :; do
	if IFS= read -r l; then
		# vmnet's answer to the power button's exit marker is no command.
		case "$l" in "VMNET-ACK "*) continue ;; esac
		printf 'unset ENV\n%s\n' "$l" >$first
		ENV=$first setsid cttyhack sh -i 9>&-
	fi
	sleep 1
done
