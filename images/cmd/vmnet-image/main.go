// Command vmnet-image builds (or finds in the cache) the small guest image
// vmnet boots for its tests and prints where its files are.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"

	"github.com/vmnet/vmnet/images"
)

func main() {
	cache := flag.String("cache", "", "cache directory (default $VMNET_CACHE, $XDG_CACHE_HOME/vmnet or ~/.cache/vmnet)")
	mods := flag.String("modules", "", "extra kernel modules to include, comma separated (e.g. bridge,8021q,vhost_net)")
	quiet := flag.Bool("q", false, "no progress output")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	opts := images.Options{CacheDir: *cache, Progress: os.Stderr}
	if *quiet {
		opts.Progress = nil
	}
	if *mods != "" {
		opts.Modules = strings.Split(*mods, ",")
	}
	img, err := images.Ensure(ctx, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("dir=%s\nkernel=%s\nkernel_compressed=%s\ninitrd=%s\nkernel_version=%s\nkernel_package=%s\nmodules=%s\n",
		img.Dir, img.Kernel, img.KernelCompressed, img.Initrd, img.KernelVersion, img.KernelPackage, strings.Join(img.Modules, ","))
}
