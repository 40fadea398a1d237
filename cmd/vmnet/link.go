package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/vmnet/vmnet/internal/lab"
	"github.com/vmnet/vmnet/internal/link"
	"github.com/vmnet/vmnet/vmconfig"
)

type linkFlags struct {
	pcap, cpu, ready string
	datapath         string
	stats            time.Duration
	out              output
	// impair holds the impairment flags by prefix ("", "a-to-b-",
	// "b-to-a-") and lab-file key.
	impair map[string]map[string]*string
}

// impairPrefixes are the impairment flags' prefixes: both directions,
// then each.
var impairPrefixes = []string{"", "a-to-b-", "b-to-a-"}

func (f *linkFlags) registerImpairments(fs *pflag.FlagSet) {
	f.registerImpairmentsFor(fs, impairPrefixes, "both directions")
}

// registerImpairmentsFor registers the impairment flags of prefixes;
// unprefixed ones act in the direction both says.
func (f *linkFlags) registerImpairmentsFor(fs *pflag.FlagSet, prefixes []string, both string) {
	f.impair = map[string]map[string]*string{}
	for _, p := range prefixes {
		f.impair[p] = map[string]*string{}
		dir := both
		if p != "" {
			dir = strings.ReplaceAll(strings.TrimSuffix(p, "-"), "-", " ")
		}
		for _, k := range vmconfig.ImpairmentKeys {
			f.impair[p][k] = fs.String(p+strings.ReplaceAll(k, "_", "-"), "", impairHelp[k]+" ("+dir+")")
		}
	}
}

var impairHelp = map[string]string{
	"delay":            "delay every frame by `DURATION` (20ms)",
	"jitter":           "vary the delay by up to ± `DURATION`",
	"loss":             "drop `PERCENT` of frames (5%)",
	"loss_correlation": "correlate a loss with the previous one by `PERCENT` (netem's)",
	"duplicate":        "send `PERCENT` of frames twice",
	"reorder":          "send `PERCENT` of frames at once, ahead of delayed ones",
	"corrupt":          "flip one bit in `PERCENT` of frames",
	"rate":             "limit to `RATE` (100mbit, 1gbit)",
	"burst":            "let `SIZE` through at line speed before the rate holds (32kb)",
}

// impairments builds each direction's impairment from the flags: the
// unprefixed ones for both, the prefixed ones override them key by key.
// A direction without any flag gets none (the plain path).
func (f *linkFlags) impairments() (ab, ba *vmconfig.Impairment, err error) {
	var both vmconfig.Impairment
	set := func(im *vmconfig.Impairment, p string) (bool, error) {
		any := false
		for _, k := range vmconfig.ImpairmentKeys {
			v := *f.impair[p][k]
			if v == "" {
				continue
			}
			any = true
			if err := vmconfig.SetImpairment(im, k, v); err != nil {
				return false, usagef("vmnet link: --%s%s: %v", p, strings.ReplaceAll(k, "_", "-"), err)
			}
		}
		return any, nil
	}
	bothSet, err := set(&both, "")
	if err != nil {
		return nil, nil, err
	}
	var out [2]*vmconfig.Impairment
	for i, p := range impairPrefixes[1:] {
		im := both
		dirSet, err := set(&im, p)
		if err != nil {
			return nil, nil, err
		}
		if !bothSet && !dirSet {
			continue
		}
		if err := im.Check(); err != nil {
			return nil, nil, usagef("vmnet link: %s: %v", strings.ReplaceAll(strings.TrimSuffix(p, "-"), "-", " "), err)
		}
		out[i] = &im
	}
	return out[0], out[1], nil
}

func linkCommand(e *env) *cobra.Command {
	var f linkFlags
	c := root(&cobra.Command{
		Use:   "link A B",
		Short: "forward every frame between two endpoints until interrupted",
		Long: "Forwards every frame between the endpoints A and B until Ctrl-C, then prints the counters.\n" +
			"Between two local interfaces (tap, packet, vxlan) in one namespace, with no --pcap and no impairments,\n" +
			"the kernel forwards (a tc redirect each way: clsact, u32, mirred); otherwise, or with\n" +
			"--datapath userspace, vmnet copies every frame. A kernel without those falls back to userspace.\n\n" +
			"Endpoints: tap:NAME[,queues=N][,vnet_hdr=on|off][,netns=NS]  packet:IFNAME[,netns=NS]\n" +
			"           udp:LOCALADDR:PORT,remote=ADDR:PORT[,key=FILE] (IPv6 in brackets)\n" +
			"           vxlan:REMOTE,vni=N[,port=P][,local=ADDR][,dev=IFACE] (port 4789 by default)\n" +
			"A udp tunnel without key is unauthenticated cleartext; key=FILE (32 random bytes, mode 0600,\n" +
			"the same at both ends) authenticates and encrypts it. A vxlan endpoint is a kernel VXLAN device\n" +
			"the link creates (vxN, deleted when the link stops), so the kernel carries the tunnel; it is\n" +
			"cleartext too. VXLAN adds 50 bytes (70 over IPv6): a tap the link creates takes the tunnel's\n" +
			"MTU (1450 over a 1500-byte underlay); an existing interface with a larger MTU is refused, and\n" +
			"the error says which MTU to change.\n" +
			"Super-frames pass unchanged where the far side takes them and are segmented where it does not.\n\n" +
			"Impairments (--delay, --jitter, --loss, --loss-correlation, --duplicate, --reorder, --corrupt,\n" +
			"--rate, --burst) mean what tc-netem's mean and apply to both directions; --a-to-b-KEY and\n" +
			"--b-to-a-KEY set one direction, overriding the former key by key. A super-frame is impaired\n" +
			"as a unit, as netem does with an unsegmented packet.",
		Example: `  vmnet link tap:t0 packet:eth1
  vmnet link tap:t0,queues=4 tap:t1,netns=other --stats 1s
  vmnet link tap:t0 tap:t1 --stats 5s -o json    # one JSON object per line per interval
  vmnet link tap:t0 tap:t1 --datapath userspace  # every frame through vmnet, not a kernel redirect
  vmnet link tap:t0 tap:t1 --delay 20ms --jitter 5ms --loss 5% --rate 100mbit
  vmnet link tap:t0 tap:t1 --a-to-b-loss 20% --b-to-a-delay 40ms   # one direction each
  vmnet link tap:t0 udp:0.0.0.0:4789,remote=192.0.2.7:4789,key=/etc/vmnet/link.key --pcap /tmp/t0.pcap
  vmnet link tap:t0 vxlan:192.0.2.7,vni=42   # the other host: vmnet link vxlan:192.0.2.1,vni=42 tap:t1`,
		Args: nargs(2, 2),
		RunE: func(_ *cobra.Command, args []string) error { return runLink(e, args, f) },
	})
	fs := c.Flags()
	fs.StringVar(&f.pcap, "pcap", "", "write a pcap of both directions to `FILE` (frames as on a wire)")
	fs.DurationVar(&f.stats, "stats", 0, "print the counters every `INTERVAL` (default: only at the end)")
	fs.StringVar(&f.cpu, "cpuprofile", "", "internal: write a CPU profile to `FILE`")
	hide(fs, "cpuprofile")
	fs.StringVar(&f.ready, "ready", "", "create `FILE` once both endpoints are open (for scripts)")
	fs.StringVar(&f.datapath, "datapath", link.DatapathAuto, "`auto`: the kernel forwards between local interfaces when nothing needs userspace; userspace: always vmnet")
	f.registerImpairments(fs)
	f.out.register(c, link.SampleFormats...) // json: one object per line per interval, and a final one
	c.AddCommand(linkSetCommand(e))
	return c
}

func runLink(e *env, pos []string, f linkFlags) (err error) {
	if f.stats < 0 {
		return usagef("vmnet link: --stats %v: want a positive interval such as 1s", f.stats)
	}
	if !slices.Contains(vmconfig.Datapaths, f.datapath) {
		return usagef("vmnet link: --datapath %q: want %s", f.datapath, strings.Join(vmconfig.Datapaths, " or "))
	}
	var eps [2]vmconfig.Endpoint
	for i, s := range pos {
		if eps[i], err = vmconfig.ParseEndpoint(s); err != nil {
			return usagef("%v", err)
		}
	}
	ab, ba, err := f.impairments()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	l, err := link.Dial(ctx, eps[0], eps[1], link.OpenOptions{}, link.Options{PCAP: f.pcap, AtoB: ab, BtoA: ba,
		Datapath: f.datapath, Logf: e.logf})
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

func linkSetCommand(e *env) *cobra.Command {
	var f linkFlags
	c := root(&cobra.Command{
		Use:   "set LAB LINK [--delay D] [--loss P%] [--a-to-b-rate R] ...",
		Short: "change the impairments of a running lab's link",
		Long: "Changes the impairment keys given on the running [[link]] number LINK (from 0, in the order of\n" +
			"the lab file); the keys not given stay. A link the kernel forwards moves to userspace while it has\n" +
			"impairments, and back when all are zero. On a link that runs in userspace only (udp, pcap,\n" +
			"datapath = \"userspace\"), a direction the lab file gave no impairment runs the plain path and\n" +
			"cannot be changed: give it one (delay = \"0\" costs nothing) to change it later.",
		Example: `  vmnet link set demo 0 --loss 1%
  vmnet link set demo 0 --a-to-b-delay 50ms --b-to-a-rate 10mbit
  vmnet link set demo 1 --loss 0% --delay 0   # back to a clean wire`,
		Args:              nargs(2, 2),
		RunE:              func(_ *cobra.Command, args []string) error { return linkSet(e, args, &f) },
		ValidArgsFunction: e.completeLabs,
	})
	f.registerImpairments(c.Flags())
	return c
}

// changedKeys collects the impairment flags given, by direction ("" for
// both, a_to_b, b_to_a) and lab-file key, checking each value.
func (f *linkFlags) changedKeys(verb string) (map[string]map[string]string, error) {
	keys := map[string]map[string]string{}
	for p, flags := range f.impair {
		dir := strings.ReplaceAll(strings.TrimSuffix(p, "-"), "-", "_")
		for _, k := range vmconfig.ImpairmentKeys {
			v := *flags[k]
			if v == "" {
				continue
			}
			var im vmconfig.Impairment
			if err := vmconfig.SetImpairment(&im, k, v); err != nil {
				return nil, usagef("vmnet %s: --%s%s: %v", verb, p, strings.ReplaceAll(k, "_", "-"), err)
			}
			if keys[dir] == nil {
				keys[dir] = map[string]string{}
			}
			keys[dir][k] = v
		}
	}
	return keys, nil
}

func linkSet(e *env, pos []string, f *linkFlags) error {
	idx, err := strconv.Atoi(pos[1])
	if err != nil || idx < 0 {
		return usagef("vmnet link set: link %q: want the link's number, from 0 in the order of the lab file", pos[1])
	}
	keys, err := f.changedKeys("link set")
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		return usagef("vmnet link set: nothing to change: give impairments such as --loss 1%% or --a-to-b-delay 20ms")
	}
	_, dir, _, err := e.findLab(pos[0], "link set")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := lab.Call(ctx, dir, lab.Request{Op: "link-set", Link: idx, Impair: keys})
	if err != nil {
		return err
	}
	if idx < len(resp.Links) {
		s := resp.Links[idx]
		for _, d := range []struct {
			from, to, im string
		}{{s.A, s.B, s.AtoB.Impairment}, {s.B, s.A, s.BtoA.Impairment}} {
			if d.im != "" {
				fmt.Fprintf(e.stdout, "link %d %s -> %s: %s\n", idx, d.from, d.to, d.im)
			}
		}
	}
	return nil
}
