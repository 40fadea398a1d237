// Command linkbench runs one vmnet link between two endpoints until it is
// interrupted: the stand-in for `vmnet link A B` that tests/bench-link.sh
// uses while the CLI verb is not wired, plus a CPU profile switch.
//
//	linkbench [-pcap FILE] [-stats 1s] [-cpuprofile FILE] tap:a tap:b,vnet_hdr=off
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/vmnet/vmnet/internal/link"
	"github.com/vmnet/vmnet/vmconfig"
)

func main() {
	pcap := flag.String("pcap", "", "write a pcap capture of the link to `FILE`")
	stats := flag.Duration("stats", 0, "print counters every `INTERVAL` (0: only at exit)")
	cpu := flag.String("cpuprofile", "", "write a CPU profile to `FILE`")
	ready := flag.String("ready", "", "create `FILE` once both endpoints are open")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] ENDPOINT ENDPOINT\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 2 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*pcap, *stats, *cpu, *ready, flag.Arg(0), flag.Arg(1)); err != nil {
		fmt.Fprintln(os.Stderr, "linkbench:", err)
		os.Exit(1)
	}
}

func run(pcap string, stats time.Duration, cpu, ready, sa, sb string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var eps [2]*link.Endpoint
	for i, s := range []string{sa, sb} {
		ep, err := vmconfig.ParseEndpoint(s)
		if err != nil {
			if i == 1 {
				eps[0].Close()
			}
			return err
		}
		if eps[i], err = link.Open(ctx, ep, link.OpenOptions{}); err != nil {
			if i == 1 {
				eps[0].Close()
			}
			return err
		}
	}
	l, err := link.New(eps[0], eps[1], link.Options{PCAP: pcap})
	if err != nil {
		return err
	}
	defer l.Close()
	if cpu != "" {
		f, err := os.Create(cpu)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if ready != "" {
		if err := os.WriteFile(ready, nil, 0o644); err != nil {
			return err
		}
	}
	if stats > 0 {
		go func() {
			t := time.NewTicker(stats)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					fmt.Println(l.Stats())
				}
			}
		}()
	}
	start := time.Now()
	err = l.Run(ctx)
	fmt.Println(l.Stats())
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		fmt.Printf("cpu: user %.2fs system %.2fs in %.1fs\n", time.Duration(ru.Utime.Nano()).Seconds(),
			time.Duration(ru.Stime.Nano()).Seconds(), time.Since(start).Seconds())
	}
	return err
}
