package lab

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/tap"
)

// crossLab has VM a on h1 and VM b on h2, joined by a [[link]] between
// their only NICs, encrypted with the key file %s.
const crossLab = `[lab]
name = "xl"
[[host]]
name = "h1"
address = "10.200.0.1"
[[host]]
name = "h2"
address = "10.200.0.2"
[[vm]]
name = "a"
host = "h1"
kernel = "k"
  [[vm.nic]]
[[vm]]
name = "b"
host = "h2"
kernel = "k"
  [[vm.nic]]
[[link]]
a = "vm:a:0"
b = "vm:b:0"
key = %q
`

// guestStack stands in for the guest behind tap t: a tap g0 in a network
// namespace of its own with address addr, whose frames a goroutine
// copies to and from t's queue (the guest side of the VM's tap). So the
// kernel's stack at each end, not the test, makes and answers the
// frames. It returns the namespace.
func guestStack(t *testing.T, lt *tap.Tap, addr string) netns.Handle {
	t.Helper()
	ns := testenv.NetNS(t)
	var g *tap.Tap
	testenv.Do(t, ns, func() error {
		cfg := tap.NewConfig("g0", 1)
		cfg.Up = true
		var err error
		if g, err = tap.Create(cfg); err != nil {
			return err
		}
		if out, err := exec.Command("ip", "addr", "add", addr, "dev", "g0").CombinedOutput(); err != nil {
			return fmt.Errorf("ip addr: %v: %s", err, out)
		}
		return nil
	})
	t.Cleanup(func() { g.Close() })
	lq, gq := lt.Queues()[0], g.Queues()[0]
	hdr := make([]byte, lq.VnetHdrSize())
	// The lab's tap has a vnet header; the guest tap none and no
	// offloads, so the kernel hands out whole frames with complete
	// checksums: a zero header in front of them is right.
	go func() {
		buf := make([]byte, 65536)
		for {
			n, err := gq.Read(buf)
			if err != nil {
				return
			}
			clear(hdr)
			if _, err := lq.WriteHdr(hdr, buf[:n]); err != nil && !errors.Is(err, os.ErrClosed) {
				continue
			}
		}
	}()
	go func() {
		rhdr := make([]byte, len(hdr))
		buf := make([]byte, 65536)
		for {
			n, err := lq.ReadHdr(rhdr, buf)
			if err != nil {
				return
			}
			gq.Write(buf[:n])
		}
	}()
	return ns
}

// TestLinkSpansHosts: a [[link]] between VM a on h1 and VM b on h2 (two
// simulated hosts on a veth underlay, each with its own lab) runs as an
// encrypted UDP tunnel between the hosts' underlay addresses, on the port
// both derive from the lab file: the network stacks behind the two VMs'
// taps ping each other across it, the datagrams on the underlay are
// sealed (no frame in the clear), and both halves count the frames.
func TestLinkSpansHosts(t *testing.T) {
	hosts := testenv.Underlay(t, 2)
	key := filepath.Join(t.TempDir(), "link.key")
	k := make([]byte, 32)
	rand.Read(k)
	if err := os.WriteFile(key, k, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := labOf(t, fmt.Sprintf(crossLab, key))
	labs := make([]*Lab, 2)
	guests := make([]netns.Handle, 2)
	for i, host := range []string{"h1", "h2"} {
		part, err := cfg.Part(host)
		if err != nil {
			t.Fatal(err)
		}
		testenv.Do(t, hosts[i], func() error {
			labs[i] = newLab(t, part)
			vm := part.VMs[0]
			if err := labs[i].CreateTaps(vm); err != nil {
				return err
			}
			return labs[i].StartLinks(context.Background())
		})
		t.Cleanup(func() {
			testenv.Do(t, hosts[i], func() error { return labs[i].Teardown(context.Background()) })
		})
		guests[i] = guestStack(t, labs[i].Tap(part.VMs[0].NICs[0]), fmt.Sprintf("10.210.0.%d/24", i+1))
	}
	// Capture the underlay on h2 while h1's stack talks TCP to h2's.
	port := fmt.Sprint(cfg.Links[0].Port)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dump := exec.CommandContext(ctx, testenv.RequireProgram(t, "tcpdump"), "-i", "eth0", "-n", "-U", "-c", "6", "-w", "-", "udp port "+port)
	var capOut, capErr strings.Builder
	dump.Stdout = &capOut
	errPipe, err := dump.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	testenv.Do(t, hosts[1], dump.Start)
	// tcpdump says "listening on" once it captures.
	sc := bufio.NewScanner(errPipe)
	for sc.Scan() && !strings.Contains(sc.Text(), "listening on") {
		capErr.WriteString(sc.Text() + "\n")
	}
	copied := make(chan struct{})
	go func() { io.Copy(&capErr, errPipe); close(copied) }() // read before Wait, which closes the pipe
	var ln net.Listener
	testenv.Do(t, guests[1], func() error {
		var err error
		ln, err = net.Listen("tcp", "10.210.0.2:7000")
		return err
	})
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Write([]byte("across the link"))
			c.Close()
		}
	}()
	testenv.Do(t, guests[0], func() error {
		c, err := net.DialTimeout("tcp", "10.210.0.2:7000", 10*time.Second)
		if err != nil {
			return fmt.Errorf("a's stack on h1 -> b's on h2 across the link: %w", err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		if string(b) != "across the link" {
			t.Errorf("read %q (%v) from b, want %q", b, err, "across the link")
		}
		return nil
	})
	<-copied
	if err := dump.Wait(); err != nil {
		t.Errorf("tcpdump on h2's underlay saw fewer than 6 datagrams on port %s: %v: %s", port, err, capErr.String())
	}
	// The guests' addresses (10.210.0.x) are in every frame's IPv4 or ARP
	// header: sealed datagrams show neither.
	for _, a := range []string{"\x0a\xd2\x00\x01", "\x0a\xd2\x00\x02", "across the link"} {
		if strings.Contains(capOut.String(), a) {
			t.Errorf("the underlay carries %q in the clear: the tunnel is not encrypted", a)
		}
	}
	for i, l := range labs {
		st := l.LinkStats()
		if len(st) != 1 {
			t.Fatalf("h%d: %d links", i+1, len(st))
		}
		s := st[0]
		// h1: a = vm's tap, b = udp to h2; h2: a = udp to h1, b = vm's tap.
		want := []string{"udp:10.200.0.1:" + port + ",remote=10.200.0.2:" + port, "udp:10.200.0.2:" + port + ",remote=10.200.0.1:" + port}[i]
		if ep := []string{s.B, s.A}[i]; !strings.HasPrefix(ep, want+",key=") {
			t.Errorf("h%d: tunnel end %s, want %s with the key", i+1, ep, want)
		}
		if s.AtoB.TxFrames < 3 || s.BtoA.TxFrames < 3 {
			t.Errorf("h%d: link forwarded %d and %d frames, want at least 3 each way (ARP, TCP handshake, data)", i+1, s.AtoB.TxFrames, s.BtoA.TxFrames)
		}
	}
}
