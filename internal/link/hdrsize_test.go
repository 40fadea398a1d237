package link

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/tap"
	"github.com/vmnet/vmnet/vmconfig"
)

// heldTap is a multi-queue tap in the world's link namespace on which the
// test holds queues the way QEMU would: detached (so the kernel steers
// every frame to the link's queue), but able to change the device's vnet
// header size at any time.
type heldTap struct {
	w    *world
	name string
	t    *tap.Tap
}

func (w *world) holdTap(name string, size int) *heldTap {
	w.t.Helper()
	h := &heldTap{w: w, name: name}
	testenv.Do(w.t, w.L, func() error {
		cfg := tap.NewConfig(name, 2)
		cfg.VnetHdrSize = 10
		cfg.Offloads = tap.OffloadCsum | tap.OffloadTSO4 | tap.OffloadTSO6
		cfg.BestEffort = true
		var err error
		if h.t, err = tap.Create(cfg); err != nil {
			return err
		}
		for _, q := range h.t.Queues() {
			if err := q.Detach(); err != nil {
				return err
			}
		}
		return nil
	})
	w.t.Cleanup(func() { h.t.Close() })
	h.set(size)
	return h
}

// set changes the device's vnet header size, as QEMU does when its guest
// negotiates features.
func (h *heldTap) set(size int) {
	h.w.t.Helper()
	rc, err := h.t.Queues()[0].File().SyscallConn()
	h.w.must(err)
	var ierr error
	h.w.must(rc.Control(func(fd uintptr) { ierr = unix.IoctlSetPointerInt(int(fd), unix.TUNSETVNETHDRSZ, size) }))
	if ierr != nil {
		h.w.t.Fatalf("tap %s: TUNSETVNETHDRSZ %d: %v", h.name, size, ierr)
	}
}

// TestVnetHdrSizes (issue 10, scenario 9): a link between two taps whose
// vnet header sizes someone else set, every size from 10 to 24 (QEMU sets
// 20 with hash reporting; the old code panicked above 12). Each pairs
// size n on one side with 34-n on the other, so frames are re-encoded
// between different sizes; TCP (hashed) and UDP echoes up to 60000 bytes
// must arrive intact, with no drops.
func TestVnetHdrSizes(t *testing.T) {
	for n := 10; n <= 24; n++ {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			w := newWorld(t, true)
			w.holdTap("tA", n)
			w.holdTap("tB", 34-n)
			a, b := w.open("tap:tA"), w.open("tap:tB")
			if a.Info().VnetHdr != n || b.Info().VnetHdr != 34-n {
				t.Fatalf("endpoints opened with vnet headers %d and %d, want %d and %d", a.Info().VnetHdr, b.Info().VnetHdr, n, 34-n)
			}
			l, err := New(a, b, Options{Datapath: DatapathUserspace})
			w.must(err)
			w.plug("tA", "brA")
			w.plug("tB", "brB")
			w.run(l)
			w.tcpTransfer(1 << 20)
			w.udpEcho()
			s := l.Stats()
			if d := s.AtoB.Drops.Total() + s.BtoA.Drops.Total(); d != 0 {
				t.Errorf("%d drops:\n%s", d, s)
			}
		})
	}
}

// TestVnetHdrSizeChange: QEMU changes the vnet header size of a tap while
// a link runs on it (guest driver reloads, feature renegotiation). The
// link asks again after reads, at most once a millisecond, so traffic
// keeps passing intact after each change, and nothing panics when the size leaves what the link
// handles: those frames are dropped and counted, and traffic resumes when
// the size comes back.
func TestVnetHdrSizeChange(t *testing.T) {
	w := newWorld(t, true)
	ha, hb := w.holdTap("tA", 12), w.holdTap("tB", 12)
	l, err := New(w.open("tap:tA"), w.open("tap:tB"), Options{Datapath: DatapathUserspace})
	w.must(err)
	w.plug("tA", "brA")
	w.plug("tB", "brB")
	w.run(l)
	w.tcpTransfer(1 << 20)
	for _, sz := range [][2]int{{20, 12}, {20, 20}, {10, 24}, {12, 10}} {
		ha.set(sz[0])
		hb.set(sz[1])
		// The link asks at most once a millisecond; frames in flight in
		// that millisecond would be garbled (see the package docs).
		time.Sleep(5 * time.Millisecond)
		w.tcpTransfer(1 << 20)
		w.udpEcho()
	}
	t.Logf("stats after the changes:\n%s", l.Stats())

	// A size beyond MaxVnetHdr: frames are dropped (counted), not
	// misread, and the link keeps running.
	ha.set(MaxVnetHdr + 36)
	time.Sleep(5 * time.Millisecond)
	before := l.Stats()
	testenv.Do(t, w.A, func() error {
		c, err := net.Dial("udp4", w.ipB.String()+":5003")
		if err != nil {
			return err
		}
		defer c.Close()
		// Spaced and back to back: frames arrive both when a check of
		// the size is due and when it is not.
		for range 5 {
			c.Write([]byte("dropped for its vnet header size"))
			time.Sleep(50 * time.Millisecond)
		}
		for range 200 {
			c.Write([]byte("dropped for its vnet header size"))
		}
		return nil
	})
	// The pumps count the drops when they get to the frames: a fixed
	// 200 ms was not always enough on a loaded machine.
	var after Stats
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		after = l.Stats()
		if got := after.AtoB.Drops.VnetHdrSize + after.BtoA.Drops.VnetHdrSize - before.AtoB.Drops.VnetHdrSize - before.BtoA.Drops.VnetHdrSize; got > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("vnet header size %d on tA: no frames counted as dropped for it within 20s:\n%s", MaxVnetHdr+36, after)
			break
		}
	}
	ha.set(10)
	time.Sleep(5 * time.Millisecond)
	w.tcpTransfer(1 << 20)
}

// TestVnetHdrSizeRefused: a tap whose vnet header is larger than a link
// handles is refused when the endpoint opens, with an error naming the tap
// and the size, and the tap is left as it was.
func TestVnetHdrSizeRefused(t *testing.T) {
	w := newWorld(t, true)
	for _, n := range []int{MaxVnetHdr + 1, 4096} {
		h := w.holdTap("tA", n)
		var err error
		testenv.Do(t, w.L, func() error {
			ep, perr := vmconfig.ParseEndpoint("tap:tA")
			w.must(perr)
			var e *Endpoint
			if e, err = Open(t.Context(), ep, OpenOptions{}); err == nil {
				e.Close()
			}
			return nil
		})
		want := fmt.Sprintf("tap tA has a vnet header of %d bytes, more than the %d a link handles", n, MaxVnetHdr)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("open tap:tA with a %d-byte vnet header: error %v, want one containing %q", n, err, want)
		}
		t.Logf("size %d: %v", n, err)
		var info tap.Info
		testenv.Do(t, w.L, func() (err error) { info, err = tap.Describe("tA"); return err })
		if info.NumQueues != 0 || info.NumDisabledQueues != 2 {
			t.Errorf("after the refusal tA has %d queues attached, %d disabled; want the test's 2 disabled only", info.NumQueues, info.NumDisabledQueues)
		}
		h.t.Close() // the last holder: the tap disappears
	}
}
