package link

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/vmconfig"
)

// world is a test topology: hosts A and B (each a namespace with eth0),
// and the link namespace L where their peers (vA, vB) live, optionally
// each in a bridge (brA, brB) that the link's taps join.
type world struct {
	t       *testing.T
	A, B, L netns.Handle
	nlL     *netlink.Handle
	ipA     net.IP
	ipB     net.IP
}

// newWorld builds A -- vA and B -- vB; with bridges, vA sits in brA and
// vB in brB.
func newWorld(t *testing.T, bridges bool) *world {
	t.Helper()
	testenv.RequireRoot(t)
	w := &world{t: t, A: testenv.NetNS(t), B: testenv.NetNS(t), L: testenv.NetNS(t),
		ipA: net.IPv4(10, 66, 0, 1), ipB: net.IPv4(10, 66, 0, 2)}
	var err error
	if w.nlL, err = netlink.NewHandleAt(w.L, unix.NETLINK_ROUTE); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.nlL.Close)
	lo, _ := w.nlL.LinkByName("lo")
	w.must(w.nlL.LinkSetUp(lo))
	var hs []*netlink.Handle
	for _, s := range []struct {
		ns   netns.Handle
		name string
		ip   net.IP
	}{{w.A, "A", w.ipA}, {w.B, "B", w.ipB}} {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "v" + s.name}, PeerName: "eth0", PeerNamespace: netlink.NsFd(s.ns)}
		w.must(w.nlL.LinkAdd(veth))
		v, err := w.nlL.LinkByName("v" + s.name)
		w.must(err)
		if bridges {
			br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br" + s.name}}
			w.must(w.nlL.LinkAdd(br))
			w.must(w.nlL.LinkSetMaster(v, br))
			w.must(w.nlL.LinkSetUp(br))
		}
		w.must(w.nlL.LinkSetUp(v))
		h, err := netlink.NewHandleAt(s.ns, unix.NETLINK_ROUTE)
		w.must(err)
		eth, err := h.LinkByName("eth0")
		w.must(err)
		w.must(h.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: s.ip, Mask: net.CIDRMask(24, 32)}}))
		w.must(h.LinkSetUp(eth))
		lo, _ := h.LinkByName("lo")
		w.must(h.LinkSetUp(lo))
		hs = append(hs, h)
	}
	// A veth end that comes up before its peer has no carrier then, and
	// the kernel activates its transmit queue only when its link watcher
	// (a work item, under the RTNL lock every namespace on the machine
	// shares) sees the carrier: until then what is sent out of it is
	// dropped without an error. vA and vB come up before A's and B's
	// eth0, so a link's first frames into them could vanish; tests that
	// send a single frame (TestTunnelCutsLongSuperFrame: "far side got 0
	// payload bytes" at load 20-30, with the link counting the frames as
	// written) failed so. Wait until every end is operationally up: the
	// link watcher sets that in the same step as it activates the queue.
	waitOperUp(t, w.nlL, "vA", "vB")
	for _, h := range hs {
		waitOperUp(t, h, "eth0")
		h.Close()
	}
	return w
}

// waitOperUp waits until the named links seen through h are
// operationally up (generous: it ends when they are).
func waitOperUp(t *testing.T, h *netlink.Handle, names ...string) {
	t.Helper()
	for _, name := range names {
		start := time.Now()
		for deadline := start.Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			l, err := h.LinkByName(name)
			if err != nil {
				t.Fatal(err)
			}
			if l.Attrs().OperState == netlink.OperUp {
				if d := time.Since(start); d > 100*time.Millisecond {
					t.Logf("%s was operationally up only %v after it came up", name, d.Round(time.Millisecond))
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not operationally up after 30s: %s", name, l.Attrs().OperState)
			}
		}
	}
}

func (w *world) must(err error) {
	w.t.Helper()
	if err != nil {
		w.t.Fatal(err)
	}
}

// open opens an endpoint inside L.
func (w *world) open(spec string) *Endpoint {
	w.t.Helper()
	ep, err := vmconfig.ParseEndpoint(spec)
	w.must(err)
	var e *Endpoint
	testenv.Do(w.t, w.L, func() error {
		e, err = Open(context.Background(), ep, OpenOptions{})
		return err
	})
	return e
}

// plug puts a tap in L into a bridge.
func (w *world) plug(tapName, bridge string) {
	w.t.Helper()
	tl, err := w.nlL.LinkByName(tapName)
	w.must(err)
	br, err := w.nlL.LinkByName(bridge)
	w.must(err)
	w.must(w.nlL.LinkSetMaster(tl, br))
	w.must(w.nlL.LinkSetUp(tl))
}

// run starts l and stops it at the end of the test, failing the test if
// Run returned an error.
func (w *world) run(l *Link) {
	w.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	w.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			w.t.Errorf("Run: %v", err)
		}
		l.Close()
	})
}

// stop is run's early form: stop the link now (for the capture to be
// complete) and check Run's result.
func stopper(t *testing.T, l *Link) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Run did not return 10s after cancel")
			}
			if err := l.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// tcpTransfer sends size random bytes from A to B over TCP and checks the
// SHA-256 of what arrived; then B answers with 64 KiB that A checks too.
func (w *world) tcpTransfer(size int) {
	w.t.Helper()
	var ln net.Listener
	testenv.Do(w.t, w.B, func() (err error) {
		ln, err = net.Listen("tcp4", w.ipB.String()+":5001")
		return err
	})
	defer ln.Close()
	data := make([]byte, size)
	rnd := rand.NewChaCha8([32]byte{1, 2, 3})
	rnd.Read(data)
	want := sha256.Sum256(data)
	reply := data[:64<<10]

	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(60 * time.Second))
		h := sha256.New()
		n, err := io.CopyN(h, c, int64(size))
		var r result
		copy(r.sum[:], h.Sum(nil))
		r.n, r.err = n, err
		if err == nil {
			_, r.err = c.Write(reply)
		}
		got <- r
	}()
	var c net.Conn
	testenv.Do(w.t, w.A, func() (err error) {
		d := net.Dialer{Timeout: 10 * time.Second}
		c, err = d.Dial("tcp4", w.ipB.String()+":5001")
		return err
	})
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(data); err != nil {
		w.t.Fatalf("send %d bytes A->B: %v", size, err)
	}
	r := <-got
	if r.err != nil {
		w.t.Fatalf("receive A->B: %v after %d of %d bytes", r.err, r.n, size)
	}
	if r.sum != want {
		w.t.Fatalf("A->B: %d bytes arrived with SHA-256 %x, sent %x", r.n, r.sum, want)
	}
	back := make([]byte, len(reply))
	if _, err := io.ReadFull(c, back); err != nil {
		w.t.Fatalf("receive B->A: %v", err)
	}
	if sha256.Sum256(back) != sha256.Sum256(reply) {
		w.t.Fatalf("B->A: 64 KiB reply corrupted")
	}
}

// udpEcho sends datagrams of several sizes (up to IP-fragmented ones)
// from A to an echo server in B and checks every echo, retrying lost ones.
func (w *world) udpEcho() {
	w.t.Helper()
	var srv, cli net.PacketConn
	testenv.Do(w.t, w.B, func() (err error) {
		srv, err = net.ListenPacket("udp4", w.ipB.String()+":5002")
		return err
	})
	defer srv.Close()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			srv.WriteTo(buf[:n], from)
		}
	}()
	testenv.Do(w.t, w.A, func() (err error) {
		cli, err = net.ListenPacket("udp4", w.ipA.String()+":0")
		return err
	})
	defer cli.Close()
	to := &net.UDPAddr{IP: w.ipB, Port: 5002}
	buf := make([]byte, 65536)
	for i, size := range []int{1, 100, 1400, 1472, 1473, 4000, 9000, 30000, 60000} {
		msg := make([]byte, size)
		for j := range msg {
			msg[j] = byte(i*31 + j)
		}
		ok := false
		for try := 0; try < 5 && !ok; try++ {
			if _, err := cli.WriteTo(msg, to); err != nil {
				w.t.Fatalf("udp send %d bytes: %v", size, err)
			}
			cli.SetReadDeadline(time.Now().Add(time.Second))
			for {
				n, _, err := cli.ReadFrom(buf)
				if err != nil {
					break
				}
				if n == size && string(buf[:n]) == string(msg) {
					ok = true
					break
				}
			}
		}
		if !ok {
			w.t.Fatalf("udp datagram of %d bytes: no intact echo in 5 tries", size)
		}
	}
}

// inNS starts cmd inside ns: a child forked from a thread in ns is in ns.
func startIn(t *testing.T, ns netns.Handle, cmd *exec.Cmd) {
	t.Helper()
	testenv.Do(t, ns, cmd.Start)
}

// tshark runs tshark -r file with args and returns its output lines.
func tshark(t *testing.T, file string, args ...string) []string {
	t.Helper()
	out, err := exec.Command("tshark", append([]string{"-r", file}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("tshark -r %s %s: %v\n%s", file, strings.Join(args, " "), err, out)
	}
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "Running as user") {
			lines = append(lines, l)
		}
	}
	return lines
}

// checkWire reads a capture with tshark (checksum validation on) and
// fails if a frame is longer than an Ethernet MTU frame or any checksum is
// bad (see wireProblems). It returns the number of frames and of TCP
// payload bytes.
func checkWire(t *testing.T, file string, maxLen int) (frames, tcpBytes int) {
	t.Helper()
	if bad := wireProblems(t, file, maxLen); len(bad) > 0 {
		t.Errorf("%s: %d frames too long or with bad checksums, first: %q", file, len(bad), bad[:min(5, len(bad))])
	}
	lines := tshark(t, file, append(wireOpts, "-T", "fields", "-e", "frame.number", "-e", "tcp.len")...)
	for _, l := range lines {
		var num, n int
		fmt.Sscan(l, &num, &n)
		tcpBytes += n
	}
	return len(lines), tcpBytes
}

var wireOpts = []string{"-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE"}

// tsharkFFFF is tshark's note on a TCP checksum field of 0xffff where the
// sum is zero. One's complement has two zeros and a receiver accepts both
// (RFC 1624); the kernel's own software checksum writes 0xffff for a zero
// sum (skb_checksum_help: csum_fold(csum) ?: CSUM_MANGLED_0), so about one
// TCP segment in 65536 that a kernel checksummed carries it.
const tsharkFFFF = "TCP Checksum 0xffff instead of 0x0000 (see RFC 1624)"

// expertChecksum is tshark's PI_CHECKSUM expert group as the fields output
// prints it.
const expertChecksum = "16777216"

// wireProblems returns one line per frame of file that is longer than
// maxLen or that tshark finds a checksum problem in, other than a valid
// 0xffff for a zero TCP sum.
func wireProblems(t *testing.T, file string, maxLen int) []string {
	t.Helper()
	lines := tshark(t, file, append(wireOpts, "-Y", fmt.Sprintf("frame.len > %d or _ws.expert.group == \"Checksum\"", maxLen),
		"-T", "fields", "-E", "separator=/t", "-E", "aggregator=|",
		"-e", "frame.number", "-e", "frame.len", "-e", "_ws.expert.group", "-e", "_ws.expert.message")...)
	var bad []string
	for _, l := range lines {
		f := strings.Split(l, "\t")
		for len(f) < 4 {
			f = append(f, "")
		}
		n, _ := strconv.Atoi(f[1])
		groups, msgs := strings.Split(f[2], "|"), strings.Split(f[3], "|")
		problem := n > maxLen
		for i, g := range groups {
			if g == expertChecksum && (i >= len(msgs) || msgs[i] != tsharkFFFF) {
				problem = true
			}
		}
		if problem {
			bad = append(bad, l)
		}
	}
	return bad
}

// rawSocket is an AF_PACKET socket on an interface for writing and
// reading test frames.
type rawSocket struct {
	fd   int
	vnet bool
}

func openRaw(t *testing.T, ns netns.Handle, ifname string, vnet bool) *rawSocket {
	t.Helper()
	var s rawSocket
	testenv.Do(t, ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		s.fd = fd
		if vnet {
			if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
				return err
			}
		}
		unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
			return err
		}
		s.vnet = vnet
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	})
	t.Cleanup(func() { unix.Close(s.fd) })
	return &s
}

func (s *rawSocket) send(t *testing.T, b []byte) {
	t.Helper()
	if _, err := unix.Write(s.fd, b); err != nil {
		t.Fatalf("raw send of %d bytes: %v", len(b), err)
	}
}

// recv returns frames until timeout passes without one, with an 802.1Q
// tag the receiving device took out of the data put back in (as libpcap
// does), so that frames compare with what was sent.
func (s *rawSocket) recv(timeout time.Duration) [][]byte {
	var frames [][]byte
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	unix.SetsockoptTimeval(s.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	buf := make([]byte, 70000)
	oob := make([]byte, 256)
	for {
		n, oobn, _, _, err := unix.Recvmsg(s.fd, buf, oob, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return frames
		}
		f := append([]byte(nil), buf[:n]...)
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for _, m := range msgs {
			if m.Header.Level != unix.SOL_PACKET || m.Header.Type != unix.PACKET_AUXDATA || len(m.Data) < 20 {
				continue
			}
			status := binary.NativeEndian.Uint32(m.Data[0:])
			tci, tpid := binary.NativeEndian.Uint16(m.Data[16:]), binary.NativeEndian.Uint16(m.Data[18:])
			if status&unix.TP_STATUS_VLAN_VALID != 0 {
				if status&unix.TP_STATUS_VLAN_TPID_VALID == 0 {
					tpid = 0x8100
				}
				at := 12
				if s.vnet {
					at += 10
				}
				tag := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, tpid), tci)
				f = append(f[:at:at], append(tag, f[at:]...)...)
			}
		}
		frames = append(frames, f)
	}
}

// recvUntil returns the frames that arrive until done says they hold
// what the caller waits for, or within has passed. A wait for frames
// that must arrive ends when they have: recv's idle timeout alone (200
// ms to 1 s) ended before the first frame when a loaded machine held a
// link's pump off the CPU that long.
func (s *rawSocket) recvUntil(within time.Duration, done func(frames [][]byte) bool) [][]byte {
	var frames [][]byte
	for end := time.Now().Add(within); !done(frames) && time.Now().Before(end); {
		// recv's timeout must not be 0: SO_RCVTIMEO 0 waits for ever.
		frames = append(frames, s.recv(max(min(100*time.Millisecond, time.Until(end)), time.Millisecond))...)
	}
	return frames
}

// has is a recvUntil condition: a frame equal to f arrived.
func has(f []byte) func([][]byte) bool {
	return func(frames [][]byte) bool {
		return slices.ContainsFunc(frames, func(g []byte) bool { return bytes.Equal(g, f) })
	}
}

// arrive bounds the wait for frames that must arrive: generous, since it
// ends when they do.
const arrive = 20 * time.Second

// lockedBuffer collects a child's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

func exec1(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}
