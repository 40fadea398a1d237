package link

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/vmnet/vmnet/internal/testenv"
	"github.com/vmnet/vmnet/vmconfig"
)

// TestUDPRuns sends datagram sequences through two tunnel sockets on
// loopback (runs of equal sizes go as UDP_SEGMENT, arrive as UDP_GRO and
// are split) and checks that every datagram arrives whole and in order.
func TestUDPRuns(t *testing.T) {
	ns := testenv.NetNS(t)
	var a, b *Endpoint
	testenv.Do(t, ns, func() error {
		if err := exec1("ip", "link", "set", "lo", "up"); err != nil {
			return err
		}
		ea, _ := vmconfig.ParseEndpoint("udp:127.0.0.1:7001,remote=127.0.0.1:7002")
		eb, _ := vmconfig.ParseEndpoint("udp:127.0.0.1:7002,remote=127.0.0.1:7001")
		var err error
		if a, err = Open(context.Background(), ea, OpenOptions{}); err != nil {
			return err
		}
		b, err = Open(context.Background(), eb, OpenOptions{})
		return err
	})
	defer a.Close()
	defer b.Close()
	ua, ub := a.queues[0].(*udpConn), b.queues[0].(*udpConn)
	t.Logf("UDP_SEGMENT %v, UDP_GRO %v, path MTU %d", ua.gso, ub.gro, ua.mtu)
	rbufs := make([][]byte, 8)
	for i := range rbufs {
		rbufs[i] = make([]byte, Headroom+MaxFrame)
	}
	sizes := make([]int, len(rbufs))
	seq := 0
	for _, pattern := range [][]int{
		{1524, 1524, 1524, 500},
		rep(1524, 28),
		rep(1524, 42),
		rep(1524, 70),
		{100, 1524, 1524, 1524, 200, 200, 65000, 30, 30, 30, 31},
		append(rep(1000, 20), rep(900, 20)...),
	} {
		var out [][]byte
		for _, n := range pattern {
			d := make([]byte, Headroom+n)
			for j := Headroom; j < len(d); j++ {
				d[j] = byte(seq + j)
			}
			seq++
			out = append(out, d)
		}
		if n, err := ua.write(out, Headroom); err != nil || n != len(out) {
			t.Fatalf("pattern %v: wrote %d of %d: %v", pattern, n, len(out), err)
		}
		ub.setDeadline(time.Now().Add(2 * time.Second))
		for i := 0; i < len(out); {
			n, err := ub.read(rbufs, Headroom, sizes)
			for j := 0; j < n; j++ {
				want := out[i+j][Headroom:]
				if got := rbufs[j][Headroom : Headroom+sizes[j]]; !bytes.Equal(got, want) {
					t.Fatalf("pattern %v: datagram %d: got %d bytes, want %d (%s)", pattern, i+j, sizes[j], len(want), diff(got, want))
				}
			}
			i += n
			if err != nil {
				t.Fatalf("pattern %v: read after %d datagrams: %v", pattern, i, err)
			}
		}
	}
}

func rep(n, k int) []int {
	r := make([]int, k)
	for i := range r {
		r[i] = n
	}
	return r
}

func diff(a, b []byte) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return fmt.Sprintf("first difference at byte %d", i)
		}
	}
	return "one is a prefix of the other"
}
