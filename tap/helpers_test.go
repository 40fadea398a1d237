package tap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/netns"
)

// testEtherType marks frames the tests send (IEEE local experimental), so
// anything else the kernel emits is ignored.
const testEtherType = 0x88b5

var (
	srcMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xa1}
	dstMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xb2}
)

// newNS gives the test a fresh namespace without IPv6 autoconfiguration
// chatter on new links. It lives until the test binary exits: taking
// namespaces down is slow in a guest.
func newNS(t testing.TB) netns.Handle {
	t.Helper()
	ns := testenv.NetNSUntilExit(t)
	testenv.Do(t, ns, func() error {
		for _, p := range []string{"all", "default"} {
			// Best effort: a host without IPv6 has nothing to silence.
			_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+p+"/disable_ipv6", []byte("1"), 0)
		}
		return nil
	})
	return ns
}

// bridgeTaps creates bridge br0 (directly through netlink) and enslaves
// the taps, bringing everything up. Run inside the namespace.
func bridgeTaps(taps ...*Tap) error {
	h := &netlink.Handle{}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("add bridge: %w", err)
	}
	if err := h.LinkSetUp(br); err != nil {
		return err
	}
	for _, tp := range taps {
		l, err := h.LinkByName(tp.Name())
		if err != nil {
			return err
		}
		if err := h.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("enslave %s: %w", tp.Name(), err)
		}
		if err := h.LinkSetUp(l); err != nil {
			return err
		}
	}
	return nil
}

func mustCreate(t testing.TB, cfg Config) *Tap {
	t.Helper()
	tp, err := Create(cfg)
	if err != nil {
		t.Fatalf("Create(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { tp.Close() })
	return tp
}

// markedFrame is an Ethernet frame of the test EtherType carrying id.
func markedFrame(id uint32, size int) []byte {
	f := make([]byte, size)
	copy(f[0:], dstMAC)
	copy(f[6:], srcMAC)
	binary.BigEndian.PutUint16(f[12:], testEtherType)
	binary.BigEndian.PutUint32(f[14:], id)
	for i := 18; i < size; i++ {
		f[i] = byte(i)
	}
	return f
}

// udpFrame builds a valid Ethernet/IPv4/UDP frame with gopacket; the
// ports make the flow.
func udpFrame(t testing.TB, sport, dport uint16, payload []byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP,
		SrcIP: net.IPv4(10, 0, 0, 1), DstIP: net.IPv4(10, 0, 0, 2)}
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, eth, ip, udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// isTestUDP reports whether frame is one of udpFrame's, by decoding it
// with gopacket.
func isTestUDP(frame []byte) (*layers.UDP, bool) {
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	u, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if !ok || !bytes.HasPrefix(u.Payload, []byte("vmnet-tap-test")) {
		return nil, false
	}
	return u, true
}

func isMarked(frame []byte) bool {
	return len(frame) >= 18 && binary.BigEndian.Uint16(frame[12:]) == testEtherType
}

// arrive bounds the wait for a frame that must arrive, and settle the
// wait for the kernel to finish something it does after a call returned
// (a fork holding a copy of a queue's fd, a deferred close). Both end
// early when the frame or state comes, so they cost nothing when the
// test passes; they are long because the tap tests also run inside a
// guest under TCG (TestGuestOnly) on a loaded 2-core host, where a vCPU
// can wait for seconds for a host CPU: 2 s was close enough to that for
// chance failures.
const (
	arrive = 10 * time.Second
	settle = 10 * time.Second
)

// readMatch reads from q until a frame (after hdr bytes of vnet header)
// satisfies match, or the timeout passes.
func readMatch(q *Queue, timeout time.Duration, match func(frame []byte) bool) ([]byte, error) {
	if err := q.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	defer q.SetReadDeadline(time.Time{})
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	buf := *bp
	for {
		n, err := q.Read(buf)
		if err != nil {
			return nil, err
		}
		if match(buf[q.VnetHdrSize():n]) {
			return bytes.Clone(buf[:n]), nil
		}
	}
}

// readBufs hold a frame of any size: readMatch runs for every frame of
// most tests, and clearing 70 kB each time is slow in an emulated guest.
var readBufs = sync.Pool{New: func() any { b := make([]byte, 70000); return &b }}

// drain counts the frames matching match that arrive on q within d.
func drain(q *Queue, d time.Duration, match func([]byte) bool) (int, error) {
	n := 0
	_, err := readMatch(q, d, func(f []byte) bool {
		if match(f) {
			n++
		}
		return false
	})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = nil
	}
	return n, err
}

// countOn reads the queues in turn until the frames matching match number
// want in all, or within has passed, and returns how many each queue
// read. Under load the kernel may pass frames on from its backlog well
// after the writes returned: it waits for all of them, not for a fixed
// time. A read that fails other than by its deadline ends it.
func countOn(qs []*Queue, want int, within time.Duration, match func([]byte) bool) ([]int, error) {
	counts := make([]int, len(qs))
	total := 0
	for end := time.Now().Add(within); total < want && time.Now().Before(end); {
		for i, q := range qs {
			n, err := drain(q, 5*time.Millisecond, match)
			if err != nil {
				return counts, fmt.Errorf("read on queue %d: %w", i, err)
			}
			counts[i] += n
			total += n
		}
	}
	return counts, nil
}

// run runs a command in the calling (locked) thread's namespace.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func linkNames(t testing.TB) []string {
	t.Helper()
	links, err := (&netlink.Handle{}).LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return names
}

// noLinksBut waits until the calling thread's namespace has only the
// named links. A device that goes away when its last file is closed can
// stay a moment longer: a parallel test's fork holds copies of every fd
// until its exec closes them.
func noLinksBut(t testing.TB, want ...string) error {
	t.Helper()
	for deadline := time.Now().Add(settle); ; time.Sleep(10 * time.Millisecond) {
		names := linkNames(t)
		if slices.Equal(names, want) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("links %v, want %v", names, want)
		}
	}
}
