package gexec_test

// Tests of internal/qemu's vhost-net path against the kernel it runs on.
// The host here has no /dev/vhost-net (CONFIG_VHOST_NET off), so the
// vhost=on half runs inside a guest: TestGuestOnly boots one with
// `go test -exec 'vmnet exec'` and fails if it was skipped there.

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/qemu"
	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/tap"
)

// vhostFeature names what the vhost=on tests need.
const vhostFeature = "CONFIG_VHOST_NET"

// vhostSetOwner is VHOST_SET_OWNER, _IO(VHOST_VIRTIO 0xAF, 0x01)
// (include/uapi/linux/vhost.h); x/sys/unix does not define it.
const vhostSetOwner = 0xAF01

// newTap creates a vnet_hdr tap with the given number of queues in a
// fresh namespace.
func newTap(t *testing.T, name string, queues int) *tap.Tap {
	t.Helper()
	ns := testenv.NetNS(t)
	var tp *tap.Tap
	testenv.Do(t, ns, func() error {
		cfg := tap.NewConfig(name, queues)
		cfg.VnetHdrSize = 12
		var err error
		tp, err = tap.Create(cfg)
		return err
	})
	t.Cleanup(func() { tp.Close() })
	return tp
}

// netdev returns the value of the -netdev option.
func netdev(t *testing.T, args []string) string {
	t.Helper()
	for i, a := range args {
		if a == "-netdev" && i+1 < len(args) {
			return args[i+1]
		}
	}
	t.Fatalf("no -netdev in %q", args)
	return ""
}

func vhostSpec(t *testing.T, tp *tap.Tap, mode string) qemu.Spec {
	return qemu.Spec{Name: "vh", Kernel: "vmlinux", RunDir: t.TempDir(),
		NICs: []qemu.NIC{{ID: "n0", Queues: tp.Files(), Vhost: mode}}}
}

// handleFiles is how many files QEMU inherits before the tap queues: the
// console and the QMP socket, which vmnet opens for it.
const handleFiles = 2

// vhostHost is this host's capabilities with stand-ins for the console
// and QMP socket, passed as fds 3 and 4; the tap queues follow from fd 5.
func vhostHost(t *testing.T) qemu.Host {
	h := qemu.HostCaps(false, false)
	var f [handleFiles]*os.File
	for i := range f {
		var err error
		if f[i], err = os.Open(os.DevNull); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f[i].Close() })
	}
	h.Handles = qemu.Handles{Console: f[0], QMP: f[1]}
	return h
}

// With /dev/vhost-net present, vhost "on" and "auto" open it once per tap
// queue and pass those fds as vhostfds, one for one with the tap fds. The
// kernel is the oracle: each fd is the vhost-net misc device (by device
// number from sysfs) and its own vhost instance (VHOST_SET_OWNER succeeds
// once on each and then says EBUSY).
func TestVhostFdsPerQueue(t *testing.T) {
	st, err := os.Stat("/dev/vhost-net")
	if err != nil {
		t.Skipf("needs /dev/vhost-net (%s), which this kernel lacks (%v); runs inside a guest (TestGuestOnly)", vhostFeature, err)
	}
	devNum, err := os.ReadFile("/sys/class/misc/vhost-net/dev")
	if err != nil {
		t.Fatal(err)
	}
	var major, minor uint32
	if _, err := fmt.Sscanf(strings.TrimSpace(string(devNum)), "%d:%d", &major, &minor); err != nil {
		t.Fatalf("/sys/class/misc/vhost-net/dev %q: %v", devNum, err)
	}
	if st.Mode()&os.ModeCharDevice == 0 {
		t.Fatalf("/dev/vhost-net is %v, not a character device", st.Mode())
	}
	for _, tc := range []struct {
		mode   string
		queues int
	}{{qemu.VhostOn, 1}, {qemu.VhostOn, 4}, {qemu.VhostAuto, 2}} {
		t.Run(fmt.Sprintf("%s/%dq", tc.mode, tc.queues), func(t *testing.T) {
			tp := newTap(t, "vh"+strconv.Itoa(tc.queues), tc.queues)
			c, err := qemu.BuildCmdline(vhostSpec(t, tp, tc.mode), vhostHost(t))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var fds, vfds []string
			first := 3 + handleFiles
			for i := 0; i < tc.queues; i++ {
				fds = append(fds, strconv.Itoa(first+i))
				vfds = append(vfds, strconv.Itoa(first+tc.queues+i))
			}
			want := "tap,id=n0,fds=" + strings.Join(fds, ":") + ",vhost=on,vhostfds=" + strings.Join(vfds, ":")
			if tc.queues == 1 {
				want = fmt.Sprintf("tap,id=n0,fd=%d,vhost=on,vhostfd=%d", first, first+1)
			}
			if got := netdev(t, c.Args); got != want {
				t.Errorf("-netdev %s, want %s", got, want)
			}
			if len(c.Opened) != tc.queues || len(c.Files) != handleFiles+2*tc.queues {
				t.Fatalf("%d files opened, %d passed; want %d and %d", len(c.Opened), len(c.Files), tc.queues, handleFiles+2*tc.queues)
			}
			for i, f := range c.Opened {
				if c.Files[handleFiles+tc.queues+i] != f {
					t.Errorf("vhost fd %d is not the file passed as fd %d", i, first+tc.queues+i)
				}
				var s unix.Stat_t
				if err := unix.Fstat(int(f.Fd()), &s); err != nil {
					t.Fatal(err)
				}
				if s.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(s.Rdev) != major || unix.Minor(s.Rdev) != minor {
					t.Errorf("vhost fd %d: mode %o dev %d:%d, want the vhost-net device %d:%d",
						i, s.Mode, unix.Major(s.Rdev), unix.Minor(s.Rdev), major, minor)
				}
				if err := unix.IoctlSetInt(int(f.Fd()), vhostSetOwner, 0); err != nil {
					t.Errorf("vhost fd %d: VHOST_SET_OWNER: %v (want a fresh vhost instance per queue)", i, err)
				}
				if err := unix.IoctlSetInt(int(f.Fd()), vhostSetOwner, 0); !errors.Is(err, unix.EBUSY) {
					t.Errorf("vhost fd %d: second VHOST_SET_OWNER = %v, want EBUSY", i, err)
				}
			}
			for i, f := range tp.Files() {
				if c.Files[handleFiles+i] != f {
					t.Errorf("tap queue %d is not passed as fd %d", i, first+i)
				}
			}
			opened := c.Opened
			c.Close()
			for i, f := range opened {
				if _, err := f.Stat(); !errors.Is(err, os.ErrClosed) {
					t.Errorf("vhost fd %d still open after Close: %v", i, err)
				}
			}
		})
	}
}

// Without /dev/vhost-net, "auto" falls back to vhost=off with a note that
// names the missing feature, and "on" is refused before QEMU would abort.
func TestVhostFallback(t *testing.T) {
	if _, err := os.Stat("/dev/vhost-net"); err == nil {
		t.Skip("this kernel has /dev/vhost-net; the fallback is covered where it is missing (the host)")
	}
	tp := newTap(t, "vh0", 2)
	c, err := qemu.BuildCmdline(vhostSpec(t, tp, qemu.VhostAuto), vhostHost(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, want := netdev(t, c.Args), fmt.Sprintf("tap,id=n0,fds=%d:%d,vhost=off", 3+handleFiles, 4+handleFiles); got != want {
		t.Errorf("-netdev %s, want %s", got, want)
	}
	if len(c.Opened) != 0 || len(c.Files) != handleFiles+2 {
		t.Errorf("%d files opened, %d passed; want 0 and %d", len(c.Opened), len(c.Files), handleFiles+2)
	}
	if n := strings.Join(c.Notes, "\n"); !strings.Contains(n, "/dev/vhost-net missing") || !strings.Contains(n, "vhost=off") {
		t.Errorf("notes %q lack the vhost fallback", c.Notes)
	}
	_, err = qemu.BuildCmdline(vhostSpec(t, tp, qemu.VhostOn), vhostHost(t))
	if err == nil || !strings.Contains(err.Error(), "CONFIG_VHOST_NET") || !strings.Contains(err.Error(), "nic n0") {
		t.Errorf("vhost=on without /dev/vhost-net: %v, want an error naming nic n0 and CONFIG_VHOST_NET", err)
	}
}
