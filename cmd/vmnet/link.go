package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/vmnet/vmnet/internal/link"
	"github.com/vmnet/vmnet/vmconfig"
)

func linkCommand() *command {
	return &command{name: "link", args: "A B [--pcap FILE] [--stats INTERVAL]",
		summary: "forward every frame between two endpoints until interrupted", run: runLink}
}

func runLink(e *env, args []string) error {
	fs := e.flags("vmnet link", "A B [--pcap FILE] [--stats INTERVAL]\n\n"+
		"Endpoints: tap:NAME[,queues=N][,vnet_hdr=on|off][,netns=NS]  packet:IFNAME[,netns=NS]\n"+
		"           udp:LOCALADDR:PORT,remote=ADDR:PORT[,key=FILE] (IPv6 in brackets)\n"+
		"A udp tunnel without key is unauthenticated cleartext; key=FILE (32 random bytes, mode 0600,\n"+
		"the same at both ends) authenticates and encrypts it.\n"+
		"Super-frames pass unchanged where the far side takes them and are segmented where it does not.\n")
	pcap := fs.String("pcap", "", "write a pcap of both directions to `FILE` (frames as on a wire)")
	stats := fs.Duration("stats", 0, "print the counters every `INTERVAL` (default: only at the end)")
	cpu := fs.String("cpuprofile", "", "write a CPU profile to `FILE`")
	ready := fs.String("ready", "", "create `FILE` once both endpoints are open (for scripts)")
	pos, err := fs.parse(args, 2, 2)
	if err != nil {
		return err
	}
	var eps [2]vmconfig.Endpoint
	for i, s := range pos {
		if eps[i], err = vmconfig.ParseEndpoint(s); err != nil {
			return usagef("%v", err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	l, err := link.Dial(ctx, eps[0], eps[1], link.OpenOptions{}, link.Options{PCAP: *pcap})
	if err != nil {
		return err
	}
	defer l.Close()
	if *cpu != "" {
		f, err := os.Create(*cpu)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if *ready != "" {
		if err := os.WriteFile(*ready, nil, 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.stderr, "vmnet: link %s up; Ctrl-C stops it\n", l)
	if *stats > 0 {
		go func() {
			t := time.NewTicker(*stats)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					fmt.Fprintln(e.stdout, l.Stats())
				}
			}
		}()
	}
	start := time.Now()
	err = l.Run(ctx)
	fmt.Fprintln(e.stdout, l.Stats())
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		fmt.Fprintf(e.stdout, "cpu: user %.2fs system %.2fs in %.1fs\n", time.Duration(ru.Utime.Nano()).Seconds(),
			time.Duration(ru.Stime.Nano()).Seconds(), time.Since(start).Seconds())
	}
	return err
}
