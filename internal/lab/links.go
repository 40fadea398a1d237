package lab

import (
	"context"
	"fmt"
	"slices"

	"github.com/vmnet/vmnet/internal/link"
	"github.com/vmnet/vmnet/netns"
	"github.com/vmnet/vmnet/vmconfig"
)

// runningLink is a [[link]] of the lab with its forwarding goroutines.
type runningLink struct {
	l    *link.Link
	done chan struct{}
}

// endpoint turns vm:NAME:N into the NIC's tap, read and written through
// AF_PACKET: what the guest sends arrives on the tap's netdev, and what is
// sent out of that netdev reaches the guest.
func (l *Lab) endpoint(e vmconfig.Endpoint) (vmconfig.Endpoint, error) {
	if e.Kind != vmconfig.KindVM {
		return e, nil
	}
	vm, err := l.VM(e.Name)
	if err != nil {
		return e, err
	}
	if e.NIC < 0 || e.NIC >= len(vm.NICs) {
		return e, fmt.Errorf("link endpoint %s: vm %s has %d NICs", e, vm.Name, len(vm.NICs))
	}
	return vmconfig.Endpoint{Kind: vmconfig.KindPacket, Name: vm.NICs[e.NIC].IfName}, nil
}

// StartLinks opens the lab's [[link]]s and starts forwarding. The links
// run until Teardown.
func (l *Lab) StartLinks(ctx context.Context) error {
	for _, lk := range l.cfg.Links {
		a, err := l.endpoint(lk.A)
		if err != nil {
			return err
		}
		b, err := l.endpoint(lk.B)
		if err != nil {
			return err
		}
		done := l.step(fmt.Sprintf("link %s <-> %s", lk.A, lk.B))
		var ln *link.Link
		err = netns.Do(l.ns, func() error {
			var err error
			ln, err = link.Dial(ctx, a, b, link.OpenOptions{}, link.Options{PCAP: lk.PCAP, AtoB: lk.AtoB, BtoA: lk.BtoA,
				Datapath: lk.Datapath, Logf: l.opts.Logf})
			return err
		})
		done(err)
		if err != nil {
			return fmt.Errorf("lab %s: link %d (%s <-> %s): %w", l.cfg.Name, lk.Index, lk.A, lk.B, err)
		}
		rl := &runningLink{l: ln, done: make(chan struct{})}
		l.mu.Lock()
		l.links = append(l.links, rl)
		if l.linkCtx == nil {
			l.linkCtx, l.linkStop = context.WithCancel(context.Background())
		}
		lctx := l.linkCtx
		l.mu.Unlock()
		go func() {
			defer close(rl.done)
			if err := ln.Run(lctx); err != nil && lctx.Err() == nil {
				l.opts.Logf("link %s stopped: %v", ln, err)
			}
		}()
	}
	return nil
}

// LinkStats reads the counters of the running links.
func (l *Lab) LinkStats() []link.Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]link.Stats, 0, len(l.links))
	for _, rl := range l.links {
		out = append(out, rl.l.Stats())
	}
	return out
}

// stopLinksLocked ends forwarding and closes the links; l.mu is held.
func (l *Lab) stopLinksLocked() error {
	if l.linkStop != nil {
		l.linkStop()
	}
	var first error
	for _, rl := range l.links {
		<-rl.done
		if err := rl.l.Close(); err != nil && first == nil {
			first = err
		}
	}
	l.links, l.linkCtx, l.linkStop = nil, nil, nil
	return first
}

// SetLinkImpairments changes impairment keys of the running link with
// index i: keys[""] for both directions, keys["a_to_b"] / keys["b_to_a"]
// for one, on top of what the direction has now (the keys not given
// stay). A bad value or a direction that runs without impairments
// changes nothing.
func (l *Lab) SetLinkImpairments(i int, keys map[string]map[string]string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if i < 0 || i >= len(l.links) {
		return fmt.Errorf("lab %s: no link %d: the lab has %d (numbered from 0 in the order of the lab file)", l.cfg.Name, i, len(l.links))
	}
	ln := l.links[i].l
	for k := range keys {
		if k != "" && !slices.Contains(vmconfig.DirKeys, k) {
			return fmt.Errorf("lab %s: link %d: unknown direction %q: want a_to_b or b_to_a", l.cfg.Name, i, k)
		}
	}
	cur := ln.Impairments()
	var next [2]*vmconfig.Impairment
	for d, dk := range vmconfig.DirKeys {
		if len(keys[""]) == 0 && len(keys[dk]) == 0 {
			continue
		}
		var im vmconfig.Impairment
		if cur[d] != nil {
			im = *cur[d]
		}
		for _, m := range []map[string]string{keys[""], keys[dk]} {
			for k, v := range m {
				if err := vmconfig.SetImpairment(&im, k, v); err != nil {
					return fmt.Errorf("lab %s: link %d: %s: %w", l.cfg.Name, i, k, err)
				}
			}
		}
		if err := im.Check(); err != nil {
			return fmt.Errorf("lab %s: link %d: %s: %w", l.cfg.Name, i, dk, err)
		}
		next[d] = &im
	}
	if err := ln.SetImpairment(next[0], next[1]); err != nil {
		return fmt.Errorf("lab %s: link %d: %w", l.cfg.Name, i, err)
	}
	return nil
}
