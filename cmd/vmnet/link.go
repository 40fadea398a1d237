package main

import (
	"context"
	"errors"
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
	return &command{name: "link", args: "A B [--pcap FILE] [--stats INTERVAL] [-o text|json]",
		summary: "forward every frame between two endpoints until interrupted", run: runLink}
}

func runLink(e *env, args []string) error {
	fs := e.flags("vmnet link", "A B [--pcap FILE] [--stats INTERVAL] [-o text|json]\n\n"+
		"Endpoints: tap:NAME[,queues=N][,vnet_hdr=on|off][,netns=NS]  packet:IFNAME[,netns=NS]\n"+
		"           udp:LOCALADDR:PORT,remote=ADDR:PORT[,key=FILE] (IPv6 in brackets)\n"+
		"A udp tunnel without key is unauthenticated cleartext; key=FILE (32 random bytes, mode 0600,\n"+
		"the same at both ends) authenticates and encrypts it.\n"+
		"Super-frames pass unchanged where the far side takes them and are segmented where it does not.\n")
	pcap := fs.String("pcap", "", "write a pcap of both directions to `FILE` (frames as on a wire)")
	stats := fs.Duration("stats", 0, "print the counters every `INTERVAL` (default: only at the end)")
	cpu := fs.String("cpuprofile", "", "write a CPU profile to `FILE`")
	ready := fs.String("ready", "", "create `FILE` once both endpoints are open (for scripts)")
	var o output
	o.register(fs, link.SampleFormats...) // json: one object per line per interval, and a final one
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
	start := time.Now()
	if *stats > 0 {
		go func() {
			t := time.NewTicker(*stats)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					link.WriteSample(e.stdout, o.format, l.Sample(start, false))
				}
			}
		}()
	}
	err = l.Run(ctx)
	return errors.Join(err, link.WriteSample(e.stdout, o.format, l.Sample(start, true)))
}
