package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vmnet/vmnet/tap"
)

func featuresCommand(e *env) *cobra.Command {
	var o output
	c := &cobra.Command{
		Use:   "features",
		Short: "what this kernel supports for taps",
		Example: `  vmnet features
  vmnet features -o json`,
		Args: nargs(0, 0),
		RunE: func(*cobra.Command, []string) error { return features(e, o) },
	}
	o.register(c, "table", "json")
	return c
}

func features(e *env, o output) error {
	f, err := tap.Probe()
	if err != nil {
		return err
	}
	if o.format == "json" {
		return writeJSON(e.stdout, f)
	}
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	fmt.Fprintf(e.stdout, "kernel:        %s\n", f.Kernel)
	fmt.Fprintf(e.stdout, "/dev/net/tun:  %s\n", yes(f.DevNetTun))
	fmt.Fprintf(e.stdout, "tun flags:     %s\n", strings.Join(f.Flags, " "))
	fmt.Fprintf(e.stdout, "multi-queue:   %s (up to %d queues)\n", yes(f.MultiQueue), f.MaxQueues)
	fmt.Fprintf(e.stdout, "vnet header:   %s\n", yes(f.VnetHdr))
	fmt.Fprintf(e.stdout, "offloads:      %s\n", f.Offloads)
	vh := yes(f.VhostNet)
	if !f.VhostNet {
		vh += " (/dev/vhost-net missing: guests use QEMU's userspace virtio-net; modprobe vhost_net if the kernel has it)"
	}
	fmt.Fprintf(e.stdout, "vhost-net:     %s\n", vh)
	return nil
}
