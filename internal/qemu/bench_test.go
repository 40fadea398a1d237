package qemu

import (
	"context"
	"github.com/vmnet/vmnet/images/guest"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkBootToReady measures Start to VMNET-READY of the test guest
// (2 vCPUs, one 2-queue tap) and the shutdown that follows it.
// Run with -benchtime=3x: every iteration boots a guest.
func BenchmarkBootToReady(b *testing.B) {
	for _, machine := range []string{MachineQ35, MachineMicroVM} {
		b.Run(machine, func(b *testing.B) {
			img := guestImage(b)
			tp := newLab(b).tap(b, "bb0", 2)
			app, err := guest.Args{}.Append("")
			if err != nil {
				b.Fatal(err)
			}
			dir := b.TempDir()
			s := Spec{
				Name: "bench", Machine: machine, CPUs: 2, MemoryMiB: 512,
				Kernel: img.Kernel, Initrd: img.Initrd, Append: app,
				RunDir: filepath.Join(dir, "run"), PowerdownGrace: time.Millisecond,
				NICs: []NIC{{ID: "n0", Queues: tp.Files()}},
			}
			var ready time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				t0 := time.Now()
				vm, err := Start(ctx, s)
				if err != nil {
					b.Fatal(err)
				}
				if err := vm.WaitReady(ctx); err != nil {
					b.Fatal(err)
				}
				ready += time.Since(t0)
				b.StopTimer()
				vm.Stop(ctx)
				cancel()
				b.StartTimer()
			}
			b.ReportMetric(float64(ready.Milliseconds())/float64(b.N), "ms-to-ready/op")
		})
	}
}
