package main

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmnet/vmnet/internal/link"
	"github.com/vmnet/vmnet/vmconfig"
)

type linkFlags struct {
	pcap, cpu, ready string
	stats            time.Duration
	out              output
}

func linkCommand(e *env) *cobra.Command {
	var f linkFlags
	c := root(&cobra.Command{
		Use:   "link A B",
		Short: "forward every frame between two endpoints until interrupted",
		Long: "Forwards every frame between the endpoints A and B in userspace until Ctrl-C, then prints\n" +
			"the counters.\n\n" +
			"Endpoints: tap:NAME[,queues=N][,vnet_hdr=on|off][,netns=NS]  packet:IFNAME[,netns=NS]\n" +
			"           udp:LOCALADDR:PORT,remote=ADDR:PORT[,key=FILE] (IPv6 in brackets)\n" +
			"A udp tunnel without key is unauthenticated cleartext; key=FILE (32 random bytes, mode 0600,\n" +
			"the same at both ends) authenticates and encrypts it.\n" +
			"Super-frames pass unchanged where the far side takes them and are segmented where it does not.",
		Example: `  vmnet link tap:t0 packet:eth1
  vmnet link tap:t0,queues=4 tap:t1,netns=other --stats 1s
  vmnet link tap:t0 tap:t1 --stats 5s -o json    # one JSON object per line per interval
  vmnet link tap:t0 udp:0.0.0.0:4789,remote=192.0.2.7:4789,key=/etc/vmnet/link.key --pcap /tmp/t0.pcap`,
		Args: nargs(2, 2),
		RunE: func(_ *cobra.Command, args []string) error { return runLink(e, args, f) },
	})
	fs := c.Flags()
	fs.StringVar(&f.pcap, "pcap", "", "write a pcap of both directions to `FILE` (frames as on a wire)")
	fs.DurationVar(&f.stats, "stats", 0, "print the counters every `INTERVAL` (default: only at the end)")
	fs.StringVar(&f.cpu, "cpuprofile", "", "internal: write a CPU profile to `FILE`")
	hide(fs, "cpuprofile")
	fs.StringVar(&f.ready, "ready", "", "create `FILE` once both endpoints are open (for scripts)")
	f.out.register(fs, link.SampleFormats...) // json: one object per line per interval, and a final one
	f.out.complete(c)
	return c
}

func runLink(e *env, pos []string, f linkFlags) (err error) {
	if f.stats < 0 {
		return usagef("vmnet link: --stats %v: want a positive interval such as 1s", f.stats)
	}
	var eps [2]vmconfig.Endpoint
	for i, s := range pos {
		if eps[i], err = vmconfig.ParseEndpoint(s); err != nil {
			return usagef("%v", err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	l, err := link.Dial(ctx, eps[0], eps[1], link.OpenOptions{}, link.Options{PCAP: f.pcap})
	if err != nil {
		return err
	}
	defer l.Close()
	if f.cpu != "" {
		f, err := os.Create(f.cpu)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if f.ready != "" {
		if err := os.WriteFile(f.ready, nil, 0o644); err != nil {
			return err
		}
	}
	e.logf("link %s up; Ctrl-C stops it", l)
	start := time.Now()
	if f.stats > 0 {
		go func() {
			t := time.NewTicker(f.stats)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					link.WriteSample(e.stdout, f.out.format, l.Sample(start, false))
				}
			}
		}()
	}
	err = l.Run(ctx)
	return errors.Join(err, link.WriteSample(e.stdout, f.out.format, l.Sample(start, true)))
}
