package link_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"
	"time"

	"github.com/vmnet/vmnet/internal/link"
	"github.com/vmnet/vmnet/vmconfig"
)

// A link from a tap to a UDP tunnel towards another host's vmnet, with a
// capture and counters every ten seconds, until interrupted. (What `vmnet
// link tap:lab0 udp:0.0.0.0:4789,remote=192.0.2.7:4789 --pcap lab0.pcap
// --stats 10s` does.)
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var eps []*link.Endpoint
	for _, s := range []string{"tap:lab0", "udp:0.0.0.0:4789,remote=192.0.2.7:4789"} {
		ep, err := vmconfig.ParseEndpoint(s)
		if err == nil {
			var e *link.Endpoint
			if e, err = link.Open(ctx, ep, link.OpenOptions{}); err == nil {
				eps = append(eps, e)
				continue
			}
		}
		for _, e := range eps {
			e.Close() // a tap Open created disappears again
		}
		log.Fatal(err)
	}
	l, err := link.New(eps[0], eps[1], link.Options{PCAP: "lab0.pcap"})
	if err != nil {
		log.Fatal(err) // New closed both endpoints
	}
	defer l.Close()
	go func() {
		for range time.Tick(10 * time.Second) {
			fmt.Println(l.Stats()) // or json.Marshal(l.Stats()) for `vmnet status`
		}
	}()
	if err := l.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
