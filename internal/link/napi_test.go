package link

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/tap"
)

// TestNAPITransfer: the link segments A's super-frames into tB, a tap it
// creates without vnet_hdr, so it writes 1514-byte frames one by one; tB
// has IFF_NAPI and a GRO flush timeout, so the kernel's GRO merges them
// before the bridge. The real kernel judges: B's socket gets every byte
// (SHA-256), B's error counters stay at 0, and B's eth0 receives fewer
// packets than the link wrote (the veth counts one per skb, and without
// GRO on tB every frame would arrive alone: TestNAPITransferOff).
func TestNAPITransfer(t *testing.T) {
	written, received := napiTransfer(t, "tap:tB,vnet_hdr=off")
	if received*2 > written {
		t.Errorf("the link wrote %d frames into tB and B's eth0 received %d packets: want the kernel's GRO to merge them at least 2 to 1", written, received)
	}
}

// TestNAPITransferOff is TestNAPITransfer's reference: a tap vmnet did not
// create (so it has no NAPI) gets every frame through alone.
func TestNAPITransferOff(t *testing.T) {
	written, received := napiTransfer(t, "tap:tB")
	// The same bound as TestNAPITransfer's, the other way: a lost frame
	// or two (a full backlog under load) must not fail the reference.
	if received*2 <= written {
		t.Errorf("the link wrote %d frames into tB (no NAPI) and B's eth0 received only %d: the reference for TestNAPITransfer is off", written, received)
	}
}

// napiTransfer runs a TCP transfer from A through the link into tB, which
// exists beforehand without vnet_hdr when spec is "tap:tB" (the link opens
// it as it is); it returns the frames written into tB and the packets
// B's eth0 received meanwhile.
func napiTransfer(t *testing.T, spec string) (written, received uint64) {
	w := newWorld(t, true)
	if spec == "tap:tB" {
		w.plainTap("tB")
	}
	eb := w.open(spec)
	created := spec != "tap:tB"
	threaded := func() bool {
		on, err := eb.tap.NAPIThreaded()
		w.must(err)
		return on
	}
	if threaded() {
		t.Errorf("%s: threaded NAPI before any frame", spec)
	}
	l, err := New(w.open("tap:tA"), eb, Options{Datapath: DatapathUserspace})
	w.must(err)
	w.plug("tA", "brA")
	w.plug("tB", "brB")
	w.run(l)
	rx := func() uint64 {
		h, err := netlink.NewHandleAt(w.B, unix.NETLINK_ROUTE)
		w.must(err)
		defer h.Close()
		eth, err := h.LinkByName("eth0")
		w.must(err)
		return eth.Attrs().Statistics.RxPackets
	}
	// The thread is on from a bulk write until the first small write
	// napiIdle after the last bulk one: the transfer's closing segments
	// can be that small write when a loaded machine holds the transfer's
	// end up for a second, and a check after the transfer then saw it
	// off already. So it is watched while the transfer runs.
	var sawOn atomic.Bool
	stopWatch, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		for {
			if on, err := eb.tap.NAPIThreaded(); err == nil && on {
				sawOn.Store(true)
				return
			}
			select {
			case <-stopWatch:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	defer func() { close(stopWatch); <-watched }()
	before, tx0 := rx(), l.Stats().AtoB.TxFrames
	w.tcpTransfer(transferSize)
	s := l.Stats()
	written, received = s.AtoB.TxFrames-tx0, rx()-before
	t.Logf("link wrote %d frames into tB, B's eth0 received %d packets\n%s", written, received, s)
	if s.AtoB.Segmented == 0 {
		t.Errorf("A->B: no super-frame segmented; the test means to write frames one by one")
	}
	if d := s.AtoB.Drops.Total(); d != 0 {
		t.Errorf("A->B: %d drops", d)
	}
	testenv.NoSNMPErrors(t, w.B, "B")
	// The link wrote in bulk into a tap it created: its NAPI polls ran
	// in a kernel thread (napiSwitch), until a trickle napiIdle after
	// the last bulk write turned the thread off again. A tap it did not
	// create keeps its settings.
	if created {
		waitFor(t, spec+" threaded NAPI on during a bulk transfer", sawOn.Load)
		time.Sleep(napiIdle + 100*time.Millisecond)
		w.ping(3)
		waitFor(t, spec+" threaded NAPI off after pings only", func() bool { return !threaded() })
	} else if threaded() || sawOn.Load() {
		t.Errorf("%s: threaded NAPI on a tap the link did not create", spec)
	}
	return written, received
}

// plainTap creates tap name in L without vnet_hdr and without NAPI, as a
// tool other than vmnet would; the namespace's end removes it. A link that
// opens it keeps it as it is.
func (w *world) plainTap(name string) {
	w.t.Helper()
	testenv.Do(w.t, w.L, func() error {
		cfg := tap.NewConfig(name, 1)
		cfg.Persist = true
		tp, err := tap.Create(cfg)
		if err != nil {
			return err
		}
		return tp.Close()
	})
}
