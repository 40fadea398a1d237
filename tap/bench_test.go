package tap

import (
	"fmt"
	"testing"
	"time"

	"github.com/vmnet/vmnet/internal/testenv"
)

// benchPair moves b.N frames of size bytes from one tap to another through
// a bridge, batch frames per call (batch 1 uses Write/Read; with a vnet header, WriteHdr/ReadHdr). The kernel's
// bridge forwarding is part of every frame's cost.
func benchPair(b *testing.B, size, batch, vnetHdr int) {
	ns := newNS(b)
	testenv.Do(b, ns, func() error {
		cfg := NewConfig("tapa", 1)
		cfg.VnetHdrSize = vnetHdr
		ta := mustCreate(b, cfg)
		cfg.Name = "tapb"
		tb := mustCreate(b, cfg)
		if err := bridgeTaps(ta, tb); err != nil {
			return err
		}
		out := make([][]byte, batch)
		in := make([][]byte, batch)
		for i := range out {
			out[i] = markedFrame(uint32(i), size)
			in[i] = make([]byte, 2048)
		}
		sizes := make([]int, batch)
		hdr := make([]byte, vnetHdr)
		w, r := ta.Queues()[0], tb.Queues()[0]
		// A lost frame fails the benchmark instead of hanging it.
		r.SetReadDeadline(time.Now().Add(2 * time.Minute))
		b.SetBytes(int64(size))
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i += batch {
			k := min(batch, b.N-i)
			if vnetHdr > 0 {
				// Header kept separate: readv/writev with two iovecs.
				if _, err := w.WriteHdr(hdr, out[0]); err != nil {
					return err
				}
				if _, err := r.ReadHdr(hdr, in[0]); err != nil {
					return err
				}
				continue
			}
			if batch == 1 {
				if _, err := w.Write(out[0]); err != nil {
					return err
				}
				if _, err := r.Read(in[0]); err != nil {
					return err
				}
				continue
			}
			if _, err := w.WriteBatch(out[:k], 0); err != nil {
				return err
			}
			for got := 0; got < k; {
				n, err := r.ReadBatch(in[:k-got], sizes, 0)
				if err != nil {
					return fmt.Errorf("after %d of %d frames: %w", got, k, err)
				}
				got += n
			}
		}
		b.StopTimer()
		return nil
	})
}

func BenchmarkBatch(b *testing.B) {
	for _, size := range []int{60, 1514} {
		for _, batch := range []int{1, 64} {
			b.Run(fmt.Sprintf("size=%d/batch=%d", size, batch), func(b *testing.B) { benchPair(b, size, batch, 0) })
		}
		b.Run(fmt.Sprintf("size=%d/vnethdr=12", size), func(b *testing.B) { benchPair(b, size, 1, 12) })
	}
}

// BenchmarkRefreshVnetHdrSize is what a link pays per batch to notice a
// vnet header size that another holder changed (one TUNGETVNETHDRSZ),
// next to one 1500-byte frame through a bridge (benchPair, batch 1) in
// the same run.
func BenchmarkRefreshVnetHdrSize(b *testing.B) {
	b.Run("refresh", func(b *testing.B) {
		ns := newNS(b)
		testenv.Do(b, ns, func() error {
			cfg := NewConfig("tapa", 1)
			cfg.VnetHdrSize = 12
			q := mustCreate(b, cfg).Queues()[0]
			b.ReportAllocs()
			for b.Loop() {
				if _, err := q.RefreshVnetHdrSize(); err != nil {
					return err
				}
			}
			return nil
		})
	})
	b.Run("frame-1500", func(b *testing.B) { benchPair(b, 1500, 1, 12) })
}
