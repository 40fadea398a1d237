package tap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/vmnet/vmnet/internal/testenv"
)

// TestWriteBatchURing writes batches through a queue's io_uring into a
// tap bridged to another and lets the kernel judge: every frame arrives,
// whole and in the order written (the ring runs more than its 64 entries
// in several linked chains), a steady stream allocates nothing, and a
// closed queue refuses a ring.
func TestWriteBatchURing(t *testing.T) {
	testenv.RequireRoot(t)
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		a := mustCreate(t, NewConfig("tapa", 1))
		b := mustCreate(t, NewConfig("tapb", 1))
		if err := bridgeTaps(a, b); err != nil {
			return err
		}
		q := a.Queues()[0]
		if err := q.EnableURing(); err != nil {
			return err
		}
		if !q.URing() {
			return errors.New("URing() false after EnableURing")
		}
		const n = 300
		out := make([][]byte, n)
		for i := range out {
			out[i] = markedFrame(uint32(i), 60+i*4)
		}
		// Offset 2: the frames start 2 bytes into each buffer.
		bufs := make([][]byte, n)
		for i, f := range out {
			bufs[i] = append([]byte{0xee, 0xee}, f...)
		}
		if w, err := q.WriteBatch(bufs, 2); err != nil || w != n {
			return fmt.Errorf("WriteBatch through io_uring: %d of %d, %v", w, n, err)
		}
		in := make([][]byte, 64)
		for i := range in {
			in[i] = make([]byte, 2048)
		}
		sizes := make([]int, len(in))
		r := b.Queues()[0]
		r.SetReadDeadline(time.Now().Add(5 * time.Second))
		next := 0
		for next < n {
			k, err := r.ReadBatch(in, sizes, 0)
			if err != nil {
				return fmt.Errorf("tapb: %d of %d frames arrived: %w", next, n, err)
			}
			for j := 0; j < k; j++ {
				f := in[j][:sizes[j]]
				if !isMarked(f) {
					continue
				}
				if id := binary.BigEndian.Uint32(f[14:]); id != uint32(next) || len(f) != len(out[next]) {
					return fmt.Errorf("tapb: frame %d (%d bytes) arrived where frame %d (%d bytes) was due: out of order or cut", id, len(f), next, len(out[next]))
				}
				next++
			}
		}
		if q.ringUsed.Load() == 0 {
			return errors.New("WriteBatch of 300 frames did not go through the ring")
		}
		if !q.URing() {
			return errors.New("the ring was dropped after a batch without errors")
		}
		batch := bufs[:64]
		if al := testing.AllocsPerRun(50, func() {
			if _, err := q.WriteBatch(batch, 2); err != nil {
				t.Error(err)
			}
		}); al != 0 {
			return fmt.Errorf("WriteBatch through io_uring: %.1f allocations per batch", al)
		}
		if err := q.Close(); err != nil {
			return err
		}
		if err := q.EnableURing(); !errors.Is(err, os.ErrClosed) {
			return fmt.Errorf("EnableURing on a closed queue: %v, want os.ErrClosed", err)
		}
		if _, err := q.WriteBatch(batch, 2); !errors.Is(err, os.ErrClosed) {
			return fmt.Errorf("WriteBatch on a closed queue: %v, want os.ErrClosed", err)
		}
		return nil
	})
}
