package vnethdr_test

// The kernel as oracle. Two namespaces are joined by a userspace "cable"
// made of two taps, the way vmnet joins a VM to a peer:
//
//	ns1: 10.9.0.1 / fd00:9::1 on tap A (vnet_hdr, CSUM+TSO4/6+USO offloads)
//	ns2: 10.9.0.2 / fd00:9::2 on tap B (no vnet_hdr, no offloads)
//
// A->B: the kernel in ns1 hands real TSO/USO super-packets (with NEEDS_CSUM)
// to tap A; vnethdr.Parse+Segment turns them into MTU frames with complete
// checksums, written to tap B. Tap B has no checksum offload, so the ns2
// kernel verifies every IP and TCP/UDP checksum, length and sequence number
// before the data can reach the socket.
// B->A: the ns2 kernel segments in software (tap B has no offloads) and tap B
// hands out MTU frames; a vnethdr.Coalescer merges each batch and the result
// is written to tap A with its vnet header, where virtio_net_hdr_to_skb and
// the GSO/GRO code of the ns1 kernel must accept it.
// Sockets on both ends check that every byte arrives in order.

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/tap"
	"github.com/vmnet/vmnet/vnethdr"
)

type cable struct {
	ns1, ns2 netns.Handle
	a, b     *tap.Tap
	// A->B
	superPackets atomic.Int64 // GSO packets split into more than one segment
	segments     atomic.Int64
	// B->A
	merged    atomic.Int64 // coalesced outputs of more than one packet
	mergedUDP atomic.Int64
	errMu     sync.Mutex
	err       error
	wg        sync.WaitGroup
}

func (c *cable) fail(err error) {
	c.errMu.Lock()
	defer c.errMu.Unlock()
	if c.err == nil {
		c.err = err
	}
}

func (c *cable) check(t *testing.T) {
	t.Helper()
	c.errMu.Lock()
	defer c.errMu.Unlock()
	if c.err != nil {
		t.Fatal(c.err)
	}
}

func addAddrs(t *testing.T, ns netns.Handle, name string, addrs ...string) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			t.Fatal(err)
		}
		addr.Flags = unix.IFA_F_NODAD
		if err := h.AddrAdd(link, addr); err != nil {
			t.Fatalf("%s: add %s: %v", name, a, err)
		}
	}
}

func newCable(t *testing.T) *cable {
	testenv.RequireRoot(t)
	c := &cable{ns1: testenv.NetNS(t), ns2: testenv.NetNS(t)}
	testenv.Do(t, c.ns1, func() (err error) {
		cfg := tap.NewConfig("vnA", 1)
		cfg.VnetHdrSize = vnethdr.HdrLen
		cfg.Offloads = tap.OffloadCsum | tap.OffloadTSO4 | tap.OffloadTSO6 | tap.OffloadTSOECN | tap.OffloadUSO
		cfg.Up = true
		c.a, err = tap.Create(cfg)
		return err
	})
	t.Cleanup(func() { c.a.Close() })
	testenv.Do(t, c.ns2, func() (err error) {
		cfg := tap.NewConfig("vnB", 1)
		cfg.Up = true
		c.b, err = tap.Create(cfg)
		return err
	})
	t.Cleanup(func() { c.b.Close() })
	addAddrs(t, c.ns1, "vnA", "10.9.0.1/24", "fd00:9::1/64")
	addAddrs(t, c.ns2, "vnB", "10.9.0.2/24", "fd00:9::2/64")
	c.wg.Add(2)
	go c.aToB()
	go c.bToA()
	t.Cleanup(func() {
		c.a.Close()
		c.b.Close()
		c.wg.Wait()
	})
	return c
}

func closed(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, tap.ErrDeviceGone) || errors.Is(err, io.EOF)
}

func (c *cable) aToB() {
	defer c.wg.Done()
	qa, qb := c.a.Queues()[0], c.b.Queues()[0]
	bufs, sizes := make([][]byte, 64), make([]int, 64)
	for i := range bufs {
		bufs[i] = make([]byte, vnethdr.HdrLen+65536)
	}
	out, osz := make([][]byte, 128), make([]int, 128)
	for i := range out {
		out[i] = make([]byte, 1514+8)
	}
	frames := make([][]byte, 0, 128)
	for {
		n, err := qa.ReadBatch(bufs, sizes, 0)
		for i := 0; i < n; i++ {
			hdr, err := vnethdr.Decode(bufs[i])
			if err != nil {
				c.fail(err)
				return
			}
			frame := bufs[i][vnethdr.HdrLen:sizes[i]]
			p, err := vnethdr.Parse(hdr, frame, vnethdr.Options{})
			if err != nil {
				c.fail(fmt.Errorf("kernel super-packet refused (%v): %w", hdr, err))
				return
			}
			k, err := p.Segment(out, osz)
			if err != nil {
				c.fail(err)
				return
			}
			if k > 1 {
				c.superPackets.Add(1)
			}
			c.segments.Add(int64(k))
			frames = frames[:0]
			for j := 0; j < k; j++ {
				frames = append(frames, out[j][:osz[j]])
			}
			if _, err := qb.WriteBatch(frames, 0); err != nil {
				if !closed(err) {
					c.fail(fmt.Errorf("write segments to tap B: %w", err))
				}
				return
			}
		}
		if err != nil {
			if !closed(err) {
				c.fail(err)
			}
			return
		}
	}
}

func (c *cable) bToA() {
	defer c.wg.Done()
	qa, qb := c.a.Queues()[0], c.b.Queues()[0]
	bufs, sizes := make([][]byte, 64), make([]int, 64)
	for i := range bufs {
		bufs[i] = make([]byte, 65536)
	}
	pkts := make([][]byte, 0, 64)
	co := vnethdr.NewCoalescer(vnethdr.CoalesceOptions{UDP: true})
	var hb [vnethdr.HdrLen]byte
	wbuf := make([]byte, 70000)
	for {
		n, err := qb.ReadBatch(bufs, sizes, 0)
		pkts = pkts[:0]
		for i := 0; i < n; i++ {
			pkts = append(pkts, bufs[i][:sizes[i]])
		}
		m := co.Coalesce(pkts)
		for i := 0; i < m; i++ {
			hdr, _ := co.Out(i)
			if hdr.GSOType != vnethdr.GSONone {
				c.merged.Add(1)
				if hdr.GSOType == vnethdr.GSOUDPL4 {
					c.mergedUDP.Add(1)
				}
			}
			hdr.Encode(hb[:])
			l, err := co.CopyOut(i, wbuf)
			if err != nil {
				c.fail(err)
				return
			}
			if _, err := qa.WriteHdr(hb[:], wbuf[:l]); err != nil {
				if !closed(err) {
					c.fail(fmt.Errorf("kernel refused coalesced packet (%v): %w", hdr, err))
				}
				return
			}
		}
		if err != nil {
			if !closed(err) {
				c.fail(err)
			}
			return
		}
	}
}

// noDrops fails if either namespace's kernel counted a bad packet.
func (c *cable) noDrops(t *testing.T) {
	t.Helper()
	for i, ns := range []netns.Handle{c.ns1, c.ns2} {
		testenv.NoSNMPErrors(t, ns, fmt.Sprintf("ns%d", i+1))
	}
}

func randomData(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestKernelOracleTCP(t *testing.T) {
	for _, fam := range []struct{ name, srv, cli string }{
		{"ipv4", "10.9.0.2", "10.9.0.1"},
		{"ipv6", "fd00:9::2", "fd00:9::1"},
	} {
		t.Run(fam.name, func(t *testing.T) {
			c := newCable(t)
			var ln net.Listener
			testenv.Do(t, c.ns2, func() (err error) {
				ln, err = net.Listen("tcp", net.JoinHostPort(fam.srv, "5201"))
				return err
			})
			defer ln.Close()
			var cli net.Conn
			testenv.Do(t, c.ns1, func() (err error) {
				d := net.Dialer{Timeout: 10 * time.Second}
				cli, err = d.Dial("tcp", net.JoinHostPort(fam.srv, "5201"))
				return err
			})
			defer cli.Close()
			ln.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
			srv, err := ln.Accept()
			if err != nil {
				c.check(t)
				t.Fatal(err)
			}
			defer srv.Close()
			deadline := time.Now().Add(60 * time.Second)
			cli.SetDeadline(deadline)
			srv.SetDeadline(deadline)

			// ns1 -> ns2 through Segment, then ns2 -> ns1 through Coalesce.
			for dir, pair := range [][2]net.Conn{{cli, srv}, {srv, cli}} {
				data := randomData(t, 16<<20)
				errc := make(chan error, 1)
				go func() {
					_, err := pair[0].Write(data)
					errc <- err
				}()
				got := make([]byte, len(data))
				if _, err := io.ReadFull(pair[1], got); err != nil {
					c.check(t)
					t.Fatalf("direction %d: read: %v", dir, err)
				}
				if err := <-errc; err != nil {
					t.Fatalf("direction %d: write: %v", dir, err)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("direction %d: data differs", dir)
				}
			}
			c.check(t)
			c.noDrops(t)
			t.Logf("A->B: %d super-packets, %d segments; B->A: %d merged packets",
				c.superPackets.Load(), c.segments.Load(), c.merged.Load())
			if c.superPackets.Load() == 0 {
				t.Fatal("the kernel sent no TSO super-packets: segmentation was not exercised")
			}
			if c.merged.Load() == 0 {
				t.Fatal("no packets were coalesced: coalescing was not exercised")
			}
		})
	}
}

func TestKernelOracleUDP(t *testing.T) {
	for _, fam := range []struct {
		name, a1, a2 string
		mss          int
	}{
		{"ipv4", "10.9.0.1", "10.9.0.2", 1472},
		{"ipv6", "fd00:9::1", "fd00:9::2", 1452},
	} {
		t.Run(fam.name, func(t *testing.T) {
			c := newCable(t)
			var s1, s2 *net.UDPConn
			testenv.Do(t, c.ns1, func() (err error) {
				s1, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(fam.a1), Port: 4000})
				return err
			})
			defer s1.Close()
			testenv.Do(t, c.ns2, func() (err error) {
				s2, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(fam.a2), Port: 4000})
				return err
			})
			defer s2.Close()
			for _, s := range []*net.UDPConn{s1, s2} {
				s.SetReadBuffer(8 << 20)
				rc, _ := s.SyscallConn()
				var serr error
				rc.Control(func(fd uintptr) {
					serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, fam.mss)
				})
				if serr != nil {
					t.Fatalf("UDP_SEGMENT: %v", serr)
				}
				s.SetDeadline(time.Now().Add(30 * time.Second))
			}
			// Each write is one 44-segment GSO send; the receiver must get
			// exactly those datagrams before the next one goes.
			for dir, pair := range [][2]*net.UDPConn{{s1, s2}, {s2, s1}} {
				to := pair[1].LocalAddr().(*net.UDPAddr)
				for round := 0; round < 10; round++ {
					data := randomData(t, 44*fam.mss-round*7)
					if _, err := pair[0].WriteToUDP(data, to); err != nil {
						t.Fatalf("direction %d: send: %v", dir, err)
					}
					got := make([]byte, 0, len(data))
					buf := make([]byte, 65536)
					for len(got) < len(data) {
						n, _, err := pair[1].ReadFromUDP(buf)
						if err != nil {
							c.check(t)
							t.Fatalf("direction %d round %d: after %d of %d bytes: %v", dir, round, len(got), len(data), err)
						}
						if n > fam.mss {
							t.Fatalf("direction %d: datagram of %d bytes above gso_size %d", dir, n, fam.mss)
						}
						got = append(got, buf[:n]...)
					}
					if !bytes.Equal(got, data) {
						t.Fatalf("direction %d round %d: data differs", dir, round)
					}
				}
			}
			c.check(t)
			c.noDrops(t)
			t.Logf("A->B: %d super-packets, %d segments; B->A: %d merged UDP packets",
				c.superPackets.Load(), c.segments.Load(), c.mergedUDP.Load())
			if c.superPackets.Load() == 0 {
				t.Fatal("the kernel sent no USO super-packets")
			}
			if c.mergedUDP.Load() == 0 {
				t.Fatal("no UDP datagrams were coalesced")
			}
		})
	}
}
