package vnethdr

import (
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// threadCPU is the CPU time of the calling thread. The machines these
// benchmarks run on are shared; next to ns/op (wall time, inflated by other
// load) the benchmarks report cpu-ns/op, the time this thread actually ran.
func threadCPU() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_THREAD, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loop runs fn b.N times through b.Loop and reports cpu-ns/op as well.
func loop(b *testing.B, fn func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start := threadCPU()
	for b.Loop() {
		fn()
	}
	b.ReportMetric(float64(threadCPU()-start)/float64(b.N), "cpu-ns/op")
}

// benchSpecs are 64 KB super-packets (65000 payload bytes) as a TSO/USO guest
// sends them, with NEEDS_CSUM and the TCP timestamp option.
var benchSpecs = []struct {
	name    string
	s       spec
	partial bool
}{
	{"tcp4_64k", spec{payload: 65000, mss: 1448, tsOpt: true}, false},
	{"tcp6_64k", spec{v6: true, payload: 65000, mss: 1428, tsOpt: true}, false},
	{"udp4_64k", spec{udp: true, payload: 65000, mss: 1472}, false},
	{"udp6_64k", spec{udp: true, v6: true, payload: 65000, mss: 1452}, false},
	{"tcp4_64k_partialcsum", spec{payload: 65000, mss: 1448, tsOpt: true}, true},
}

func BenchmarkSegment(b *testing.B) {
	for _, bs := range benchSpecs {
		bb := build(b, bs.s)
		opt := Options{PartialCsum: bs.partial}
		p, err := Parse(bb.hdr, bb.frame, opt)
		if err != nil {
			b.Fatal(err)
		}
		out, sizes := segBuffers(p.Segments(), p.MaxSegmentLen())
		b.Run(bs.name, func(b *testing.B) {
			b.SetBytes(int64(len(bb.frame)))
			b.ReportAllocs()
			loop(b, func() {
				p, err := Parse(bb.hdr, bb.frame, opt)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := p.Segment(out, sizes); err != nil {
					b.Fatal(err)
				}
			})
		})
		if bs.partial {
			continue
		}
		heads, hl := segBuffers(p.Segments(), p.HeaderLen())
		pays := make([][]byte, p.Segments())
		b.Run(bs.name+"_zerocopy", func(b *testing.B) {
			b.SetBytes(int64(len(bb.frame)))
			b.ReportAllocs()
			loop(b, func() {
				p, err := Parse(bb.hdr, bb.frame, opt)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := p.SegmentIov(heads, hl, pays); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

func BenchmarkCoalesce(b *testing.B) {
	for _, bc := range []struct {
		name string
		s    spec
	}{
		{"tcp4_45x1448", spec{mss: 1448, tsOpt: true}},
		{"tcp6_45x1428", spec{v6: true, mss: 1428, tsOpt: true}},
	} {
		pkts := stream(b, bc.s, 45, 0)
		total := 0
		for _, p := range pkts {
			total += len(p)
		}
		c := NewCoalescer(CoalesceOptions{})
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(total))
			b.ReportAllocs()
			loop(b, func() {
				if n := c.Coalesce(pkts); n != 1 {
					b.Fatalf("%d outputs", n)
				}
			})
		})
	}
}
