package bridge_test

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vmnet/vmnet/bridge"
	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/netns"
	"golang.org/x/sys/unix"
)

// env is one test's private namespace, a Manager in it, and an
// independent netlink handle for setting up the scene.
type env struct {
	t  testing.TB
	ns netns.Handle
	m  *bridge.Manager
	h  *netlink.Handle
}

func newEnv(t testing.TB) *env {
	t.Helper()
	ns := testenv.NetNS(t)
	m, err := bridge.New(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE) // only ROUTE: xfrm_user may be missing (guest kernels)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return &env{t: t, ns: ns, m: m, h: h}
}

// run runs a program inside the namespace. os/exec forks from the calling
// thread, which netns.Do has locked and moved into the namespace, so the
// child starts there (TestExecRunsInNamespace checks this).
func (e *env) run(name string, args ...string) string {
	e.t.Helper()
	testenv.RequireProgram(e.t, name)
	var out, stderr bytes.Buffer
	testenv.Do(e.t, e.ns, func() error {
		cmd := exec.Command(name, args...)
		cmd.Stdout, cmd.Stderr = &out, &stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr.String())
		}
		return nil
	})
	return out.String()
}

// runErr is run for commands expected to fail; it returns stderr too.
func (e *env) runErr(name string, args ...string) (string, error) {
	e.t.Helper()
	testenv.RequireProgram(e.t, name)
	var out []byte
	var err error
	testenv.Do(e.t, e.ns, func() error {
		out, err = exec.Command(name, args...).CombinedOutput()
		return nil
	})
	return string(out), err
}

// ipLink is `ip -d -j link show NAME`, the observer for link settings.
func (e *env) ipLink(name string) map[string]any {
	e.t.Helper()
	var v []map[string]any
	out := e.run("ip", "-d", "-j", "link", "show", "dev", name)
	if err := json.Unmarshal([]byte(out), &v); err != nil || len(v) != 1 {
		e.t.Fatalf("ip -d -j link show %s: %v: %s", name, err, out)
	}
	return v[0]
}

func infoData(l map[string]any, key string) map[string]any {
	li, _ := l["linkinfo"].(map[string]any)
	d, _ := li[key].(map[string]any)
	return d
}

// bridgeLink is `bridge -d -j link show dev NAME`, the observer for port flags.
func (e *env) bridgeLink(name string) map[string]any {
	e.t.Helper()
	var v []map[string]any
	out := e.run("bridge", "-d", "-j", "link", "show", "dev", name)
	if err := json.Unmarshal([]byte(out), &v); err != nil || len(v) != 1 {
		e.t.Fatalf("bridge -d -j link show dev %s: %v: %s", name, err, out)
	}
	return v[0]
}

// ipAddrs is `ip -j addr show dev NAME` as "addr/len" strings.
func (e *env) ipAddrs(name string) []string {
	e.t.Helper()
	var v []struct {
		AddrInfo []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	out := e.run("ip", "-j", "addr", "show", "dev", name)
	if err := json.Unmarshal([]byte(out), &v); err != nil || len(v) != 1 {
		e.t.Fatalf("ip -j addr show %s: %v: %s", name, err, out)
	}
	var s []string
	for _, a := range v[0].AddrInfo {
		s = append(s, fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
	}
	return s
}

// sysfs reads /sys/class/net/DEV/FILE for the namespace's devices, from a
// sysfs mounted inside a private mount namespace (sysfs shows the network
// namespace of whoever mounts it).
func (e *env) sysfs(dev string, files ...string) []string {
	e.t.Helper()
	script := "mount -t sysfs sysfs /sys && cd /sys/class/net/" + dev + " && cat"
	for _, f := range files {
		script += " " + f
	}
	out := e.run("unshare", "-m", "sh", "-c", script)
	return strings.Fields(out)
}

// veth creates a veth pair with the default MTU (1500) and brings the
// peer (the end that stays outside the bridge) up.
func (e *env) veth(name, peer string) {
	e.t.Helper()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	if err := e.h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: peer}); err != nil {
		e.t.Fatalf("veth %s/%s: %v", name, peer, err)
	}
	p, err := e.h.LinkByName(peer)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.h.LinkSetUp(p); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) link(name string) netlink.Link {
	e.t.Helper()
	l, err := e.h.LinkByName(name)
	if err != nil {
		e.t.Fatalf("%s: %v", name, err)
	}
	return l
}

func (e *env) exists(name string) bool {
	_, err := e.h.LinkByName(name)
	return err == nil
}

// mustErr fails unless err is non-nil and its message contains every want.
func mustErr(t testing.TB, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one containing %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("error %q does not contain %q", err, w)
		}
	}
}

// packetSock is an AF_PACKET socket bound to one interface of the
// namespace: the test's independent way to put frames on a wire and see
// what the kernel delivers.
type packetSock struct {
	t       testing.TB
	fd      int
	ifindex int
	mac     net.HardwareAddr
}

func (e *env) packetSock(ifname string) *packetSock {
	e.t.Helper()
	l := e.link(ifname)
	ps := &packetSock{t: e.t, ifindex: l.Attrs().Index, mac: l.Attrs().HardwareAddr}
	testenv.Do(e.t, e.ns, func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		ps.fd = fd
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
			return err
		}
		tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ps.ifindex})
	})
	e.t.Cleanup(func() { unix.Close(ps.fd) })
	return ps
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

const testEtherType = 0x88B5 // IEEE 802 local experimental

// frame builds an Ethernet frame to dst with a random payload tag and
// returns it with the tag.
func (ps *packetSock) frame(dst net.HardwareAddr, etherType uint16, vlan uint16) ([]byte, []byte) {
	tag := make([]byte, 16)
	rand.Read(tag)
	f := append([]byte{}, dst...)
	f = append(f, ps.mac...)
	if vlan != 0 {
		f = binary.BigEndian.AppendUint16(f, unix.ETH_P_8021Q)
		f = binary.BigEndian.AppendUint16(f, vlan)
	}
	f = binary.BigEndian.AppendUint16(f, etherType)
	f = append(f, tag...)
	for len(f) < 60 {
		f = append(f, 0)
	}
	return f, tag
}

func (ps *packetSock) send(f []byte) {
	ps.t.Helper()
	if err := unix.Sendto(ps.fd, f, 0, &unix.SockaddrLinklayer{Ifindex: ps.ifindex, Halen: 6}); err != nil {
		ps.t.Fatalf("send on ifindex %d: %v", ps.ifindex, err)
	}
}

// received is a frame that arrived, with the VLAN the kernel took off it
// (AF_PACKET reports an accelerated tag only in PACKET_AUXDATA).
type received struct {
	frame []byte
	vlan  uint16 // 0: untagged
}

// recv waits up to d for an incoming frame that carries tag.
func (ps *packetSock) recv(tag []byte, d time.Duration) (received, bool) {
	buf := make([]byte, 2048)
	oob := make([]byte, 256)
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		n, oobn, _, from, err := unix.Recvmsg(ps.fd, buf, oob, 0)
		if err != nil {
			continue // EAGAIN on the receive timeout
		}
		if sll, ok := from.(*unix.SockaddrLinklayer); ok && sll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if !bytes.Contains(buf[:n], tag) {
			continue
		}
		r := received{frame: append([]byte{}, buf[:n]...)}
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for _, m := range msgs {
			if m.Header.Level == unix.SOL_PACKET && m.Header.Type == unix.PACKET_AUXDATA && len(m.Data) >= int(unsafe.Sizeof(unix.TpacketAuxdata{})) {
				aux := (*unix.TpacketAuxdata)(unsafe.Pointer(&m.Data[0]))
				if aux.Status&unix.TP_STATUS_VLAN_VALID != 0 {
					r.vlan = aux.Vlan_tci & 0x0fff
				}
			}
		}
		if r.vlan == 0 && len(r.frame) >= 18 && binary.BigEndian.Uint16(r.frame[12:]) == unix.ETH_P_8021Q {
			r.vlan = binary.BigEndian.Uint16(r.frame[14:]) & 0x0fff
		}
		return r, true
	}
	return received{}, false
}

var broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
