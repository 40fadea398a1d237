package tap

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/owner"
)

// wantErr checks an error by errno and by the words a user would read.
func wantErr(t *testing.T, what string, err, errno error, words ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error, want %v", what, errno)
		return
	}
	if errno != nil && !errors.Is(err, errno) {
		t.Errorf("%s: %v: does not wrap %v", what, err, errno)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: %q lacks %q", what, err, w)
		}
	}
}

func TestBadNames(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"sixteen-bytes-xx", "a/b", "a:b", "a b", "a\tb", ".", ".."} {
		cfg := NewConfig(name, 1)
		_, err := Create(cfg)
		wantErr(t, "Create "+name, err, unix.EINVAL, "invalid name", fmt.Sprintf("tap %q", name))
		_, err = Open(name, 1)
		wantErr(t, "Open "+name, err, unix.EINVAL, "invalid name")
		_, err = Describe(name)
		wantErr(t, "Describe "+name, err, unix.EINVAL, "invalid name")
		err = Delete(name, "", true)
		wantErr(t, "Delete "+name, err, unix.EINVAL, "invalid name")
	}
	_, err := Create(NewConfig("sixteen-bytes-xx", 1))
	wantErr(t, "long name", err, unix.EINVAL, "16 bytes; Linux allows at most 15")
	_, err = Open("", 1)
	wantErr(t, "empty name", err, unix.EINVAL, "empty")
}

func TestBadConfig(t *testing.T) {
	t.Parallel()
	cases := []struct {
		mod   func(*Config)
		words string
	}{
		{func(c *Config) { c.Queues = -1 }, "tap t0: -1 queues: must be 1..256"},
		{func(c *Config) { c.Queues = 257 }, "tap t0: 257 queues: must be 1..256"},
		{func(c *Config) { c.VnetHdrSize = 11 }, "vnet header size 11: must be 0 (off), 10 or 12"},
		{func(c *Config) { c.Offloads = OffloadCsum }, "need a vnet header"},
		{func(c *Config) { c.VnetHdrSize = 10; c.Offloads = OffloadTSO4 }, "every offload needs csum"},
		{func(c *Config) { c.VnetHdrSize = 10; c.Offloads = OffloadCsum | OffloadTSOECN }, "tso_ecn needs tso4 or tso6"},
		{func(c *Config) { c.VnetHdrSize = 10; c.Offloads = OffloadCsum | unix.TUN_F_USO4 }, "uso4 and uso6 only together"},
		{func(c *Config) { c.Owner = -2 }, "use -1 for unset"},
		{func(c *Config) { c.MAC = net.HardwareAddr{1, 2, 3} }, "need 6 bytes"},
		{func(c *Config) { c.MTU = -1 }, "negative MTU"},
	}
	for _, c := range cases {
		cfg := NewConfig("t0", 1)
		c.mod(&cfg)
		_, err := Create(cfg)
		wantErr(t, c.words, err, unix.EINVAL, c.words)
	}
	_, err := Open("t0", 0)
	wantErr(t, "Open 0 queues", err, unix.EINVAL, "tap t0: 0 queues: must be 1..256")
	_, err = Open("t0", 300)
	wantErr(t, "Open 300 queues", err, unix.EINVAL, "tap t0: 300 queues: must be 1..256")
}

// TestMissingDevNetTun points the package at a path that does not exist:
// a running kernel with tun cannot produce this error otherwise. Not
// parallel: it changes devTun.
func TestMissingDevNetTun(t *testing.T) {
	ns := newNS(t)
	old := devTun
	devTun = "/nonexistent/net/tun"
	defer func() { devTun = old }()
	testenv.Do(t, ns, func() error {
		_, err := Create(NewConfig("t0", 2))
		wantErr(t, "Create", err, unix.ENOENT, "tap t0: create: open /nonexistent/net/tun", "modprobe tun", "mknod /dev/net/tun c 10 200")
		_, err = Probe()
		wantErr(t, "Probe", err, unix.ENOENT, "modprobe tun")
		return nil
	})
}

// TestEPERM drops CAP_NET_ADMIN from one thread (capabilities are per
// thread) and lets the kernel refuse. The thread stays locked and is
// thrown away when the goroutine ends.
func TestEPERM(t *testing.T) {
	t.Parallel()
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		cfg := NewConfig("own0", 1)
		cfg.Owner, cfg.Group, cfg.Persist = 4242, 4343, true
		tp, err := Create(cfg)
		if err != nil {
			return err
		}
		return tp.Close()
	})
	errs := make(chan [2]error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with us
		var res [2]error
		defer func() { errs <- res }()
		if err := vns.Set(ns); err != nil {
			res[0] = err
			return
		}
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			res[0] = err
			return
		}
		data[0].Effective &^= 1 << unix.CAP_NET_ADMIN
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			res[0] = err
			return
		}
		_, res[0] = Create(NewConfig("new0", 1))
		_, res[1] = Open("own0", 1)
	}()
	res := <-errs
	wantErr(t, "Create without CAP_NET_ADMIN", res[0], unix.EPERM, "tap new0: create: ", "needs CAP_NET_ADMIN")
	wantErr(t, "Open someone else's tap", res[1], unix.EPERM, "tap own0: attach queue 0: ", "needs CAP_NET_ADMIN", "owner or group")
	testenv.Do(t, ns, func() error {
		if names := linkNames(t); len(names) != 2 {
			t.Errorf("links: %v, want lo and own0", names)
		}
		return nil
	})
}

func TestBusyAndMismatch(t *testing.T) {
	t.Parallel()
	testenv.RequireProgram(t, "ip")
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		held := mustCreate(t, NewConfig("busy0", 1))
		_, err := Open("busy0", 1)
		wantErr(t, "Open held single-queue", err, unix.EBUSY, "tap busy0: attach queue 0: ", "single-queue and already held")
		_, err = Create(NewConfig("busy0", 1))
		wantErr(t, "Create existing", err, unix.EBUSY, "tap busy0: create: ", "already exists")
		// The failed Create must not have touched the existing tap.
		if info, err := held.Describe(); err != nil || info.NumQueues != -1 || !info.Carrier {
			return fmt.Errorf("busy0 after a failed Create: %+v, %v", info, err)
		}

		if err := (&netlink.Handle{}).LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br9"}}); err != nil {
			return err
		}
		_, err = Create(NewConfig("br9", 2))
		wantErr(t, "Create over a bridge", err, unix.EBUSY, "already exists")
		_, err = Open("br9", 1)
		wantErr(t, "Open a bridge", err, unix.EINVAL, "tap br9: is a bridge interface, not a tap")
		_, err = Open("nope0", 1)
		wantErr(t, "Open missing", err, unix.ENODEV, "tap nope0: ", "no interface of that name")
		err = Delete("br9", "", true)
		wantErr(t, "Delete a bridge", err, unix.EINVAL, "not a tap")
		// lo has no link kind; netlink calls it "device", which the old
		// message turned into "is a device device".
		_, err = Open("lo", 1)
		wantErr(t, "Open lo", err, unix.EINVAL, "tap lo: is not a tap (an interface of another kind has this name)")
		_, err = Describe("lo")
		wantErr(t, "Describe lo", err, unix.EINVAL, "tap lo: is not a tap")
		if err != nil && strings.Contains(err.Error(), "device device") {
			t.Errorf("Describe lo: %v", err)
		}

		cfg := NewConfig("sq0", 1)
		cfg.Persist = true
		sq, err := Create(cfg)
		if err != nil {
			return err
		}
		sq.Close()
		_, err = Open("sq0", 2)
		wantErr(t, "Open 2 queues of a single-queue tap", err, unix.EINVAL, "tap sq0: attach queue 0: ", "single-queue (multi_queue off)")
		// The kernel left it alone: still single-queue and attachable.
		sq, err = Open("sq0", 1)
		if err != nil {
			return err
		}
		sq.Close()

		run(t, "ip", "tuntap", "add", "dev", "tun0", "mode", "tun")
		_, err = Open("tun0", 1)
		wantErr(t, "Open a tun", err, unix.EINVAL, "is a tun device, not a tap")
		run(t, "ip", "tuntap", "add", "dev", "pi0", "mode", "tap", "pi")
		_, err = Open("pi0", 1)
		wantErr(t, "Open a pi tap", err, unix.EINVAL, "packet information")
		return nil
	})
}

// TestFailedCreateLeavesNothing makes Create fail at several late steps
// and checks the namespace is as it was.
func TestFailedCreateLeavesNothing(t *testing.T) {
	t.Parallel()
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		base := func() Config {
			c := NewConfig("f0", 3)
			c.Persist, c.VnetHdrSize, c.Offloads, c.Owner = true, 12, OffloadCsum|OffloadTSO4, 4242
			return c
		}
		cases := []struct {
			mod   func(*Config)
			errno error
			words string
		}{
			{func(c *Config) { c.MTU = 1 << 20 }, unix.EINVAL, "tap f0: set MTU 1048576: "},
			{func(c *Config) { c.MAC = net.HardwareAddr{1, 0, 0, 0, 0, 1} }, unix.EADDRNOTAVAIL, "tap f0: set MAC 01:00:00:00:00:01: "},
			{func(c *Config) { c.Tag = "lab1" }, owner.ErrBadOwner, "tag"}, // not vmnet:adhoc or vmnet:lab:NAME
		}
		for _, c := range cases {
			cfg := base()
			c.mod(&cfg)
			_, err := Create(cfg)
			wantErr(t, c.words, err, c.errno, c.words)
			if err := noLinksBut(t, "lo"); err != nil {
				t.Errorf("after failed Create (%s): %v", c.words, err)
			}
			if list, err := List(); err != nil || len(list) != 0 {
				t.Errorf("List after failed Create: %v, %v", list, err)
			}
		}
		return nil
	})
}

// TestUnsupportedOffload asks the kernel for a TUNSETOFFLOAD bit it does
// not know (every named offload exists on this kernel, so an unknown bit
// stands in for a missing one).
func TestUnsupportedOffload(t *testing.T) {
	t.Parallel()
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		cfg := NewConfig("off0", 1)
		cfg.VnetHdrSize = 10
		tp := mustCreate(t, cfg)
		fd := tp.Queues()[0].fd
		const unknown = Offload(0x8000)
		_, err := setOffloads(fd, OffloadCsum|OffloadTSO4|unknown, false)
		wantErr(t, "strict", err, unix.EINVAL, "does not support 0x8000", "supports "+kernelOffloads(t).String(), "best effort")
		got, err := setOffloads(fd, OffloadCsum|OffloadTSO4|unknown, true)
		if err != nil || got != OffloadCsum|OffloadTSO4 {
			return fmt.Errorf("best effort: %s, %v; want csum,tso4", got, err)
		}
		if o, err := readOffloads("off0"); err != nil || o != OffloadCsum|OffloadTSO4 {
			return fmt.Errorf("device offloads after best effort: %s, %v", o, err)
		}
		return nil
	})
}
