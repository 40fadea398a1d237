package link

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/vmnet/vmnet/vnethdr"
)

// snapLen is the pcap snap length: whole frames, also jumbo ones.
const snapLen = 262144

// capture writes both directions of a link into one pcap file.
type capture struct {
	path string
	mu   sync.Mutex
	f    *os.File
	bw   *bufio.Writer
	w    *pcapgo.Writer
	err  error // first write error; later writes are skipped
}

func newCapture(path string) (*capture, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	c := &capture{path: path, f: f, bw: bufio.NewWriterSize(f, 1<<20)}
	c.w = pcapgo.NewWriterNanos(c.bw)
	if err := c.w.WriteFileHeader(snapLen, layers.LinkTypeEthernet); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("capture %s: %w", path, err)
	}
	return c, nil
}

// captureScratch is one pump's room for segmenting frames for the
// capture: segment headers and one frame to glue a header to its payload.
type captureScratch struct {
	heads    [][]byte
	headLens []int
	payloads [][]byte
	frame    []byte
}

const captureHead = 512

func newCaptureScratch() *captureScratch {
	const n = 2048
	back := make([]byte, n*captureHead)
	s := &captureScratch{heads: make([][]byte, n), headLens: make([]int, n), payloads: make([][]byte, n),
		frame: make([]byte, MaxFrame)}
	for i := range s.heads {
		s.heads[i] = back[i*captureHead : (i+1)*captureHead : (i+1)*captureHead]
	}
	return s
}

// write records frame as the wire would carry it: a super-frame as its
// segments, a partial checksum completed. Frames vnethdr cannot split
// that way (UFO) are recorded as they are.
func (c *capture) write(s *captureScratch, hd vnethdr.Hdr, frame []byte) {
	ci := gopacket.CaptureInfo{Timestamp: time.Now()}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	if hd.GSOType == vnethdr.GSONone && hd.Flags&vnethdr.FlagNeedsCsum == 0 {
		c.record(ci, frame)
		return
	}
	pkt, err := vnethdr.Parse(hd, frame, vnethdr.Options{})
	if err != nil {
		c.record(ci, frame)
		return
	}
	n, err := pkt.SegmentIov(s.heads, s.headLens, s.payloads)
	if err != nil {
		c.record(ci, frame)
		return
	}
	for i := 0; i < n; i++ {
		m := copy(s.frame, s.heads[i][:s.headLens[i]])
		m += copy(s.frame[m:], s.payloads[i])
		c.record(ci, s.frame[:m])
	}
}

func (c *capture) record(ci gopacket.CaptureInfo, b []byte) {
	ci.CaptureLength = min(len(b), snapLen)
	ci.Length = len(b)
	if err := c.w.WritePacket(ci, b[:ci.CaptureLength]); err != nil {
		c.err = fmt.Errorf("capture %s: %w", c.path, err)
	}
}

func (c *capture) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		if err := c.bw.Flush(); err != nil {
			c.err = fmt.Errorf("capture %s: %w", c.path, err)
		}
	}
	return c.err
}

func (c *capture) close() error {
	ferr := c.flush()
	if err := c.f.Close(); err != nil && ferr == nil {
		ferr = fmt.Errorf("capture %s: %w", c.path, err)
	}
	if errors.Is(ferr, os.ErrClosed) {
		return nil
	}
	return ferr
}
