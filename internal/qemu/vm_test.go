package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/vmnet/vmnet/images/guest"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/images"
	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/tap"
)

var (
	imageOnce sync.Once
	image     images.Image
	imageErr  error
)

// guestImage builds (or finds in the cache) the vmnet test guest.
func guestImage(t testing.TB) images.Image {
	t.Helper()
	testenv.RequireProgram(t, DefaultBinary)
	imageOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		image, imageErr = images.Ensure(ctx, images.Options{})
	})
	var missing *images.MissingError
	if errors.As(imageErr, &missing) {
		testenv.Missing(t, "guest image: %v", imageErr)
	}
	if imageErr != nil {
		t.Fatalf("guest image: %v", imageErr)
	}
	return image
}

// lab is a private namespace with bridge br0 (10.0.0.1/24) for the guest
// taps to join.
type lab struct {
	ns netns.Handle
	nl *netlink.Handle
}

func newLab(t testing.TB) *lab {
	t.Helper()
	ns := testenv.NetNS(t)
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nl.Close)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := nl.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("10.0.0.1/24")
	if err := nl.AddrAdd(br, addr); err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo"}}); err != nil {
		t.Fatal(err)
	}
	return &lab{ns: ns, nl: nl}
}

// tap makes a vnet_hdr tap with the given queues on br0.
func (l *lab) tap(t testing.TB, name string, queues int) *tap.Tap {
	t.Helper()
	var tp *tap.Tap
	testenv.Do(t, l.ns, func() error {
		cfg := tap.NewConfig(name, queues)
		cfg.VnetHdrSize = 12
		cfg.Up = true
		var err error
		tp, err = tap.Create(cfg)
		return err
	})
	t.Cleanup(func() { tp.Close() })
	link, err := l.nl.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.nl.LinkSetMasterByIndex(link, l.index(t, "br0")); err != nil {
		t.Fatal(err)
	}
	return tp
}

func (l *lab) index(t testing.TB, name string) int {
	link, err := l.nl.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return link.Attrs().Index
}

// queues reads the tap's enabled and disabled queue counts from rtnetlink.
func (l *lab) queues(t *testing.T, name string) (enabled, disabled int) {
	link, err := l.nl.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	tt, ok := link.(*netlink.Tuntap)
	if !ok {
		t.Fatalf("%s is a %T, not a tap", name, link)
	}
	return tt.Queues, tt.DisabledQueues
}

func guestSpec(t *testing.T, img images.Image, name string, g guest.Args) Spec {
	t.Helper()
	app, err := g.Append("")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	return Spec{
		Name: name, Machine: MachineQ35, Accel: AccelAuto, CPUs: 2, MemoryMiB: 512,
		Kernel: img.Kernel, Initrd: img.Initrd, Append: app,
		RunDir: filepath.Join(dir, "run"), ConsoleLog: filepath.Join(dir, "console.log"),
		ConsoleLines: 400, Logf: t.Logf,
	}
}

func start(t *testing.T, s Spec) *VM {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vm, err := Start(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := vm.Stop(ctx); err != nil {
			t.Error(err)
		}
	})
	return vm
}

func waitReady(t *testing.T, vm *VM, d time.Duration) time.Duration {
	t.Helper()
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := vm.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return time.Since(t0)
}

func wait(t *testing.T, vm *VM, d time.Duration) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	st, err := vm.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func addr(s string) []netip.Prefix { return []netip.Prefix{netip.MustParsePrefix(s)} }

// The main path: 2 vCPUs, a 2-queue vnet_hdr tap on a bridge; the guest
// pings the bridge and reports two combined channels and TSO, while the
// host sees both tap queues enabled.
func TestGuestMultiQueue(t *testing.T) {
	img := guestImage(t)
	l := newLab(t)
	tp := l.tap(t, "vm0", 2)
	if en, dis := l.queues(t, "vm0"); en != 2 || dis != 0 {
		t.Logf("before QEMU: %d enabled, %d disabled queues", en, dis)
	}
	g := guest.Args{
		IPs: []guest.IP{{Iface: "eth0", Addrs: addr("10.0.0.2/24")}},
		Cmd: "ping -c 3 -W 2 10.0.0.1 && ethtool -l eth0 && ethtool -k eth0 && sleep 4",
	}
	s := guestSpec(t, img, "mq", g)
	s.NICs = []NIC{{ID: "n0", MAC: "52:54:00:00:00:02", Queues: tp.Files()}}
	t0 := time.Now()
	vm := start(t, s)
	st, err := vm.Status(context.Background())
	if err != nil || st.Status != "running" || !st.Running {
		t.Fatalf("query-status: %+v %v", st, err)
	}
	waitReady(t, vm, 90*time.Second)
	t.Logf("boot to %s: %v (accel %s, %s)", guest.ReadyMarker, time.Since(t0).Round(time.Millisecond), vm.Accel(), s.Machine)

	// While the guest sleeps, the tap must show both queues enabled.
	var en, dis int
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if en, dis = l.queues(t, "vm0"); en == 2 && dis == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if en != 2 || dis != 0 {
		t.Errorf("tap vm0 while the guest runs: %d enabled, %d disabled queues; want 2, 0", en, dis)
	}

	if status := wait(t, vm, 90*time.Second); status != 0 {
		t.Fatalf("guest command exited %d; console:\n%s", status, strings.Join(vm.ConsoleTail(100), "\n"))
	}
	out := strings.Join(vm.ConsoleTail(400), "\n")
	if !regexp.MustCompile(`(?s)Current hardware settings:.*?Combined:\s+2`).MatchString(out) {
		t.Errorf("ethtool -l eth0 does not show Combined 2:\n%s", out)
	}
	if !regexp.MustCompile(`(?m)^tcp-segmentation-offload: on`).MatchString(out) {
		t.Errorf("ethtool -k eth0 does not show TSO on:\n%s", out)
	}
	if !strings.Contains(out, " 0% packet loss") {
		t.Errorf("ping to the bridge failed:\n%s", out)
	}
	log, err := os.ReadFile(s.ConsoleLog)
	if err != nil || !strings.Contains(string(log), guest.ReadyMarker) {
		t.Errorf("console log %s lacks %s (err %v)", s.ConsoleLog, guest.ReadyMarker, err)
	}
}

// Exit statuses of the guest command come back from Wait; microvm with
// virtio-net-device is exercised on the way.
func TestGuestExitStatus(t *testing.T) {
	img := guestImage(t)
	l := newLab(t)
	for _, tc := range []struct {
		machine string
		cmd     string
		want    int
	}{
		{MachineMicroVM, "ping -c 1 -W 5 10.0.0.1 && exit 3", 3},
		{MachinePC, "ping -c 1 -W 5 10.0.0.1", 0},
	} {
		t.Run(tc.machine, func(t *testing.T) {
			tp := l.tap(t, "vm-"+tc.machine, 2)
			s := guestSpec(t, img, "exit-"+tc.machine, guest.Args{
				IPs: []guest.IP{{Iface: "eth0", Addrs: addr("10.0.0.2/24")}},
				Cmd: tc.cmd,
			})
			s.Machine = tc.machine
			s.NICs = []NIC{{ID: "n0", Queues: tp.Files()}}
			t0 := time.Now()
			vm := start(t, s)
			shutdown, unsub := vm.Events("SHUTDOWN")
			defer unsub()
			waitReady(t, vm, 90*time.Second)
			t.Logf("boot to %s: %v on %s", guest.ReadyMarker, time.Since(t0).Round(time.Millisecond), tc.machine)
			if got := wait(t, vm, 60*time.Second); got != tc.want {
				t.Fatalf("exit status %d, want %d; console:\n%s", got, tc.want, strings.Join(vm.ConsoleTail(30), "\n"))
			}
			select {
			case ev := <-shutdown:
				t.Logf("QMP event %s %v", ev.Event, ev.Data)
			default:
				t.Errorf("no SHUTDOWN event over QMP")
			}
			select {
			case <-vm.Exited():
			default:
				t.Fatalf("Wait returned but QEMU still runs")
			}
		})
	}
}

// A guest whose program is done (its exit status printed) but which does
// not power off (seen on a loaded host: a kernel worker stuck in shutdown)
// is stopped once exitPoweroff has passed: Wait returns the printed
// status instead of waiting out the program's timeout.
func TestGuestExitWithoutPoweroff(t *testing.T) {
	img := guestImage(t)
	nonce := guest.NewNonce()
	cmd := `n=$(sed -n 's/.*vmnet.nonce=\([0-9a-f]*\).*/\1/p' /proc/cmdline)
echo "VMNET-EXIT=7 $n"
sleep 600`
	s := guestSpec(t, img, "nopoweroff", guest.Args{Cmd: cmd, Nonce: nonce})
	s.CPUs = 1
	vm := start(t, s)
	waitReady(t, vm, 90*time.Second)
	t0 := time.Now()
	// The program's timeout is far longer than exitPoweroff and Stop's
	// grace together: Wait must not need it.
	if st := wait(t, vm, 5*time.Minute); st != 7 {
		t.Errorf("exit status %d, want 7; console:\n%s", st, strings.Join(vm.ConsoleTail(10), "\n"))
	}
	t.Logf("Wait returned %v after the marker", time.Since(t0).Round(time.Millisecond))
	select {
	case <-vm.Exited():
	default:
		t.Fatalf("Wait returned but QEMU still runs")
	}
}

// A guest that never finishes makes Wait time out with the console tail,
// and Stop still gets rid of it (through the ACPI power button, which the
// test image takes as a poweroff).
func TestGuestTimeout(t *testing.T) {
	img := guestImage(t)
	s := guestSpec(t, img, "stuck", guest.Args{Cmd: "echo going-to-sleep; sleep 600"})
	s.CPUs = 1
	s.PowerdownGrace = time.Second
	vm := start(t, s)

	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	err := vm.WaitReady(ctx)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "vm stuck: no VMNET-READY within") {
		t.Errorf("WaitReady with 1ms: %v", err)
	}
	waitReady(t, vm, 90*time.Second)

	// A QEMU that does not answer: the QMP call times out, and once QEMU
	// runs again the next call reconnects.
	if err := syscall.Kill(vm.PID(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 500*time.Millisecond)
	_, err = vm.Status(ctx)
	cancel()
	syscall.Kill(vm.PID(), syscall.SIGCONT)
	if err == nil || !strings.Contains(err.Error(), "vm stuck: qmp query-status: no reply") {
		t.Fatalf("query-status on a stopped QEMU: %v", err)
	}
	if st, err := vm.Status(context.Background()); err != nil || st.Status != "running" {
		t.Fatalf("query-status after SIGCONT: %+v %v", st, err)
	}

	// The console tail in Wait's error must hold the command's line: wait
	// until the guest printed it (the command starts after VMNET-READY,
	// and under TCG on a loaded host that can take longer than the 3 s
	// Wait is given).
	printed := time.Now()
	for deadline := printed.Add(60 * time.Second); !slices.ContainsFunc(vm.ConsoleTail(50), func(l string) bool { return strings.TrimSpace(l) == "going-to-sleep" }); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the guest command printed nothing in 60s; console:\n%s", strings.Join(vm.ConsoleTail(20), "\n"))
		}
	}
	t.Logf("the command's line was on the console %v after the checks above", time.Since(printed).Round(time.Millisecond))
	ctx, cancel = context.WithTimeout(context.Background(), 3*time.Second)
	_, err = vm.Wait(ctx)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "vm stuck: guest command did not finish") || !strings.Contains(err.Error(), "going-to-sleep") {
		t.Fatalf("Wait on a stuck guest: %v", err)
	}
	t.Log(err)
	t0 := time.Now()
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := vm.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-vm.Exited():
	default:
		t.Fatal("Stop returned but QEMU runs")
	}
	t.Logf("Stop took %v", time.Since(t0).Round(time.Millisecond))
	if _, err := os.Stat(filepath.Join(s.RunDir, QMPSocketName)); !os.IsNotExist(err) {
		t.Errorf("QMP socket left behind: %v", err)
	}
}

// QEMU that dies at start-up is reported with its stderr.
func TestStartFailure(t *testing.T) {
	img := guestImage(t)
	s := guestSpec(t, img, "bad", guest.Args{Cmd: "true"})
	s.ExtraArgs = []string{"-device", "no-such-device-xyz"}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	vm, err := Start(ctx, s)
	if err == nil {
		vm.Stop(ctx)
		t.Fatal("Start succeeded with a bogus device")
	}
	if !strings.Contains(err.Error(), "vm bad: QEMU exited during start-up") || !strings.Contains(err.Error(), "no-such-device-xyz") {
		t.Errorf("error lacks the cause: %v", err)
	}
	if ents, _ := os.ReadDir(s.RunDir); len(ents) != 0 {
		t.Errorf("run dir not cleaned: %v", ents)
	}

	// A NIC "queue" that is not a tap: QEMU refuses it, vmnet says why.
	s.ExtraArgs = nil
	s.NICs = []NIC{{ID: "n0", Queues: devNull(t, 1)}}
	vm, err = Start(ctx, s)
	if err == nil {
		vm.Stop(ctx)
		t.Fatal("Start succeeded with /dev/null as a tap")
	}
	t.Log(err)
	if !strings.Contains(err.Error(), "QEMU exited during start-up") {
		t.Errorf("unexpected error: %v", err)
	}

	s.NICs[0].Vhost = VhostOn
	if _, err := os.Stat("/dev/vhost-net"); err != nil {
		_, err := Start(ctx, s)
		if err == nil || !strings.Contains(err.Error(), "/dev/vhost-net") {
			t.Errorf("vhost=on without /dev/vhost-net: %v", err)
		}
	}
}

// shell talks to the guest's program shell on ttyS1 (no echo, no prompt).
type shell struct {
	c net.Conn
	r *bufio.Reader
	n int
}

func dialShell(t *testing.T, path string) *shell {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s := &shell{c: c, r: bufio.NewReader(c)}
	// The guest drops what arrives before its shell opens ttyS1: knock
	// until the shell answers. Each knock has its own number, and only
	// the answer to the latest one ends the wait: the shell answers in
	// order, so every answer to an earlier knock came before it. (Waiting
	// a fixed 500 ms for stray answers left one in the first command's
	// output when the guest was slower than that.)
	deadline := time.Now().Add(60 * time.Second)
	for n := 0; time.Now().Before(deadline); n++ {
		want := fmt.Sprintf("SYNC-OK-%d", n)
		fmt.Fprintf(c, "echo %s\n", want)
		c.SetReadDeadline(time.Now().Add(time.Second))
		for {
			line, err := s.r.ReadString('\n')
			if err != nil {
				break
			}
			if strings.TrimSpace(line) == want {
				return s
			}
		}
	}
	t.Fatalf("guest shell on %s does not answer", path)
	return nil
}

// run runs cmd in the guest and returns its output and exit status.
func (s *shell) run(t *testing.T, cmd string, d time.Duration) (string, int) {
	t.Helper()
	s.n++
	mark := fmt.Sprintf("END-%d-", s.n)
	s.c.SetDeadline(time.Now().Add(d))
	if _, err := fmt.Fprintf(s.c, "%s 2>&1; echo %s$?\n", cmd, mark); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			t.Fatalf("guest shell: %q: %v; output so far: %s", cmd, err, out.String())
		}
		line = strings.TrimRight(line, "\r\n")
		if rest, ok := strings.CutPrefix(line, mark); ok {
			var st int
			fmt.Sscan(rest, &st)
			return out.String(), st
		}
		out.WriteString(line + "\n")
	}
}

// Hot-plug a second 2-queue NIC into a running q35 guest over QMP, use it
// from the guest, and unplug it again.
func TestHotplug(t *testing.T) {
	img := guestImage(t)
	l := newLab(t)
	tp0 := l.tap(t, "hp0", 1)
	tp1 := l.tap(t, "hp1", 2)
	s := guestSpec(t, img, "hot", guest.Args{IPs: []guest.IP{{Iface: "eth0", Addrs: addr("10.0.0.2/24")}}})
	s.HotplugPorts = 2
	s.ControlSocket = filepath.Join(s.RunDir, "ctl.sock")
	s.NICs = []NIC{{ID: "n0", Queues: tp0.Files()}}
	vm := start(t, s)
	waitReady(t, vm, 90*time.Second)
	sh := dialShell(t, s.ControlSocket)
	if out, st := sh.run(t, "ls /sys/class/net", 10*time.Second); st != 0 || strings.Contains(out, "eth1") {
		t.Fatalf("before hot-plug: %q status %d", out, st)
	}

	opCtx := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		t.Cleanup(cancel)
		return ctx
	}
	if err := vm.Hotplug(opCtx(), NIC{ID: "n1", MAC: "52:54:00:00:01:01", Queues: tp1.Files()}); err != nil {
		t.Fatal(err)
	}
	// The netdev must be QEMU's, on the tap's two fds.
	if !pciHas(t, vm, "n1") {
		t.Errorf("n1 not on the PCI bus")
	}
	out, st := sh.run(t, `i=0; while [ $i -lt 300 ] && ! [ -e /sys/class/net/eth1 ]; do sleep 0.1; i=$((i+1)); done; `+
		`cat /sys/class/net/eth1/address && ip link set eth1 up && ip addr add 10.0.0.3/24 dev eth1 && `+
		`ip route add 10.0.0.1/32 dev eth1 && ping -c 2 -W 3 -I eth1 10.0.0.1 && ethtool -l eth1`, 60*time.Second)
	t.Logf("guest after hot-plug:\n%s", out)
	if st != 0 || !strings.Contains(out, "52:54:00:00:01:01") {
		t.Fatalf("hot-plugged NIC not usable in the guest (status %d):\n%s", st, out)
	}
	if !regexp.MustCompile(`(?s)Current hardware settings:.*?Combined:\s+2`).MatchString(out) {
		t.Errorf("hot-plugged NIC lacks 2 combined channels:\n%s", out)
	}
	if en, dis := l.queues(t, "hp1"); en != 2 || dis != 0 {
		t.Errorf("tap hp1: %d enabled, %d disabled queues; want 2, 0", en, dis)
	}

	// A second hot-plug with the same id must fail cleanly, and must not
	// switch the tap fds QEMU is using to blocking mode (QEMU would hang).
	if err := vm.Hotplug(opCtx(), NIC{ID: "n1", Queues: tp1.Files()}); err == nil || !strings.Contains(err.Error(), "plugged already") {
		t.Errorf("duplicate hot-plug id: %v", err)
	}
	if err := vm.Hotplug(opCtx(), NIC{ID: "n0", Queues: tp1.Files()}); err == nil {
		t.Errorf("hot-plug with the id of a boot NIC accepted")
	}
	for i, f := range tp1.Files() {
		rc, err := f.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var fl int
		rc.Control(func(fd uintptr) { fl, err = unix.FcntlInt(fd, unix.F_GETFL, 0) })
		if err != nil || fl&unix.O_NONBLOCK == 0 {
			t.Errorf("tap hp1 queue %d in use by QEMU is blocking now (flags %#x, %v)", i, fl, err)
		}
	}
	if _, err := vm.Status(opCtx()); err != nil {
		t.Fatalf("QEMU unresponsive after the duplicate hot-plug: %v", err)
	}

	t0 := time.Now()
	if err := vm.Unplug(opCtx(), "n1"); err != nil {
		t.Fatal(err)
	}

	t.Logf("unplug took %v", time.Since(t0).Round(time.Millisecond))
	if out, _ := sh.run(t, "ls /sys/class/net", 10*time.Second); strings.Contains(out, "eth1") {
		t.Errorf("eth1 still in the guest after unplug: %q", out)
	}
	if pciHas(t, vm, "n1") {
		t.Errorf("n1 still on the PCI bus")
	}
	// Port freed: plug again.
	if err := vm.Hotplug(opCtx(), NIC{ID: "n1", Queues: tp1.Files()}); err != nil {
		select {
		case <-vm.Exited():
			t.Logf("QEMU exited: %s", vm.Stderr())
		default:
		}
		t.Fatalf("re-plug after unplug: %v", err)
	}
	out, st = sh.run(t, `i=0; while [ $i -lt 300 ] && ! [ -e /sys/class/net/eth1 ]; do sleep 0.1; i=$((i+1)); done; `+
		`ip link set eth1 up && ip addr add 10.0.0.3/24 dev eth1 && ip route replace 10.0.0.1/32 dev eth1 && ping -c 2 -W 3 -I eth1 10.0.0.1`, 60*time.Second)
	if st != 0 {
		t.Fatalf("re-plugged NIC not usable (status %d):\n%s", st, out)
	}
}

// iperf3 from the guest to the host through the 2-queue tap; logs the
// rate, asserts nothing about speed.
func TestGuestIperf(t *testing.T) {
	img := guestImage(t)
	iperf := testenv.RequireProgram(t, "iperf3")
	l := newLab(t)
	tp := l.tap(t, "ip0", 2)

	var srv *exec.Cmd
	var srvOut strings.Builder
	testenv.Do(t, l.ns, func() error {
		// Forked from this thread, the server lives in the lab namespace.
		srv = exec.Command(iperf, "-s", "-1", "-J", "-B", "10.0.0.1")
		srv.Stdout = &srvOut
		return srv.Start()
	})
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })

	s := guestSpec(t, img, "iperf", guest.Args{
		IPs: []guest.IP{{Iface: "eth0", Addrs: addr("10.0.0.2/24")}},
		Cmd: "sleep 0.5; iperf3 -c 10.0.0.1 -t 5 -f m",
	})
	s.NICs = []NIC{{ID: "n0", Queues: tp.Files()}}
	vm := start(t, s)
	waitReady(t, vm, 90*time.Second)
	if st := wait(t, vm, 90*time.Second); st != 0 {
		t.Fatalf("iperf3 in the guest exited %d:\n%s", st, strings.Join(vm.ConsoleTail(40), "\n"))
	}
	done := make(chan error, 1)
	go func() { done <- srv.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("iperf3 server did not finish")
	}
	var res struct {
		End struct {
			SumReceived struct {
				Bps float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(srvOut.String()), &res); err != nil {
		t.Fatalf("iperf3 server JSON: %v\n%s", err, srvOut.String())
	}
	if res.End.SumReceived.Bps <= 0 {
		t.Fatalf("iperf3 server received nothing:\n%s", srvOut.String())
	}
	t.Logf("iperf3 guest->host (TCG, 2 vCPUs, 2 queues, vnet_hdr): %.2f Gbit/s received by the host", res.End.SumReceived.Bps/1e9)
}

// pciHas asks QEMU (query-pci) whether a device with this id is plugged.
func pciHas(t *testing.T, vm *VM, id string) bool {
	t.Helper()
	raw, err := vm.QMP(context.Background(), "query-pci", nil)
	if err != nil {
		t.Fatal(err)
	}
	type dev struct {
		QdevID string `json:"qdev_id"`
		Bridge *struct {
			Bus struct {
				Devices []json.RawMessage `json:"devices"`
			} `json:"bus"`
			Devices []json.RawMessage `json:"devices"`
		} `json:"pci_bridge"`
	}
	var buses []struct {
		Devices []json.RawMessage `json:"devices"`
	}
	if err := json.Unmarshal(raw, &buses); err != nil {
		t.Fatal(err)
	}
	var walk func([]json.RawMessage) bool
	walk = func(ds []json.RawMessage) bool {
		for _, r := range ds {
			var d dev
			if err := json.Unmarshal(r, &d); err != nil {
				t.Fatal(err)
			}
			if d.QdevID == id {
				return true
			}
			if d.Bridge != nil && (walk(d.Bridge.Devices) || walk(d.Bridge.Bus.Devices)) {
				return true
			}
		}
		return false
	}
	for _, b := range buses {
		if walk(b.Devices) {
			return true
		}
	}
	return false
}

// A tap whose second queue an earlier QEMU left detached (1 vCPU uses one
// queue pair) must boot again: QEMU 7.2 would abort on the detached queue.
func TestRestartSameTap(t *testing.T) {
	img := guestImage(t)
	l := newLab(t)
	tp := l.tap(t, "rs0", 2)
	for i := 0; i < 2; i++ {
		s := guestSpec(t, img, fmt.Sprintf("restart%d", i), guest.Args{
			IPs: []guest.IP{{Iface: "eth0", Addrs: addr("10.0.0.2/24")}},
			Cmd: "ping -c 1 -W 5 10.0.0.1",
		})
		s.CPUs = 1
		s.NICs = []NIC{{ID: "n0", Queues: tp.Files()}}
		vm := start(t, s)
		waitReady(t, vm, 90*time.Second)
		if st := wait(t, vm, 60*time.Second); st != 0 {
			t.Fatalf("boot %d: guest exited %d", i, st)
		}
		en, dis := l.queues(t, "rs0")
		t.Logf("after boot %d: %d enabled, %d disabled queues", i, en, dis)
	}
}

// QEMU runs as an unprivileged user under the seccomp sandbox: it only
// gets fds (taps, sockets, kernel and initrd), so networking works without
// CAP_NET_ADMIN and QEMU needs no access to any of vmnet's directories:
// the image stays in root's cache and the run directory in a 0700 test
// directory.
func TestGuestAsUser(t *testing.T) {
	img := guestImage(t)
	l := newLab(t)
	tp := l.tap(t, "us0", 2)
	s := guestSpec(t, img, "nobody", guest.Args{
		IPs: []guest.IP{{Iface: "eth0", Addrs: addr("10.0.0.2/24")}},
		Cmd: "ping -c 1 -W 5 10.0.0.1",
	})
	s.User = &User{UID: 65534, GID: 65534}
	s.NICs = []NIC{{ID: "n0", Queues: tp.Files()}}

	// A kernel the user may not read is refused before QEMU starts.
	private := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(private, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := s
	bad.Kernel = private
	if _, err := Start(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "QEMU runs as uid 65534 (gid 65534) but kernel") {
		t.Fatalf("Start with an unreadable kernel: %v", err)
	} else {
		t.Log(err)
	}

	vm := start(t, s)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", vm.PID()))
	if err != nil {
		t.Fatal(err)
	}
	for _, re := range []string{`(?m)^Uid:\s+65534\s+65534\s+65534\s+65534$`, `(?m)^Gid:\s+65534\s+65534\s+65534\s+65534$`,
		`(?m)^Groups:\s*$`, `(?m)^CapEff:\s+0+$`, `(?m)^Seccomp:\s+2$`, `(?m)^NoNewPrivs:\s+1$`} {
		if !regexp.MustCompile(re).Match(status) {
			t.Errorf("QEMU status lacks %s:\n%s", re, status)
		}
	}
	// Everything in the run directory is root's.
	ents, _ := os.ReadDir(s.RunDir)
	for _, e := range append(ents, nil) {
		p := s.RunDir
		if e != nil {
			p = filepath.Join(s.RunDir, e.Name())
		}
		st, err := os.Lstat(p)
		if err != nil || st.Sys().(*syscall.Stat_t).Uid != 0 || st.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: %v %v (want root's, private)", p, st.Mode(), err)
		}
	}
	waitReady(t, vm, 90*time.Second)
	if st := wait(t, vm, 60*time.Second); st != 0 {
		t.Fatalf("guest as nobody: exit %d:\n%s", st, strings.Join(vm.ConsoleTail(20), "\n"))
	}
}

// A guest whose set-up fails (VMNET-ERROR) makes WaitReady fail at once
// with the guest's reason, instead of waiting for the timeout.
func TestGuestSetupError(t *testing.T) {
	img := guestImage(t)
	s := guestSpec(t, img, "broken", guest.Args{IPs: []guest.IP{{Iface: "eth7", Addrs: addr("10.0.0.2/24")}}, Cmd: "true"})
	s.CPUs = 1
	vm := start(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	err := vm.WaitReady(ctx)
	if err == nil || !strings.Contains(err.Error(), "vm broken: guest set-up failed: VMNET-ERROR") || !strings.Contains(err.Error(), "eth7") {
		t.Fatalf("WaitReady: %v", err)
	}
	t.Log(err)
}

// QEMU must survive the exit of the thread that called Start: it dies
// with vmnet through PR_SET_PDEATHSIG, which follows the forking thread,
// and Go ends a thread whose goroutine exits while locked to it.
func TestStartFromExitingThread(t *testing.T) {
	img := guestImage(t)
	s := guestSpec(t, img, "orphan", guest.Args{Cmd: "sleep 600"})
	s.CPUs = 1
	type res struct {
		vm  *VM
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: this thread ends with the goroutine
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		vm, err := Start(ctx, s)
		ch <- res{vm, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	vm := r.vm
	t.Cleanup(func() { vm.Stop(context.Background()) })
	time.Sleep(time.Second)
	select {
	case <-vm.Exited():
		t.Fatalf("QEMU died with the thread that started it: %s", vm.Stderr())
	default:
	}
	if _, err := vm.Status(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// A second Start on the run directory of a running VM is refused.
func TestStartTwice(t *testing.T) {
	img := guestImage(t)
	s := guestSpec(t, img, "twice", guest.Args{Cmd: "sleep 600"})
	s.CPUs = 1
	s.PowerdownGrace = time.Millisecond
	vm := start(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	vm2, err := Start(ctx, s)
	if err == nil {
		vm2.Stop(ctx)
		t.Fatal("second Start on the same run dir succeeded")
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("already running as QEMU pid %d", vm.PID())) {
		t.Fatalf("unexpected error: %v", err)
	}
	if _, err := vm.Status(ctx); err != nil {
		t.Fatalf("first VM harmed: %v", err)
	}
}

// TestGuestPowerButton: the test image takes the ACPI power button
// (system_powerdown, what Stop sends first) as a clean poweroff, so QEMU
// exits without the quit fallback; and a NIC the command line gives no
// address is up when the command runs.
func TestGuestPowerButton(t *testing.T) {
	img := guestImage(t)
	l := newLab(t)
	for _, machine := range []string{MachineQ35, MachineMicroVM} {
		t.Run(machine, func(t *testing.T) {
			tp := l.tap(t, "pb-"+machine, 1)
			s := guestSpec(t, img, "pb-"+machine, guest.Args{
				Cmd: `if ip -o link show eth0 | grep -q '[<,]UP[,>]'; then echo ETH0-IS-UP; else echo ETH0-IS-DOWN; fi; sleep 600`,
			})
			s.Machine = machine
			s.NICs = []NIC{{ID: "n0", Queues: tp.Files()}}
			vm := start(t, s)
			waitReady(t, vm, 90*time.Second)
			deadline := time.Now().Add(60 * time.Second)
			var state string
			for state == "" && time.Now().Before(deadline) {
				for _, line := range vm.ConsoleTail(50) {
					if strings.HasPrefix(line, "ETH0-IS-") {
						state = line
					}
				}
				time.Sleep(100 * time.Millisecond)
			}
			if state != "ETH0-IS-UP" {
				t.Errorf("eth0 without an address: %q when the command ran, want ETH0-IS-UP", state)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := vm.mon.run(ctx, "system_powerdown", nil, nil); err != nil {
				t.Fatal(err)
			}
			select {
			case <-vm.Exited():
			case <-time.After(60 * time.Second):
				t.Fatalf("QEMU still runs a minute after the power button; console:\n%s", strings.Join(vm.ConsoleTail(20), "\n"))
			}
		})
	}
}

// /init powers off only once vmnet has answered its exit marker, so that
// the marker cannot be lost in a serial buffer that power-off drops; an
// unanswered marker is printed again, three times in all. The guest
// command keeps the answer from completing a line (inlcr turns its "\n"
// into "\r", which ends no line without icrnl).
func TestGuestExitAnswered(t *testing.T) {
	img := guestImage(t)
	for _, tc := range []struct {
		name    string
		cmd     string
		markers int
	}{
		{"answered", "exit 3", 1},
		{"unanswered", "stty -F /dev/console inlcr -icrnl; exit 3", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := guestSpec(t, img, tc.name, guest.Args{Cmd: tc.cmd, Nonce: guest.NewNonce()})
			s.CPUs = 1
			vm := start(t, s)
			waitReady(t, vm, 90*time.Second)
			if st := wait(t, vm, 2*time.Minute); st != 3 {
				t.Errorf("exit status %d, want 3", st)
			}
			tail := vm.ConsoleTail(400)
			n := 0
			for _, l := range tail {
				if strings.HasPrefix(strings.TrimSpace(l), guest.ExitMarker) {
					n++
				}
				if strings.Contains(l, "VMNET-ACK") {
					t.Errorf("the answer was echoed: %q", l)
				}
			}
			if n != tc.markers {
				t.Errorf("%d exit markers, want %d; console:\n%s", n, tc.markers, strings.Join(tail, "\n"))
			}
		})
	}
}
