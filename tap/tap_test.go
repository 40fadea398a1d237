package tap

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/owner"
)

func TestFrameAcrossBridge(t *testing.T) {
	t.Parallel()
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		a := mustCreate(t, NewConfig("tapa", 1))
		b := mustCreate(t, NewConfig("tapb", 1))
		if err := bridgeTaps(a, b); err != nil {
			return err
		}
		want := markedFrame(7, 100)
		if n, err := a.Queues()[0].Write(want); err != nil || n != len(want) {
			return fmt.Errorf("write: %d, %v", n, err)
		}
		got, err := readMatch(b.Queues()[0], arrive, isMarked)
		if err != nil {
			return fmt.Errorf("frame written to tapa never reached tapb: %w", err)
		}
		if !bytes.Equal(got, want) {
			return fmt.Errorf("tapb read\n%x\nwant\n%x", got, want)
		}
		info, err := Describe("tapa")
		if err != nil {
			return err
		}
		if info.Master != "br0" || !info.Up || !info.Carrier || info.NumQueues != -1 {
			return fmt.Errorf("Describe(tapa) on the bridge: %+v", info)
		}
		return nil
	})
}

// TestVnetHdr sends a UDP frame whose checksum is left to the receiver
// (NEEDS_CSUM) and checks that a tap with csum offload hands the header
// over intact while one without it gets a finished frame.
func TestVnetHdr(t *testing.T) {
	t.Parallel()
	for _, size := range []int{10, 12} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			t.Parallel()
			ns := newNS(t)
			testenv.Do(t, ns, func() error {
				cfg := NewConfig("tapa", 1)
				cfg.VnetHdrSize = size
				cfg.Offloads = OffloadCsum | OffloadTSO4 | OffloadTSO6
				a := mustCreate(t, cfg)
				cfg.Name = "tapb"
				b := mustCreate(t, cfg)
				plain := NewConfig("tapc", 1)
				plain.VnetHdrSize = size
				c := mustCreate(t, plain)
				if err := bridgeTaps(a, b, c); err != nil {
					return err
				}
				for _, tp := range []*Tap{a, b, c} {
					if tp.VnetHdrSize() != size || tp.Queues()[0].VnetHdrSize() != size {
						return fmt.Errorf("%s: vnet header size %d, want %d", tp.Name(), tp.VnetHdrSize(), size)
					}
				}
				frame := udpFrame(t, 1000, 2000, []byte("vmnet-tap-test vnet"))
				binary.BigEndian.PutUint16(frame[14+20+6:], 0) // checksum left to the offload
				hdr := make([]byte, size)
				hdr[0] = unix.VIRTIO_NET_HDR_F_NEEDS_CSUM
				binary.LittleEndian.PutUint16(hdr[6:], 14+20) // csum_start
				binary.LittleEndian.PutUint16(hdr[8:], 6)     // csum_offset
				if _, err := a.Queues()[0].WriteHdr(hdr, frame); err != nil {
					return err
				}

				// In place: header then frame in one buffer.
				got, err := readMatch(b.Queues()[0], arrive, func(f []byte) bool { _, ok := isTestUDP(f); return ok })
				if err != nil {
					return fmt.Errorf("tapb: %w", err)
				}
				if len(got) != size+len(frame) || !bytes.Equal(got[size:], frame) {
					return fmt.Errorf("tapb frame differs: got %d bytes, want %d+%d", len(got), size, len(frame))
				}
				if got[0]&unix.VIRTIO_NET_HDR_F_NEEDS_CSUM == 0 ||
					binary.LittleEndian.Uint16(got[6:]) != 34 || binary.LittleEndian.Uint16(got[8:]) != 6 {
					return fmt.Errorf("tapb (csum offload) header %x: want NEEDS_CSUM, csum_start 34, csum_offset 6", got[:size])
				}

				// Separate header, and a tap without offloads: the kernel
				// finished the checksum, so NEEDS_CSUM must be gone.
				q := c.Queues()[0]
				q.SetReadDeadline(time.Now().Add(arrive))
				rh := make([]byte, size)
				rf := make([]byte, 2048)
				for {
					n, err := q.ReadHdr(rh, rf)
					if err != nil {
						return fmt.Errorf("tapc: %w", err)
					}
					u, ok := isTestUDP(rf[:n])
					if !ok {
						continue
					}
					if rh[0]&unix.VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
						return fmt.Errorf("tapc (no offloads) header %x still asks for a checksum", rh)
					}
					if u.Checksum == 0 {
						return fmt.Errorf("tapc got UDP checksum 0; the kernel should have filled it in")
					}
					return nil
				}
			})
		})
	}
}

func TestMultiQueueSpreadsFlows(t *testing.T) {
	t.Parallel()
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		a := mustCreate(t, NewConfig("tapa", 1))
		b := mustCreate(t, NewConfig("tapb", 4))
		if !b.MultiQueue() || len(b.Queues()) != 4 || len(b.Files()) != 4 {
			return fmt.Errorf("tapb: multi_queue %v, %d queues", b.MultiQueue(), len(b.Queues()))
		}
		if err := bridgeTaps(a, b); err != nil {
			return err
		}
		// The kernel picks a flow's queue from its hash (seeded at boot),
		// so which ports land where differs between boots: send new flows
		// in rounds until every queue has carried some. 16 flows leave a
		// queue empty with probability 4*(3/4)^16 = 4%; 40 rounds make a
		// false failure about 1e-56 likely.
		const perRound, rounds = 16, 40
		counts := make([]int, 4)
		sent := 0
		for r := 0; r < rounds; r++ {
			for i := range perRound {
				if _, err := a.Queues()[0].Write(udpFrame(t, uint16(10000+r*perRound+i), 53, []byte("vmnet-tap-test flow"))); err != nil {
					return err
				}
				sent++
			}
			got, err := countOn(b.Queues(), perRound, 10*time.Second, func(f []byte) bool { _, ok := isTestUDP(f); return ok })
			if err != nil {
				return err
			}
			for i, n := range got {
				counts[i] += n
			}
			if !slices.Contains(counts, 0) {
				break
			}
		}
		t.Logf("%d flows, one frame each; frames per queue: %v", sent, counts)
		total := 0
		for _, n := range counts {
			total += n
		}
		if total != sent || slices.Contains(counts, 0) {
			return fmt.Errorf("%d of %d frames arrived, per queue %v; want all, and every queue reading some", total, sent, counts)
		}
		return nil
	})
}

// TestDetachQueue checks what the kernel does with a disabled queue: no
// frames are steered to it and a read on it waits (the kernel does not
// fail it: tun_do_read finds an empty ring and says EAGAIN), while a
// write on it still enters the device.
func TestDetachQueue(t *testing.T) {
	t.Parallel()
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		a := mustCreate(t, NewConfig("tapa", 1))
		b := mustCreate(t, NewConfig("tapb", 2))
		if err := bridgeTaps(a, b); err != nil {
			return err
		}
		q0, q1 := b.Queues()[0], b.Queues()[1]
		if err := q1.Detach(); err != nil {
			return err
		}
		if !q1.Detached() {
			return errors.New("Detached() false after Detach")
		}
		if err := q1.Detach(); !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "tap tapb: detach queue 1: ") {
			return fmt.Errorf("second detach: %v, want EINVAL naming the tap and queue", err)
		}
		info, err := b.Describe()
		if err != nil {
			return err
		}
		if info.NumQueues != 1 || info.NumDisabledQueues != 1 {
			return fmt.Errorf("after detach: num_queues %d, num_disabled_queues %d; want 1, 1", info.NumQueues, info.NumDisabledQueues)
		}
		isUDP := func(f []byte) bool { _, ok := isTestUDP(f); return ok }
		send := func() error {
			for i := range 32 {
				if _, err := a.Queues()[0].Write(udpFrame(t, uint16(20000+i), 53, []byte("vmnet-tap-test detach"))); err != nil {
					return err
				}
			}
			return nil
		}
		if err := send(); err != nil {
			return err
		}
		// Count on both queues until all 32 are in (a read on the
		// detached queue must wait until its deadline, not fail).
		count := func() (n0, n1 int, err error) {
			c, err := countOn([]*Queue{q0, q1}, 32, 10*time.Second, isUDP)
			return c[0], c[1], err
		}
		n0, n1, err := count()
		if err != nil {
			return err
		}
		if n1 != 0 || n0 != 32 {
			return fmt.Errorf("detached queue got %d frames, attached one %d; want 0 and 32", n1, n0)
		}
		// A write on the detached queue still reaches the bridge.
		if _, err := q1.Write(markedFrame(9, 64)); err != nil {
			return fmt.Errorf("write on detached queue: %w", err)
		}
		if _, err := readMatch(a.Queues()[0], arrive, isMarked); err != nil {
			return fmt.Errorf("frame written on detached queue did not reach tapa: %w", err)
		}

		if err := q1.Attach(); err != nil {
			return err
		}
		if info, _ := b.Describe(); info.NumQueues != 2 || info.NumDisabledQueues != 0 {
			return fmt.Errorf("after attach: num_queues %d, num_disabled_queues %d; want 2, 0", info.NumQueues, info.NumDisabledQueues)
		}
		if err := send(); err != nil {
			return err
		}
		if n0, n1, err = count(); err != nil {
			return err
		}
		if n0+n1 != 32 || n1 == 0 {
			return fmt.Errorf("after re-attach: queue 0 got %d, queue 1 %d; want 32 in all and some on queue 1", n0, n1)
		}
		return nil
	})
}

// TestCreateSeenByIPAndEthtool checks every setting of Create against
// `ip -d link` and `ethtool -k`, and against Describe.
func TestCreateSeenByIPAndEthtool(t *testing.T) {
	t.Parallel()
	testenv.RequireProgram(t, "ethtool")
	testenv.RequireProgram(t, "ip")
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		mac := net.HardwareAddr{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}
		on := true
		all := kernelOffloads(t)
		cfg := Config{Name: "vm0", Queues: 2, VnetHdrSize: 12, Offloads: all, Persist: true,
			Owner: 4242, Group: 4343, MTU: 9000, MAC: mac, TxQueueLen: 777, Carrier: &on, Up: true, Tag: owner.Lab("lab1")}
		tp := mustCreate(t, cfg)
		if got, err := tp.Offloads(); err != nil || got != all {
			return fmt.Errorf("Offloads() = %s, %v", got, err)
		}
		ipOut := run(t, "ip", "-d", "link", "show", "vm0")
		for _, want := range []string{
			"mtu 9000", "qlen 777", "link/ether 02:11:22:33:44:55", "alias vmnet:lab:lab1",
			"tun type tap pi off vnet_hdr on multi_queue numqueues 2 numdisabled 0 persist on user 4242 group 4343",
		} {
			if !strings.Contains(ipOut, want) {
				t.Errorf("ip -d link show vm0 lacks %q:\n%s", want, ipOut)
			}
		}
		ethOut := run(t, "ethtool", "-k", "vm0")
		features := []string{"tx-checksum-ip-generic", "tx-tcp-segmentation", "tx-tcp6-segmentation", "tx-tcp-ecn-segmentation"}
		if all&OffloadUSO != 0 {
			features = append(features, "tx-udp-segmentation")
		}
		for _, f := range features {
			if !regexp.MustCompile(`(?m)^\s*` + f + `: on`).MatchString(ethOut) {
				t.Errorf("ethtool -k vm0: %s not on:\n%s", f, ethOut)
			}
		}
		info, err := Describe("vm0")
		if err != nil {
			return err
		}
		want := Info{Name: "vm0", Index: tp.Index(), Type: "tap", VnetHdr: true, Persist: true, MultiQueue: true,
			Owner: 4242, Group: 4343, NumQueues: 2, MTU: 9000, MAC: mac.String(), TxQueueLen: 777,
			OperState: "unknown", Up: true, Carrier: true, Alias: "vmnet:lab:lab1", Tag: "vmnet:lab:lab1", Tagged: true, Offloads: info.Offloads,
			Qdisc: "noqueue"}
		if info.Offloads == nil || *info.Offloads != all&^OffloadUFO {
			t.Errorf("Describe offloads %v (%s), want %s (ufo is not visible)", info.Offloads, info.OffloadsError, all&^OffloadUFO)
		}
		if info != want {
			t.Errorf("Describe:\n got %+v\nwant %+v", info, want)
		}

		// Persistent: Close leaves it; Delete checks the tag.
		if err := tp.Close(); err != nil {
			return err
		}
		// A parallel test's fork holds copies of every fd until its exec
		// (close-on-exec acts only then), so the kernel may detach the
		// queues a moment after Close returns.
		for deadline := time.Now().Add(settle); ; time.Sleep(10 * time.Millisecond) {
			info, err := Describe("vm0")
			if err == nil && info.NumQueues == 0 && !info.Carrier {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("after Close: %+v, %v; want a persistent tap with 0 queues", info, err)
			}
		}
		if err := Delete("vm0", "", false); !errors.Is(err, owner.ErrNotOwned) {
			return fmt.Errorf("Delete with the default owner: %v, want ErrNotOwned", err)
		}
		if err := Delete("vm0", owner.Lab("lab1"), false); err != nil {
			return err
		}
		if _, err := Describe("vm0"); !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("after Delete: %v, want ENODEV", err)
		}

		// Defaults: no offloads show in ethtool, owner unset in ip.
		plain := mustCreate(t, NewConfig("vm1", 1))
		_ = plain
		ethOut = run(t, "ethtool", "-k", "vm1")
		if !regexp.MustCompile(`(?m)^\s*tx-tcp-segmentation: off`).MatchString(ethOut) {
			t.Errorf("ethtool -k vm1: TSO should be off:\n%s", ethOut)
		}
		ipOut = run(t, "ip", "-d", "link", "show", "vm1")
		if !strings.Contains(ipOut, "tun type tap pi off vnet_hdr off persist off addrgenmode") {
			t.Errorf("ip -d link show vm1:\n%s", ipOut)
		}
		return nil
	})
}

// TestOpenIPTuntap describes and opens a tap that iproute2 made.
func TestOpenIPTuntap(t *testing.T) {
	t.Parallel()
	testenv.RequireProgram(t, "ip")
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		run(t, "ip", "tuntap", "add", "dev", "ext0", "mode", "tap", "multi_queue", "vnet_hdr", "user", "4242")
		info, err := Describe("ext0")
		if err != nil {
			return err
		}
		if info.Type != "tap" || !info.MultiQueue || !info.VnetHdr || !info.Persist || info.PI ||
			info.Owner != 4242 || info.Group != -1 || info.NumQueues != 0 || info.Tagged {
			return fmt.Errorf("Describe(ext0) = %+v", info)
		}
		tp, err := Open("ext0", 3)
		if err != nil {
			return err
		}
		defer tp.Close()
		if tp.VnetHdrSize() != 10 || !tp.MultiQueue() || len(tp.Files()) != 3 {
			return fmt.Errorf("Open: vnet header %d, multi_queue %v, %d files", tp.VnetHdrSize(), tp.MultiQueue(), len(tp.Files()))
		}
		if _, err := tp.AddQueue(); err != nil {
			return err
		}
		info, _ = tp.Describe()
		if info.NumQueues != 4 || !info.VnetHdr || !info.MultiQueue {
			return fmt.Errorf("after AddQueue: %+v", info)
		}
		list, err := List()
		if err != nil {
			return err
		}
		if len(list) != 1 || list[0].Name != "ext0" || list[0].NumQueues != 4 {
			return fmt.Errorf("List = %+v", list)
		}
		j, _ := json.Marshal(list[0])
		for _, key := range []string{`"name":"ext0"`, `"type":"tap"`, `"pi":false`, `"vnet_hdr":true`, `"persist":true`,
			`"multi_queue":true`, `"owner":4242`, `"group":-1`, `"num_queues":4`, `"num_disabled_queues":0`, `"tagged":false`, `"offloads":[]`} {
			if !strings.Contains(string(j), key) {
				t.Errorf("Info JSON %s lacks %s", j, key)
			}
		}
		if err := Delete("ext0", "", false); !errors.Is(err, owner.ErrNotOwned) || !strings.Contains(err.Error(), "force") {
			return fmt.Errorf("Delete of a tap vmnet did not make: %v, want ErrNotOwned mentioning force", err)
		}
		tp.Close()
		if err := Delete("ext0", "", true); err != nil {
			return err
		}
		if names := linkNames(t); len(names) != 1 {
			return fmt.Errorf("links left: %v", names)
		}
		return nil
	})
}

func TestAddQueueToLimit(t *testing.T) {
	t.Parallel()
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		tp := mustCreate(t, NewConfig("mq0", 2))
		for len(tp.Queues()) < MaxQueues {
			if _, err := tp.AddQueue(); err != nil {
				return fmt.Errorf("queue %d: %w", len(tp.Queues()), err)
			}
		}
		if info, _ := tp.Describe(); info.NumQueues != MaxQueues {
			return fmt.Errorf("num_queues %d, want %d", info.NumQueues, MaxQueues)
		}
		_, err := tp.AddQueue()
		if !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "tap mq0: add queue 256: ") {
			return fmt.Errorf("257th queue: %v", err)
		}
		single := mustCreate(t, NewConfig("sq0", 1))
		if _, err := single.AddQueue(); !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "single-queue") {
			return fmt.Errorf("AddQueue on a single-queue tap: %v", err)
		}
		return nil
	})
}

// TestAddQueueAfterDelete: a queue added to a tap someone deleted meanwhile
// would make a new device of the same name (TUNSETIFF attaches by name);
// AddQueue sees the other index, refuses, and removes that device again.
func TestAddQueueAfterDelete(t *testing.T) {
	t.Parallel()
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		tp := mustCreate(t, NewConfig("gone0", 2))
		if err := Delete("gone0", "", false); err != nil {
			return err
		}
		q, err := tp.AddQueue()
		wantErr(t, "AddQueue after Delete", err, unix.ENODEV, "tap gone0: vanished while attaching")
		if q != nil || len(tp.Queues()) != 2 {
			t.Errorf("AddQueue after Delete: %d queues, want the 2 of before", len(tp.Queues()))
		}
		return noLinksBut(t, "lo")
	})
}

func TestCloseUnblocksReadAndDeadlines(t *testing.T) {
	t.Parallel()
	ns := newNS(t)
	var tp *Tap
	testenv.Do(t, ns, func() error {
		tp = mustCreate(t, NewConfig("tapd", 2))
		return nil
	})
	q := tp.Queues()[0]
	start := time.Now()
	q.SetReadDeadline(start.Add(100 * time.Millisecond))
	bufs := [][]byte{make([]byte, 2048)}
	sizes := make([]int, 1)
	if _, err := q.ReadBatch(bufs, sizes, 0); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past deadline: %v", err)
	}
	// An upper bound only to catch a deadline that never fires: a vCPU
	// of a guest on a loaded host can be late by seconds.
	if d := time.Since(start); d > settle {
		t.Errorf("deadline of 100ms fired after %v", d)
	}
	q.SetReadDeadline(time.Time{})

	done := make(chan error, 1)
	go func() { _, err := q.Read(make([]byte, 2048)); done <- err }()
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("read returned before Close: %v", err)
	default:
	}
	if err := tp.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("read after Close: %v, want os.ErrClosed", err)
		}
	case <-time.After(settle):
		t.Fatal("Close did not unblock the pending read")
	}
	// The tap was not persistent: closing its queues removed it.
	testenv.Do(t, ns, func() error {
		if err := noLinksBut(t, "lo"); err != nil {
			return fmt.Errorf("after Close: %w", err)
		}
		return nil
	})
}

// TestDeleteWhileReading: deleting a tap under a blocked reader ends the
// read with end of file (the kernel shuts the queue's socket down).
func TestDeleteWhileReading(t *testing.T) {
	t.Parallel()
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		tp := mustCreate(t, NewConfig("tapx", 1))
		done := make(chan error, 1)
		go func() { _, err := tp.Queues()[0].Read(make([]byte, 2048)); done <- err }()
		time.Sleep(50 * time.Millisecond)
		if err := Delete("tapx", "", false); err != nil {
			return err
		}
		select {
		case err := <-done:
			// Which of the two the kernel says depends on timing.
			if !errors.Is(err, ErrDeviceGone) || !(errors.Is(err, unix.EBADFD) || errors.Is(err, io.EOF)) ||
				!strings.HasPrefix(err.Error(), "tap tapx: queue 0: read: ") {
				return fmt.Errorf("read after delete: %v", err)
			}
		case <-time.After(settle):
			return errors.New("read still blocked after the tap was deleted")
		}
		return nil
	})
}

// After a delete tun's poll answers EPOLLERR alone, which Go's poller
// reports as "not pollable" before the read runs. A queue registered with
// the poller after the delete gets that event for sure; a reader parked
// when the delete comes gets it when the poller runs after tun let go of
// the device (TestDeleteWhileReading failed that way in a guest).
func TestReadAfterDeleteEPOLLERR(t *testing.T) {
	t.Parallel()
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		tp := mustCreate(t, NewConfig("tapx", 1))
		if err := Delete("tapx", "", false); err != nil {
			return err
		}
		fd, err := unix.Dup(tp.Queues()[0].fd)
		if err != nil {
			return err
		}
		q := newQueue(tp, 0, fd)
		defer q.Close()
		time.Sleep(50 * time.Millisecond) // the poller takes the event
		for _, read := range []func() error{
			func() error { _, err := q.Read(make([]byte, 2048)); return err },
			func() error { _, err := q.ReadHdr(nil, make([]byte, 2048)); return err },
		} {
			if err := read(); !errors.Is(err, ErrDeviceGone) || !errors.Is(err, unix.EBADFD) {
				return fmt.Errorf("read after delete: %v, want the tap was deleted (EBADFD)", err)
			}
		}
		return nil
	})
}

// TestReadBatchNowPastDeadline: once a queue's read deadline has passed,
// ReadBatch fails before it tries (Go's poller), while ReadBatchNow still
// takes what the queue holds, and says 0 with no error when it is empty,
// without allocating. A link emptying a tap's queue after its drain's
// deadline relies on it. Not parallel: testing.AllocsPerRun counts every
// goroutine's allocations.
func TestReadBatchNowPastDeadline(t *testing.T) {
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		a := mustCreate(t, NewConfig("tapa", 1))
		b := mustCreate(t, NewConfig("tapb", 1))
		if err := bridgeTaps(a, b); err != nil {
			return err
		}
		q := b.Queues()[0]
		q.SetReadDeadline(time.Unix(1, 0))
		const n = 16
		out := make([][]byte, n)
		for i := range out {
			out[i] = markedFrame(uint32(i), 60+i)
		}
		if w, err := a.Queues()[0].WriteBatch(out, 0); err != nil || w != n {
			return fmt.Errorf("WriteBatch: %d, %v", w, err)
		}
		in := make([][]byte, 4)
		for i := range in {
			in[i] = make([]byte, 2048)
		}
		sizes := make([]int, len(in))
		if _, err := q.ReadBatch(in, sizes, 0); !errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("ReadBatch past the deadline: %v, want the deadline's error", err)
		}
		var got [][]byte
		// The frames cross the bridge in the kernel's own time: look
		// again until they are all there (generous: it ends when they are).
		for end := time.Now().Add(arrive); len(got) < n && time.Now().Before(end); {
			r, err := q.ReadBatchNow(in, sizes, 0)
			if err != nil {
				return fmt.Errorf("ReadBatchNow after %d frames: %w", len(got), err)
			}
			if r == 0 {
				time.Sleep(time.Millisecond)
			}
			for i := range r {
				if f := in[i][:sizes[i]]; isMarked(f) {
					got = append(got, append([]byte(nil), f...))
				}
			}
		}
		if len(got) != n {
			return fmt.Errorf("ReadBatchNow took %d of %d frames", len(got), n)
		}
		for i := range got {
			if !bytes.Equal(got[i], out[i]) {
				return fmt.Errorf("frame %d: got %x, want %x", i, got[i], out[i])
			}
		}
		// Empty now, but for frames of the kernel's own (none
		// expected: IPv6 is off in the test namespaces), and no frame
		// twice.
		empty := false
		for range 100 {
			r, err := q.ReadBatchNow(in, sizes, 0)
			if err != nil {
				return fmt.Errorf("ReadBatchNow once the frames were read: %w", err)
			}
			for i := range r {
				if isMarked(in[i][:sizes[i]]) {
					return fmt.Errorf("a frame read twice: %x", in[i][:sizes[i]])
				}
			}
			if empty = r == 0; empty {
				break
			}
		}
		if !empty {
			return errors.New("ReadBatchNow never says the queue is empty")
		}
		if allocs := testing.AllocsPerRun(100, func() { q.ReadBatchNow(in, sizes, 0) }); allocs != 0 {
			return fmt.Errorf("ReadBatchNow allocates %v times a call", allocs)
		}
		return nil
	})
}

func TestBatchReadWrite(t *testing.T) {
	t.Parallel()
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		a := mustCreate(t, NewConfig("tapa", 1))
		b := mustCreate(t, NewConfig("tapb", 1))
		if err := bridgeTaps(a, b); err != nil {
			return err
		}
		const n, off = 16, 4
		out := make([][]byte, n)
		for i := range out {
			out[i] = append(make([]byte, off), markedFrame(uint32(i), 60+i)...)
		}
		if w, err := a.Queues()[0].WriteBatch(out, off); err != nil || w != n {
			return fmt.Errorf("WriteBatch: %d, %v", w, err)
		}
		in := make([][]byte, n)
		for i := range in {
			in[i] = make([]byte, off+2048)
		}
		sizes := make([]int, n)
		q := b.Queues()[0]
		q.SetReadDeadline(time.Now().Add(arrive))
		var got [][]byte
		for len(got) < n {
			r, err := q.ReadBatch(in, sizes, off)
			if err != nil {
				return fmt.Errorf("ReadBatch after %d frames: %w", len(got), err)
			}
			for i := range r {
				if f := in[i][off : off+sizes[i]]; isMarked(f) {
					got = append(got, append([]byte(nil), f...))
				}
			}
		}
		for i := range got {
			if !bytes.Equal(got[i], out[i][off:]) {
				return fmt.Errorf("frame %d: got %x, want %x", i, got[i], out[i][off:])
			}
		}
		return nil
	})
}

func TestProbe(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	f, err := Probe()
	if err != nil {
		t.Fatal(err)
	}
	all := kernelOffloads(t)
	if f.Offloads != all {
		t.Errorf("offloads %s, want %s on this kernel (%s)", f.Offloads, all, f.Kernel)
	}
	_, verr := os.Stat("/dev/vhost-net")
	if !f.DevNetTun || !f.MultiQueue || !f.VnetHdr || f.MaxQueues != 256 || f.VhostNet != (verr == nil) {
		t.Errorf("features %+v", f)
	}
	j, _ := json.Marshal(f)
	for _, key := range []string{`"dev_net_tun":true`, `"vhost_net":`, `"multi_queue":true`, `"offloads":` + string(must(json.Marshal(all))), `"tap"`, `"no_pi"`} {
		if !strings.Contains(string(j), key) {
			t.Errorf("JSON %s lacks %s", j, key)
		}
	}
	// The throwaway tap was made elsewhere: none here.
	if names := linkNames(t); strings.Contains(strings.Join(names, ","), "vmnetprobe") {
		t.Errorf("probe left %v", names)
	}
}

// TestFilesInChild hands a queue to another process, as the QEMU launcher
// does, and lets that process write a frame into the tap.
func TestFilesInChild(t *testing.T) {
	t.Parallel()
	testenv.RequireProgram(t, "sh")
	ns := newNS(t)
	frameFile := t.TempDir() + "/frame"
	if err := os.WriteFile(frameFile, markedFrame(42, 80), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.Do(t, ns, func() error {
		a := mustCreate(t, NewConfig("tapa", 2))
		b := mustCreate(t, NewConfig("tapb", 1))
		if err := bridgeTaps(a, b); err != nil {
			return err
		}
		cmd := exec.Command("sh", "-c", `cat "$0" >&4`, frameFile)
		cmd.ExtraFiles = a.Files() // fd 3 and 4: queues 0 and 1
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("child: %v: %s", err, out)
		}
		got, err := readMatch(b.Queues()[0], arrive, isMarked)
		if err != nil {
			return fmt.Errorf("frame the child wrote to queue 1 did not arrive: %w", err)
		}
		if binary.BigEndian.Uint32(got[14:]) != 42 {
			return fmt.Errorf("got frame %x", got)
		}
		return nil
	})
}

func TestCreateUnnamedAndWriteDown(t *testing.T) {
	t.Parallel()
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		tp := mustCreate(t, NewConfig("", 2))
		if tp.Name() != "tap0" {
			return fmt.Errorf("kernel-chosen name %q, want tap0", tp.Name())
		}
		if info, err := tp.Describe(); err != nil || !info.Tagged || info.NumQueues != 2 {
			return fmt.Errorf("Describe: %+v, %v", info, err)
		}
		_, err := tp.Queues()[1].Write(markedFrame(1, 60))
		if !errors.Is(err, unix.EIO) || !strings.Contains(err.Error(), "tap tap0: queue 1: write: ") ||
			!strings.Contains(err.Error(), "the tap is down") {
			return fmt.Errorf("write to a down tap: %v", err)
		}
		return nil
	})
}

// kernelOffloads is what TUNSETOFFLOAD accepts on the running kernel,
// derived from its version rather than from the code under test: USO
// arrived in 6.2, the rest long before.
func kernelOffloads(t *testing.T) Offload {
	t.Helper()
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	var major, minor int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(uts.Release[:]), "%d.%d", &major, &minor); err != nil {
		t.Fatalf("kernel release %q: %v", uts.Release, err)
	}
	if major < 6 || major == 6 && minor < 2 {
		return OffloadAll &^ OffloadUSO
	}
	return OffloadAll
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestQdisc checks with tc, not with the code under test, that a new tap
// has a noqueue root qdisc unless the kernel's default was asked for, and
// that frames still flow through a noqueue tap.
func TestQdisc(t *testing.T) {
	t.Parallel()
	testenv.RequireProgram(t, "tc")
	dq := kernelDefaultQdisc(t)
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		cases := []struct {
			name   string
			queues int
			qdisc  Qdisc
			want   string
		}{
			{"nq1", 1, QdiscNoqueue, "noqueue"},
			{"nq4", 4, QdiscNoqueue, "noqueue"},
			{"dq1", 1, QdiscDefault, dq},
			{"dq4", 4, QdiscDefault, "mq"},
		}
		taps := make([]*Tap, len(cases))
		for i, c := range cases {
			cfg := NewConfig(c.name, c.queues)
			cfg.Qdisc, cfg.Up = c.qdisc, true
			taps[i] = mustCreate(t, cfg)
		}
		// One tc for all of them: a program start is slow in a guest.
		var qs []struct {
			Kind string `json:"kind"`
			Dev  string `json:"dev"`
			Root bool   `json:"root"`
		}
		if err := json.Unmarshal([]byte(run(t, "tc", "-j", "qdisc", "show")), &qs); err != nil {
			t.Fatalf("tc -j qdisc show: %v", err)
		}
		root := map[string]string{}
		for _, q := range qs {
			if q.Root {
				root[q.Dev] = q.Kind
			}
		}
		for i, c := range cases {
			if got := root[c.name]; got != c.want {
				t.Errorf("tap %s (%s, %d queues): tc shows root qdisc %q, want %q", c.name, c.qdisc, c.queues, got, c.want)
			}
			info, err := taps[i].Describe()
			if err != nil {
				return err
			}
			if info.Qdisc != c.want {
				t.Errorf("tap %s: Describe says qdisc %q (%s), want %q", c.name, info.Qdisc, info.QdiscError, c.want)
			}
		}
		// Frames cross a bridge between two noqueue taps both ways.
		a, b := mustCreate(t, NewConfig("nqa", 1)), mustCreate(t, NewConfig("nqb", 1))
		if err := bridgeTaps(a, b); err != nil {
			return err
		}
		for _, dir := range [][2]*Tap{{a, b}, {b, a}} {
			frame := markedFrame(7, 600)
			if _, err := dir[0].Queues()[0].Write(frame); err != nil {
				return err
			}
			if _, err := readMatch(dir[1].Queues()[0], arrive, isMarked); err != nil {
				return fmt.Errorf("%s to %s through noqueue taps: %w", dir[0].Name(), dir[1].Name(), err)
			}
		}
		return nil
	})
}

// kernelDefaultQdisc is what the kernel attaches to a single-queue device
// that comes up (pfifo_fast, or fq_codel on kernels configured so). Only
// the initial network namespace has the sysctl: call it outside others.
func kernelDefaultQdisc(t *testing.T) string {
	b, err := os.ReadFile("/proc/sys/net/core/default_qdisc")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestParseQdisc(t *testing.T) {
	t.Parallel()
	for _, s := range Qdiscs {
		q, err := ParseQdisc(s)
		if err != nil || q.String() != s {
			t.Errorf("ParseQdisc(%q) = %v, %v", s, q, err)
		}
	}
	if _, err := ParseQdisc("fq_codel"); err == nil || !strings.Contains(err.Error(), "noqueue or default") {
		t.Errorf("ParseQdisc(fq_codel): %v", err)
	}
}

// TestRefreshVnetHdrSize: another holder of the device (QEMU) changes the
// vnet header size; RefreshVnetHdrSize sees the new size, ReadHdr and
// WriteHdr use it from then on, and asking allocates nothing. Not
// parallel: testing.AllocsPerRun counts every goroutine's allocations.
func TestRefreshVnetHdrSize(t *testing.T) {
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		cfg := NewConfig("tapa", 2)
		cfg.VnetHdrSize = 12
		a := mustCreate(t, cfg)
		q0, q1 := a.Queues()[0], a.Queues()[1]
		for _, size := range []int{20, 10, 24, 12} {
			// q1 plays QEMU: the size belongs to the device, not the fd.
			if err := unix.IoctlSetPointerInt(int(q1.File().Fd()), unix.TUNSETVNETHDRSZ, size); err != nil {
				return err
			}
			got, err := q0.RefreshVnetHdrSize()
			if err != nil {
				return err
			}
			if got != size || q0.VnetHdrSize() != size {
				return fmt.Errorf("after TUNSETVNETHDRSZ %d: RefreshVnetHdrSize %d, VnetHdrSize %d", size, got, q0.VnetHdrSize())
			}
			if _, err := q0.WriteHdr(make([]byte, size-1), make([]byte, 60)); err == nil {
				return fmt.Errorf("size %d: WriteHdr took a %d-byte header", size, size-1)
			}
		}
		if n := testing.AllocsPerRun(100, func() { q0.RefreshVnetHdrSize() }); n != 0 {
			return fmt.Errorf("RefreshVnetHdrSize: %.1f allocations per call", n)
		}
		plain := mustCreate(t, NewConfig("tapb", 1))
		if n, err := plain.Queues()[0].RefreshVnetHdrSize(); n != 0 || err != nil {
			return fmt.Errorf("tap without vnet_hdr: RefreshVnetHdrSize = %d, %v", n, err)
		}
		return nil
	})
}

// TestAttachFile: a queue detached through another holder of its file
// (QEMU detaches the queues a guest does not use) is attached again from
// the bare file, as the kernel's queue counts show.
func TestAttachFile(t *testing.T) {
	t.Parallel()
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		tp := mustCreate(t, NewConfig("af0", 2))
		q := tp.Queues()[1]
		if err := q.Detach(); err != nil {
			return err
		}
		if info, err := tp.Describe(); err != nil || info.NumDisabledQueues != 1 {
			return fmt.Errorf("after Detach: %+v, %v", info, err)
		}
		if err := AttachFile(q.File()); err != nil {
			return err
		}
		if info, err := tp.Describe(); err != nil || info.NumDisabledQueues != 0 || info.NumQueues != 2 {
			return fmt.Errorf("after AttachFile: %d queues, %d disabled, %v; want 2 and 0", info.NumQueues, info.NumDisabledQueues, err)
		}
		if err := AttachFile(q.File()); !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("attaching an attached queue: %v, want EINVAL", err)
		}
		return nil
	})
}

// TestSetOffloads changes the offloads of a tap after it was made and
// checks them with ethtool, the kernel's own report.
func TestSetOffloads(t *testing.T) {
	t.Parallel()
	testenv.RequireProgram(t, "ethtool")
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		cfg := NewConfig("so0", 1)
		cfg.VnetHdrSize = 12
		tp := mustCreate(t, cfg)
		tso := regexp.MustCompile(`(?m)^\s*tx-tcp-segmentation: (on|off)`)
		state := func() string {
			m := tso.FindStringSubmatch(run(t, "ethtool", "-k", "so0"))
			if m == nil {
				t.Fatal("ethtool -k so0 shows no tx-tcp-segmentation")
			}
			return m[1]
		}
		if got := state(); got != "off" {
			return fmt.Errorf("a new tap has TSO %s", got)
		}
		got, err := tp.SetOffloads(OffloadCsum|OffloadTSO4|OffloadTSO6, false)
		if err != nil || got != OffloadCsum|OffloadTSO4|OffloadTSO6 || state() != "on" {
			return fmt.Errorf("SetOffloads(csum,tso4,tso6) = %s, %v; ethtool says TSO %s", got, err, state())
		}
		if o, err := tp.Offloads(); o != got || err != nil {
			return fmt.Errorf("Offloads() = %s, %v after SetOffloads gave %s", o, err, got)
		}
		// TSO without csum is refused by the kernel; best effort drops it all.
		if _, err := tp.SetOffloads(OffloadTSO4, false); !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("SetOffloads(tso4) without csum: %v, want EINVAL", err)
		}
		if got, err := tp.SetOffloads(OffloadTSO4, true); err != nil || got != 0 || state() != "off" {
			return fmt.Errorf("best effort SetOffloads(tso4) = %s, %v; ethtool says TSO %s", got, err, state())
		}
		return nil
	})
}
