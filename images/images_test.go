package images_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vmnet/vmnet/images"
	"github.com/vmnet/vmnet/images/cpio"
	"github.com/vmnet/vmnet/images/guest"
	"github.com/vmnet/vmnet/internal/testenv"
)

var (
	imgOnce sync.Once
	img     images.Image
	imgErr  error
	imgLog  bytes.Buffer
)

// image builds the guest image once per test binary, in the user's
// cache so that later runs reuse it.
func image(t testing.TB) images.Image {
	t.Helper()
	imgOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		img, imgErr = images.Ensure(ctx, images.Options{Progress: &imgLog})
		t.Log(strings.TrimSpace(imgLog.String()))
	})
	if imgErr != nil {
		if _, ok := imgErr.(*images.MissingError); ok {
			testenv.Missing(t, "%v", imgErr)
		}
		t.Fatal(imgErr)
	}
	return img
}

// vm describes one QEMU run.
type vm struct {
	kernel   string // default img.Kernel
	initrd   string // default img.Initrd
	machine  string // pc (default) or microvm
	params   []string
	qemuArgs []string
	files    []*os.File // become fds 3, 4, ...
	timeout  time.Duration
	onReady  func() // called when VMNET-READY appears, from the reader
}

// result is what the guest printed on its console.
type result struct {
	out     string
	lines   []string
	ready   time.Duration // from QEMU start to VMNET-READY, 0 if never
	exit    int           // VMNET-EXIT status, -1 if none
	errs    []string      // VMNET-ERROR lines
	elapsed time.Duration
}

var exitRE = regexp.MustCompile(`^VMNET-EXIT=(\d+)$`)

func boot(t testing.TB, v vm) result {
	t.Helper()
	qemu := testenv.RequireProgram(t, "qemu-system-x86_64")
	im := image(t)
	if v.kernel == "" {
		v.kernel = im.Kernel
	}
	if v.initrd == "" {
		v.initrd = im.Initrd
	}
	if v.machine == "" {
		v.machine = "pc"
	}
	params := v.params
	if strings.HasPrefix(v.machine, "microvm") {
		tsc := images.HostTSCParam()
		if tsc == "" {
			t.Fatal("microvm under TCG needs tsc_early_khz and the host TSC rate is unknown")
		}
		params = append([]string{tsc}, params...)
	}
	if v.timeout == 0 {
		v.timeout = 2 * time.Minute
	}
	args := []string{"-M", v.machine, "-accel", "tcg", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-reboot", "-display", "none", "-serial", "stdio",
		"-kernel", v.kernel, "-initrd", v.initrd,
		"-append", guest.DefaultCmdline + " " + strings.Join(params, " ")}
	args = append(args, v.qemuArgs...)
	ctx, cancel := context.WithTimeout(context.Background(), v.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, args...)
	cmd.ExtraFiles = v.files
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := result{exit: -1}
	var all strings.Builder
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		all.WriteString(line + "\n")
		r.lines = append(r.lines, line)
		switch {
		case line == "VMNET-READY" && r.ready == 0:
			r.ready = time.Since(start)
			if v.onReady != nil {
				go v.onReady()
			}
		case strings.HasPrefix(line, "VMNET-ERROR: "):
			r.errs = append(r.errs, line)
		case exitRE.MatchString(line):
			fmt.Sscan(exitRE.FindStringSubmatch(line)[1], &r.exit)
		}
	}
	werr := cmd.Wait()
	r.elapsed = time.Since(start)
	r.out = all.String()
	if ctx.Err() != nil {
		t.Fatalf("QEMU did not exit within %v; console:\n%s", v.timeout, r.out)
	}
	if werr != nil {
		t.Fatalf("qemu: %v: %s\nconsole:\n%s", werr, stderr.String(), r.out)
	}
	return r
}

func TestCommandExitStatus(t *testing.T) {
	for _, tc := range []struct {
		cmd  string
		exit int
		want string
	}{
		{"true", 0, ""},
		{"exit 3", 3, ""},
		{"echo -n no-newline; exit 4", 4, "no-newline"},
		{"iperf3 --version && ethtool --version && ethtool -k lo >/dev/null && echo tools-ok", 0, "tools-ok"},
		{"uname -r; id -u; cat /proc/cmdline", 0, "vmnet.cmd="},
	} {
		t.Run(tc.cmd, func(t *testing.T) {
			r := boot(t, vm{params: []string{guest.CmdArg(tc.cmd)}})
			if r.ready == 0 || len(r.errs) > 0 {
				t.Fatalf("no VMNET-READY or errors %q; console:\n%s", r.errs, r.out)
			}
			if r.exit != tc.exit {
				t.Fatalf("VMNET-EXIT=%d, want %d; console:\n%s", r.exit, tc.exit, r.out)
			}
			if !strings.Contains(r.out, tc.want) {
				t.Fatalf("console lacks %q:\n%s", tc.want, r.out)
			}
			t.Logf("ready after %v, exited after %v", r.ready.Round(time.Millisecond), r.elapsed.Round(time.Millisecond))
		})
	}
}

// An extra cpio archive appended to the initramfs provides /vmnet/run and
// its arguments, the way later tools ship test programs into the guest.
func TestRunFromAppendedArchive(t *testing.T) {
	im := image(t)
	base, err := os.ReadFile(im.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	var extra bytes.Buffer
	c := cpio.NewWriter(&extra)
	c.Dir("vmnet", 0o755)
	c.File("vmnet/run", 0o755, []byte("#!/bin/sh\nfor a in \"$@\"; do echo \"arg:$a\"; done\necho \"argc:$#\"\nexit 7\n"))
	c.File("vmnet/args", 0o644, []byte("two words\n--flag=x\n\nlast-no-newline"))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(t.TempDir(), "initrd")
	if err := os.WriteFile(initrd, append(base, extra.Bytes()...), 0o644); err != nil {
		t.Fatal(err)
	}
	r := boot(t, vm{initrd: initrd})
	if r.exit != 7 {
		t.Fatalf("VMNET-EXIT=%d, want 7; console:\n%s", r.exit, r.out)
	}
	for _, want := range []string{"arg:two words", "arg:--flag=x", "arg:", "arg:last-no-newline", "argc:4"} {
		if !hasLine(r.lines, want) {
			t.Errorf("no console line %q", want)
		}
	}
	if t.Failed() {
		t.Log(r.out)
	}
}

func hasLine(lines []string, s string) bool {
	for _, l := range lines {
		if l == s {
			return true
		}
	}
	return false
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		params []string
		want   string
	}{
		{"missing interface", []string{"vmnet.ip=eth5:10.0.0.2/24"}, "interface eth5 not found"},
		{"module not in image", []string{"vmnet.modules=sch_netem"}, "cannot load module sch_netem"},
		{"unknown parameter", []string{"vmnet.iq=eth0:10.0.0.2/24"}, "unknown kernel parameter vmnet.iq"},
		{"no prefix length", []string{"vmnet.ip=lo:10.9.9.9"}, "has no /LEN"},
		{"bad route", []string{"vmnet.route=10.0.0.0:10.0.0.1"}, "vmnet.route=10.0.0.0:10.0.0.1"},
		{"command twice", []string{guest.CmdArg("true")}, "vmnet.cmd given more than once"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := boot(t, vm{params: append(tc.params, guest.CmdArg("echo should-not-run"))})
			if r.exit != 125 || r.ready != 0 || strings.Contains(r.out, "should-not-run\n") {
				t.Fatalf("want VMNET-EXIT=125, no VMNET-READY, command not run; console:\n%s", r.out)
			}
			if len(r.errs) == 0 || !strings.Contains(strings.Join(r.errs, "\n"), tc.want) {
				t.Fatalf("VMNET-ERROR lines %q lack %q; console:\n%s", r.errs, tc.want, r.out)
			}
		})
	}
	// The network set-up runs as one ip batch: a line that fails is
	// reported with the parameter it came from, and the lines after it
	// still run; an MTU that is no number is refused before.
	t.Run("ip batch errors", func(t *testing.T) {
		r := boot(t, vm{params: []string{"vmnet.route=10.0.0.0/8:10.99.99.99", "vmnet.mtu=lo:x",
			"vmnet.ip=lo:10.9.9.9/32", guest.CmdArg("echo should-not-run")}})
		if r.exit != 125 || strings.Contains(r.out, "should-not-run\n") {
			t.Fatalf("want VMNET-EXIT=125, command not run; console:\n%s", r.out)
		}
		errs := strings.Join(r.errs, "\n")
		for _, want := range []string{"vmnet.mtu=lo:x: want IFACE:MTU", "vmnet.route=10.0.0.0/8:10.99.99.99: "} {
			if !strings.Contains(errs, want) {
				t.Errorf("VMNET-ERROR lines %q lack %q", r.errs, want)
			}
		}
		if len(r.errs) != 2 {
			t.Errorf("want 2 VMNET-ERROR lines (the address on lo is no error), got %q", r.errs)
		}
		if t.Failed() {
			t.Log(r.out)
		}
	})
	t.Run("invalid base64", func(t *testing.T) {
		r := boot(t, vm{params: []string{"vmnet.cmd=!!notbase64"}})
		if r.exit != 125 || len(r.errs) == 0 {
			t.Fatalf("want VMNET-ERROR and VMNET-EXIT=125; console:\n%s", r.out)
		}
	})
}

// newTap creates a tap with a vnet header in a fresh namespace, gives the
// host side addresses and returns the queue fd for QEMU.
func newTap(t *testing.T) *os.File {
	ns := testenv.NetNS(t)
	var fd *os.File
	testenv.Do(t, ns, func() error {
		h := &netlink.Handle{}
		tap := &netlink.Tuntap{
			LinkAttrs:  netlink.LinkAttrs{Name: "vmtap0"},
			Mode:       netlink.TUNTAP_MODE_TAP,
			Flags:      netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE,
			Queues:     1,
			NonPersist: true,
		}
		if err := h.LinkAdd(tap); err != nil {
			return fmt.Errorf("add tap: %w", err)
		}
		fd = tap.Fds[0]
		l, err := h.LinkByName("vmtap0")
		if err != nil {
			return err
		}
		for _, a := range []string{"10.77.0.1/24", "fd77::1/64"} {
			addr, _ := netlink.ParseAddr(a)
			addr.Flags = 0x02 // IFA_F_NODAD: usable at once
			if err := h.AddrAdd(l, addr); err != nil {
				return fmt.Errorf("add %s: %w", a, err)
			}
		}
		return h.LinkSetUp(l)
	})
	t.Cleanup(func() { fd.Close() })
	return fd
}

func TestNetwork(t *testing.T) {
	for _, machine := range []string{"pc", "microvm"} {
		t.Run(machine, func(t *testing.T) {
			fd := newTap(t)
			dev := "virtio-net-pci"
			if machine == "microvm" {
				dev = "virtio-net-device"
			}
			script := strings.Join([]string{
				"set -e",
				"ip -o addr show dev eth0",
				"cat /sys/class/net/eth0/mtu",
				"ip route; ip -6 route",
				"ping -c1 -W5 10.77.0.1",
				"ping -c1 -W5 fd77::1",
				"ethtool -k eth0 | grep -E '^(tcp-segmentation-offload|tx-checksumming):'",
				"iperf3 --version | head -1",
			}, "\n")
			r := boot(t, vm{
				machine: machine,
				params: []string{
					"vmnet.ip=eth0:10.77.0.2/24+fd77::2/64", "vmnet.mtu=eth0:1400",
					"vmnet.route=10.78.0.0/16:10.77.0.1", "vmnet.route=default:fd77::1",
					"vmnet.route=fd78::/64:fd77::1",
					guest.CmdArg(script),
				},
				qemuArgs: []string{"-netdev", "tap,id=n0,fd=3,vhost=off", "-device", dev + ",netdev=n0"},
				files:    []*os.File{fd},
			})
			if r.exit != 0 || r.ready == 0 {
				t.Fatalf("VMNET-EXIT=%d ready=%v; console:\n%s", r.exit, r.ready, r.out)
			}
			for _, want := range []string{
				"inet 10.77.0.2/24", "inet6 fd77::2/64", "1400\n",
				"10.78.0.0/16 via 10.77.0.1", "default via fd77::1", "fd78::/64 via fd77::1",
				"1 packets received", "tcp-segmentation-offload: on", "iperf 3.",
			} {
				if !strings.Contains(r.out, want) {
					t.Errorf("console lacks %q", want)
				}
			}
			if t.Failed() {
				t.Log(r.out)
			}
		})
	}
}

// Without a command the guest stays up with a shell for programs on
// ttyS1, reached here through a unix socket.
func TestShellOnTTYS1(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ttyS1.sock")
	got := make(chan string, 1)
	r := boot(t, vm{
		qemuArgs: []string{"-chardev", "socket,id=c1,path=" + sock + ",server=on,wait=off", "-serial", "chardev:c1"},
		timeout:  3 * time.Minute,
		onReady: func() {
			c, err := net.Dial("unix", sock)
			if err != nil {
				got <- err.Error()
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			fmt.Fprintf(c, "echo sum=$((40+2)) uid=$(id -u)\n")
			fmt.Fprintf(c, "no-such-command; echo status=$?\n")
			br := bufio.NewReader(c)
			var lines string
			for i := 0; i < 3; i++ {
				line, err := br.ReadString('\n')
				if err != nil {
					lines += err.Error()
					break
				}
				lines += line
			}
			got <- lines
			fmt.Fprintf(c, "poweroff -f\n")
			time.Sleep(5 * time.Second) // let the guest read it before the socket closes
		},
	})
	if r.ready == 0 {
		t.Fatalf("no VMNET-READY; console:\n%s", r.out)
	}
	select {
	case line := <-got:
		// No echo and no prompt: only the commands' output comes back.
		want := "sum=42 uid=0\nsh: no-such-command: not found\nstatus=127\n"
		if line != want {
			t.Fatalf("ttyS1 answered %q, want %q", line, want)
		}
	default:
		t.Fatal("ttyS1 never answered")
	}
}

func TestEnsureCached(t *testing.T) {
	first := image(t)
	var log bytes.Buffer
	again, err := images.Ensure(context.Background(), images.Options{Progress: &log})
	if err != nil {
		t.Fatal(err)
	}
	if again.Dir != first.Dir || !strings.Contains(log.String(), "using cached image") {
		t.Fatalf("second Ensure rebuilt: %s vs %s\n%s", again.Dir, first.Dir, log.String())
	}
	for _, f := range []string{again.Kernel, again.KernelCompressed, again.Initrd} {
		if st, err := os.Stat(f); err != nil || st.Size() == 0 {
			t.Fatalf("%s: %v", f, err)
		}
	}
	// Appended archives are found only at 4-byte offsets.
	if st, _ := os.Stat(again.Initrd); st.Size()%4 != 0 {
		t.Fatalf("%s is %d bytes long, not a multiple of 4", again.Initrd, st.Size())
	}
}

// BenchmarkBoot measures QEMU start to VMNET-READY for each kernel form,
// machine type and initrd compression, with no NIC and the command
// "true". Each iteration boots every configuration once, in turn, so that
// the load of a shared machine falls on all of them alike; compare only
// figures from one run.
func BenchmarkBoot(b *testing.B) {
	im := image(b)
	gz := filepath.Join(b.TempDir(), "initramfs.cpio.gz")
	if out, err := exec.Command("sh", "-c", "gzip -1 < '"+im.Initrd+"' > '"+gz+"'").CombinedOutput(); err != nil {
		b.Fatalf("gzip: %v %s", err, out)
	}
	configs := []struct{ name, kernel, machine, initrd string }{
		{"vmlinux-pc-raw", im.Kernel, "pc", im.Initrd},
		{"vmlinux-pc-gz", im.Kernel, "pc", gz},
		{"vmlinux-microvm-raw", im.Kernel, "microvm", im.Initrd},
		{"vmlinuz-pc-raw", im.KernelCompressed, "pc", im.Initrd},
		{"vmlinuz-microvm-raw", im.KernelCompressed, "microvm", im.Initrd},
	}
	ready := make([]time.Duration, len(configs))
	for i := 0; i < b.N; i++ {
		for j, c := range configs {
			r := boot(b, vm{kernel: c.kernel, initrd: c.initrd, machine: c.machine, params: []string{guest.CmdArg("true")}})
			if r.exit != 0 {
				b.Fatalf("%s: VMNET-EXIT=%d; console:\n%s", c.name, r.exit, r.out)
			}
			ready[j] += r.ready
		}
	}
	for j, c := range configs {
		b.ReportMetric(float64(ready[j].Milliseconds())/float64(b.N), c.name+"-ms-to-ready")
	}
}

// BenchmarkEnsureCached is the cost of asking for an image that exists.
func BenchmarkEnsureCached(b *testing.B) {
	image(b)
	for i := 0; i < b.N; i++ {
		if _, err := images.Ensure(context.Background(), images.Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// The kernel features missing on the host (802.1Q, bridge VLAN filtering,
// netem, vhost-net) work inside a guest built with extra modules.
func TestExtraModules(t *testing.T) {
	testenv.RequireProgram(t, "qemu-system-x86_64")
	mods := []string{"bridge", "8021q", "vhost_net", "tun", "veth", "sch_netem", "vxlan"}
	var log bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	im, err := images.Ensure(ctx, images.Options{Modules: mods, Progress: &log})
	t.Log(strings.TrimSpace(log.String()))
	if err != nil {
		t.Fatal(err)
	}
	script := strings.Join([]string{
		"set -e",
		"ip link add br0 type bridge vlan_filtering 1",
		"ip link add v0 type veth peer name v1",
		"ip link set v0 master br0",
		"bridge vlan add dev v0 vid 5",
		"ip link add link v1 name v1.5 type vlan id 5",
		"ip link add vx0 type vxlan id 5 dstport 4789 local 127.0.0.1",
		"tc qdisc add dev v1 root netem delay 1ms",
		"test -c /dev/vhost-net && test -c /dev/net/tun",
		"echo extra-ok",
	}, "\n")
	r := boot(t, vm{kernel: im.Kernel, initrd: im.Initrd,
		params: []string{"vmnet.modules=" + strings.Join(mods, ","), guest.CmdArg(script)}})
	if r.exit != 0 || !hasLine(r.lines, "extra-ok") {
		t.Fatalf("VMNET-EXIT=%d; console:\n%s", r.exit, r.out)
	}
}

// TestBuildFromScratch builds the image into an empty cache, as on a
// fresh machine (download, unpack, initramfs), and then reuses it.
func TestBuildFromScratch(t *testing.T) {
	if testing.Short() {
		t.Skip("downloads the Debian kernel package; not in -short mode")
	}
	dir := t.TempDir()
	var log bytes.Buffer
	// As `vmnet --netns NS up` does on a fresh machine: the caller works
	// in a namespace where no name resolves, and the kernel package must
	// still be fetched.
	var img images.Image
	var err error
	testenv.Do(t, testenv.NetNS(t), func() error {
		img, err = images.Ensure(context.Background(), images.Options{CacheDir: dir, Progress: &log})
		return nil
	})
	var missing *images.MissingError
	if errors.As(err, &missing) {
		testenv.Missing(t, "%v", err)
	}
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	t.Logf("build from an empty cache:\n%s", log.String())
	if strings.Contains(log.String(), "using cached image") || !strings.HasPrefix(img.Dir, dir) {
		t.Fatalf("did not build into the empty cache %s: %s\n%s", dir, img.Dir, log.String())
	}
	log.Reset()
	again, err := images.Ensure(context.Background(), images.Options{CacheDir: dir, Progress: &log})
	if err != nil || again.Dir != img.Dir || !strings.Contains(log.String(), "using cached image") {
		t.Fatalf("second Ensure did not reuse %s: %v %s\n%s", img.Dir, err, again.Dir, log.String())
	}
}
