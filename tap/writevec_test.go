package tap

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/vmnet/vmnet/internal/testenv"
)

// TestWriteVec writes frames in pieces (with and without a vnet header)
// into a tap bridged to another; the frame read on the other side must be
// the pieces' concatenation.
func TestWriteVec(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t)
	for _, hs := range []int{0, 10, 12} {
		t.Run(fmt.Sprintf("vnethdr=%d", hs), func(t *testing.T) {
			t.Parallel()
			ns := newNS(t)
			testenv.Do(t, ns, func() error {
				cfg := NewConfig("tapa", 1)
				cfg.VnetHdrSize = hs
				a := mustCreate(t, cfg)
				b := mustCreate(t, NewConfig("tapb", 1))
				if err := bridgeTaps(a, b); err != nil {
					return err
				}
				q := a.Queues()[0]
				hdr := make([]byte, hs) // all zero: no offload, checksum complete
				for k, cuts := range [][]int{{}, {14}, {14, 34, 54}, {1, 2, 3, 500, 501}} {
					want := markedFrame(uint32(k), 1000)
					var pieces [][]byte
					last := 0
					for _, c := range cuts {
						pieces = append(pieces, want[last:c])
						last = c
					}
					pieces = append(pieces, nil, want[last:]) // an empty piece is skipped
					n, err := q.WriteVec(hdr, pieces)
					if err != nil || n != len(want) {
						return fmt.Errorf("WriteVec in %d pieces: %d, %v", len(pieces), n, err)
					}
					got, err := readMatch(b.Queues()[0], arrive, isMarked)
					if err != nil {
						return fmt.Errorf("frame %d in %d pieces never reached tapb: %w", k, len(pieces), err)
					}
					if !bytes.Equal(got, want) {
						return fmt.Errorf("tapb read\n%x\nwant the pieces joined\n%x", got, want)
					}
				}
				if hs > 0 {
					f := markedFrame(99, 1000)
					pieces := [][]byte{f[:14], f[14:100], f[100:]}
					if _, err := q.WriteVec(hdr[:hs-1], pieces); err == nil {
						return fmt.Errorf("WriteVec with a %d-byte header on a tap whose header is %d bytes: no error", hs-1, hs)
					}
				}
				return nil
			})
		})
	}
}

// TestWriteVecAllocs: a steady stream of WriteVec writes, with and
// without a vnet header, allocates nothing. Not parallel:
// testing.AllocsPerRun counts the allocations of every goroutine.
func TestWriteVecAllocs(t *testing.T) {
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		for _, hs := range []int{0, 10, 12} {
			cfg := NewConfig(fmt.Sprintf("tapv%d", hs), 1)
			cfg.VnetHdrSize, cfg.Up = hs, true
			q := mustCreate(t, cfg).Queues()[0]
			hdr := make([]byte, hs)
			f := markedFrame(99, 1000)
			pieces := [][]byte{f[:14], f[14:100], f[100:]}
			if a := testing.AllocsPerRun(100, func() {
				if _, err := q.WriteVec(hdr, pieces); err != nil {
					t.Error(err)
				}
			}); a != 0 {
				return fmt.Errorf("WriteVec, vnet header %d: %.1f allocations per frame", hs, a)
			}
		}
		return nil
	})
}
