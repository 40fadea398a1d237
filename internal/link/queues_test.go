package link

import (
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/vmnet/vmnet/internal/testenv"
)

// TestMultiQueueLink: a link between two 2-queue taps reads from every
// queue of both. The kernel steers each flow to one queue by its hash
// (seeded at boot), so UDP flows with new ports go both ways in rounds
// until each queue of each tap has carried frames; every datagram must
// come back echoed, and the link's per-queue counters must show every
// queue in use.
func TestMultiQueueLink(t *testing.T) {
	w := newWorld(t, true)
	l, err := New(w.open("tap:tA,queues=2"), w.open("tap:tB,queues=2"), Options{Datapath: DatapathUserspace})
	w.must(err)
	w.plug("tA", "brA")
	w.plug("tB", "brB")
	w.run(l)
	if n := len(l.a.queues) + len(l.b.queues); n != 4 {
		t.Fatalf("the link reads %d queues, want 2 per tap", n)
	}
	var srv net.PacketConn
	testenv.Do(t, w.B, func() (err error) {
		srv, err = net.ListenPacket("udp4", w.ipB.String()+":5004")
		return err
	})
	defer srv.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			srv.WriteTo(buf[:n], from)
		}
	}()
	to := &net.UDPAddr{IP: w.ipB, Port: 5004}
	busy := func(q []uint64) bool { return len(q) == 2 && !slices.Contains(q, 0) }
	// 8 flows leave one of two queues empty with probability 2^-7; 30
	// rounds make a false failure about 1e-63 likely.
	const perRound, rounds = 8, 30
	flows := 0
	var s Stats
	for r := 0; r < rounds; r++ {
		for range perRound {
			var c net.PacketConn
			testenv.Do(t, w.A, func() (err error) {
				c, err = net.ListenPacket("udp4", w.ipA.String()+":0") // a new port: a new flow
				return err
			})
			msg := []byte(fmt.Sprintf("flow %d", flows))
			buf := make([]byte, 64)
			ok := false
			for try := 0; try < 5 && !ok; try++ {
				c.WriteTo(msg, to)
				c.SetReadDeadline(time.Now().Add(time.Second))
				n, _, err := c.ReadFrom(buf)
				ok = err == nil && string(buf[:n]) == string(msg)
			}
			c.Close()
			if !ok {
				t.Fatalf("flow %d: no echo through the link in 5 tries", flows)
			}
			flows++
		}
		if s = l.Stats(); busy(s.AtoB.Queues) && busy(s.BtoA.Queues) {
			break
		}
	}
	t.Logf("%d flows; frames read per queue: tA %v, tB %v", flows, s.AtoB.Queues, s.BtoA.Queues)
	if !busy(s.AtoB.Queues) || !busy(s.BtoA.Queues) {
		t.Errorf("after %d flows, frames read per queue: tA %v, tB %v; want every queue carrying traffic", flows, s.AtoB.Queues, s.BtoA.Queues)
	}
}
