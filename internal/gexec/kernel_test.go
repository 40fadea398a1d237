package gexec_test

// Kernel features the image of vmnet exec provides (DefaultModules) that
// the host kernel lacks: 802.1Q devices and netem. On such a host they
// skip naming the feature; TestGuestOnly runs them in a guest.

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/netns"
)

const testEtherType = 0x88b5 // IEEE local experimental

func htons(v uint16) uint16 { return v<<8 | v>>8 }

type kenv struct {
	t  *testing.T
	ns netns.Handle
	h  *netlink.Handle
}

func newKenv(t *testing.T) *kenv {
	ns := testenv.NetNS(t)
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return &kenv{t: t, ns: ns, h: h}
}

// veth makes an up veth pair and returns the two links.
func (k *kenv) veth(a, b string) (netlink.Link, netlink.Link) {
	k.t.Helper()
	if err := k.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a}, PeerName: b}); err != nil {
		k.t.Fatalf("veth %s/%s: %v", a, b, err)
	}
	return k.up(a), k.up(b)
}

func (k *kenv) up(name string) netlink.Link {
	k.t.Helper()
	l, err := k.h.LinkByName(name)
	if err == nil {
		err = k.h.LinkSetUp(l)
	}
	if err != nil {
		k.t.Fatalf("%s: %v", name, err)
	}
	return l
}

// packetSocket is an AF_PACKET socket on one interface for testEtherType.
func (k *kenv) packetSocket(l netlink.Link) int {
	k.t.Helper()
	var fd int
	testenv.Do(k.t, k.ns, func() error { // the socket belongs to the namespace it is made in
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(testEtherType)))
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(testEtherType), Ifindex: l.Attrs().Index})
	})
	k.t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// send sends a broadcast frame with a fresh token out of l and returns the token.
func (k *kenv) send(fd int, l netlink.Link) []byte {
	k.t.Helper()
	token := make([]byte, 16)
	rand.Read(token)
	f := make([]byte, 14, 64)
	copy(f, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:], l.Attrs().HardwareAddr)
	binary.BigEndian.PutUint16(f[12:], testEtherType)
	f = append(f, token...)
	sa := &unix.SockaddrLinklayer{Ifindex: l.Attrs().Index, Halen: 6, Protocol: htons(testEtherType)}
	copy(sa.Addr[:], f[:6])
	if err := unix.Sendto(fd, f, 0, sa); err != nil {
		k.t.Fatalf("send on %s: %v", l.Attrs().Name, err)
	}
	return token
}

// recv waits up to wait for a frame with token on fd and tells when it came.
func recv(t *testing.T, fd int, token []byte, wait time.Duration) (time.Time, bool) {
	t.Helper()
	return recvAny(t, fd, [][]byte{token}, wait)
}

// recvAny waits up to wait for a frame with any of tokens on fd.
func recvAny(t *testing.T, fd int, tokens [][]byte, wait time.Duration) (time.Time, bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	buf := make([]byte, 2048)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return time.Time{}, false
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		for _, token := range tokens {
			if bytes.Contains(buf[:n], token) {
				return time.Now(), true
			}
		}
	}
}

// A frame sent on an 802.1Q device (VLAN 100) over a veth reaches the
// peer's VLAN 100 device, and not its VLAN 200 device: only a tag on the
// wire can steer it there (an untagged frame stays on vb itself).
func TestKernel8021Q(t *testing.T) {
	k := newKenv(t)
	va, vb := k.veth("va", "vb")
	add := func(parent netlink.Link, id int) netlink.Link {
		name := parent.Attrs().Name + "." + strconv.Itoa(id)
		err := k.h.LinkAdd(&netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: parent.Attrs().Index}, VlanId: id})
		if errors.Is(err, unix.EOPNOTSUPP) {
			t.Skipf("needs 802.1Q VLAN devices (CONFIG_VLAN_8021Q), which this kernel lacks (%v); runs inside a guest (TestGuestOnly)", err)
		}
		if err != nil {
			t.Fatalf("vlan %s: %v", name, err)
		}
		return k.up(name)
	}
	a100 := add(va, 100)
	b100, b200 := add(vb, 100), add(vb, 200)
	out := k.packetSocket(a100)
	in100, in200 := k.packetSocket(b100), k.packetSocket(b200)
	// va came up before its peer, without carrier, so the kernel
	// activates its transmit queue only when its link watcher (a work
	// item) sees the carrier; a frame sent before that is dropped
	// silently. A fixed 50 ms was the wait for it, short in a guest
	// under TCG on a loaded host: send fresh frames until one arrives.
	var tokens [][]byte
	for deadline := time.Now().Add(20 * time.Second); ; {
		tokens = append(tokens, k.send(out, a100))
		if _, ok := recv(t, in100, tokens[len(tokens)-1], 100*time.Millisecond); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("none of %d frames sent on va.100 in 20s reached vb.100", len(tokens))
		}
	}
	t.Logf("frames sent on va.100 until one reached vb.100: %d", len(tokens))
	if _, ok := recvAny(t, in200, tokens, 300*time.Millisecond); ok {
		t.Error("a frame sent on va.100 reached vb.200")
	}
}

// netem delays frames by the configured latency (a lower bound, which no
// scheduling noise can undercut) and drops them all with loss 100%.
func TestKernelNetem(t *testing.T) {
	k := newKenv(t)
	na, nb := k.veth("na", "nb")
	const delay = 200 * time.Millisecond
	q := netlink.NewNetem(netlink.QdiscAttrs{LinkIndex: na.Attrs().Index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT},
		netlink.NetemQdiscAttrs{Latency: uint32(delay.Microseconds())})
	err := k.h.QdiscAdd(q)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP) {
		t.Skipf("needs the netem qdisc (CONFIG_NET_SCH_NETEM), which this kernel lacks (%v); runs inside a guest (TestGuestOnly)", err)
	}
	if err != nil {
		t.Fatalf("netem on na: %v", err)
	}
	qs, err := k.h.QdiscList(na)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, x := range qs {
		if n, ok := x.(*netlink.Netem); ok && n.Latency > 0 {
			found = true
		}
	}
	if !found {
		t.Errorf("qdisc dump of na lacks netem with latency: %+v", qs)
	}
	out, in := k.packetSocket(na), k.packetSocket(nb)
	start := time.Now()
	token := k.send(out, na)
	at, ok := recv(t, in, token, 20*time.Second) // ends when the frame comes
	if !ok {
		t.Fatal("frame through netem never arrived")
	}
	if d := at.Sub(start); d < delay-5*time.Millisecond {
		t.Errorf("frame arrived after %v, netem latency is %v", d, delay)
	}

	q = netlink.NewNetem(q.QdiscAttrs, netlink.NetemQdiscAttrs{Loss: 100})
	if err := k.h.QdiscReplace(q); err != nil {
		t.Fatalf("netem loss 100%%: %v", err)
	}
	token = k.send(out, na)
	if _, ok := recv(t, in, token, 500*time.Millisecond); ok {
		t.Error("frame passed netem with loss 100%")
	}
}
