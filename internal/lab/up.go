package lab

import (
	"context"
	"errors"
	"fmt"
	"github.com/vmnet/vmnet/vmconfig"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/vmnet/vmnet/bridge"
	"github.com/vmnet/vmnet/internal/qemu"
	"github.com/vmnet/vmnet/tap"
)

// hotNIC is a NIC added to a running guest.
type hotNIC struct {
	id      string
	network string
	mac     string
	tap     *tap.Tap
}

// save records the Lab's current state if it is supervised.
func (l *Lab) save() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.saveLocked()
}

func (l *Lab) saveLocked() error {
	if l.state == nil {
		return nil
	}
	s := l.state
	s.Bridges = append([]string(nil), l.bridges...)
	s.Reused = append([]string(nil), l.reused...)
	s.VXLANs = append([]string(nil), l.vxlans...)
	if l.cfg.Host != nil {
		s.Host = l.cfg.Host.Name
	}
	s.Restore = append([]bridge.Undo(nil), l.undo...)
	s.VMs = s.VMs[:0]
	for _, vm := range l.cfg.VMs {
		vs := VMState{Name: vm.Name, Console: vm.Console, RunDir: l.runDir(vm.Name), Started: l.started[vm.Name]}
		if v := l.vms[vm.Name]; v != nil {
			vs.PID = v.PID()
			vs.PIDStart = l.pidStart(vs.PID)
		}
		for i, nic := range vm.NICs {
			if t := l.taps[nic]; t != nil {
				vs.NICs = append(vs.NICs, NICState{ID: fmt.Sprintf("nic%d", i), Tap: t.Name(), MAC: nic.MAC.String(),
					Network: nic.Network, Queues: len(t.Queues())})
			}
		}
		for _, h := range l.hotplug[vm.Name] {
			vs.NICs = append(vs.NICs, NICState{ID: h.id, Tap: h.tap.Name(), MAC: h.mac, Network: h.network,
				Queues: len(h.tap.Queues()), Hotplugged: true})
		}
		s.VMs = append(s.VMs, vs)
	}
	return writeState(s)
}

// pidStart returns the start time of pid, cached: the supervisor saves
// its state after every step.
func (l *Lab) pidStart(pid int) uint64 {
	if st, ok := l.pidStarts[pid]; ok {
		return st
	}
	st, err := procStart(pid)
	if err != nil {
		return 0
	}
	l.pidStarts[pid] = st
	return st
}

func (l *Lab) runDir(vm string) string { return filepath.Join(l.opts.RunDir, "vm-"+vm) }

// failpoint stops `up` for good at a named step when VMNET_FAILPOINT names
// it, so tests can kill the supervisor at exactly that point and check
// that `vmnet down` still removes everything.
func (l *Lab) failpoint(name string) {
	if os.Getenv("VMNET_FAILPOINT") != name {
		return
	}
	l.opts.Logf("failpoint %s reached; waiting to be killed", name)
	select {}
}

// progressEvery is how often Up repeats the state of guests that are
// still booting.
const progressEvery = 20 * time.Second

// DefaultMaxBoots is how many guests Up boots at once unless told: two per
// core. A booting guest under TCG keeps a core busy most of the time, and
// a guest kernel starved for long enough fails its boot-time checks (the
// timer check is off in the test image, others remain), so a lab of any
// size comes up by booting some guests while the rest wait.
func DefaultMaxBoots() int { return 2 * runtime.NumCPU() }

// Up brings the whole lab up: its networks, every VM's taps, then the
// guests in parallel, and waits until each guest is ready (the test
// image's VMNET-READY; QEMU answering QMP for other kernels). If any step
// fails, everything created so far is removed again and the error names
// the object that failed.
func (l *Lab) Up(ctx context.Context, readyTimeout time.Duration) (err error) {
	upStart := time.Now()
	var pmu sync.Mutex
	booting := map[string]bool{}
	progress := func(vm, state string, err error) {
		pmu.Lock()
		defer pmu.Unlock()
		booting[vm] = state == VMBooting
		if l.opts.Progress != nil {
			l.opts.Progress(Progress{VM: vm, State: state, Elapsed: time.Since(upStart), Err: err})
		}
	}
	// While guests boot (minutes under TCG), their state is repeated
	// now and then, so that a quiet terminal does not look hung.
	stillBooting := func() {
		pmu.Lock()
		defer pmu.Unlock()
		for _, vm := range l.cfg.VMs {
			if booting[vm.Name] && l.opts.Progress != nil {
				l.opts.Progress(Progress{VM: vm.Name, State: VMBooting, Elapsed: time.Since(upStart)})
			}
		}
	}
	// A wrong --host is found before anything is created.
	if err := l.checkUnderlay(); err != nil {
		return err
	}
	l.mu.Lock()
	l.state = &State{Lab: l.cfg.Name, Config: l.cfg.File, StateDir: l.cfg.StateDir, Supervisor: os.Getpid(),
		SupervisorStart: l.pidStart(os.Getpid()), Started: time.Now(), Phase: "starting"}
	l.mu.Unlock()
	if err := ClaimStateDir(l.cfg, l.netNS); err != nil {
		l.mu.Lock()
		l.state = nil
		l.mu.Unlock()
		return err
	}
	// The state directory: root's, searchable (0711) so that QEMU's user
	// can reach what the lab file keeps there, writable by root only.
	if err := qemu.RootDir(l.cfg.StateDir, 0o711); err != nil {
		return fmt.Errorf("lab %s: state %w", l.cfg.Name, err)
	}
	if err := l.save(); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
			defer cancel()
			if terr := l.Teardown(tctx); terr != nil {
				err = fmt.Errorf("%w; cleaning up also failed: %v (run `vmnet down %s`)", err, terr, l.cfg.Name)
			}
		}
	}()
	for _, n := range l.cfg.Networks {
		if err := l.EnsureNetwork(n.Name); err != nil {
			return err
		}
	}
	l.failpoint("after-networks")
	for _, vm := range l.cfg.VMs {
		if err := l.CreateTaps(vm); err != nil {
			return err
		}
	}
	if err := l.StartLinks(ctx); err != nil {
		return err
	}
	l.failpoint("after-taps")
	if len(l.cfg.VMs) > 0 {
		// Build the named images and the test image once, before the
		// parallel boots want them.
		for _, vm := range l.cfg.VMs {
			if vm.Image != "" {
				if _, err := l.namedImage(ctx, vm.Image); err != nil {
					return fmt.Errorf("vm %s: %w", vm.Name, err)
				}
			}
		}
		for _, vm := range l.cfg.VMs {
			if vm.Kernel == "" && vm.Disk == "" && vm.Image == "" {
				if _, err := l.image(ctx); err != nil {
					return fmt.Errorf("vm %s: %w", vm.Name, err)
				}
				break
			}
		}
	}
	// The first guest that fails stops the others' waits: the lab is
	// coming down anyway.
	bctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, len(l.cfg.VMs))
	maxBoots := l.opts.MaxBoots
	if maxBoots <= 0 {
		maxBoots = DefaultMaxBoots()
	}
	slots := make(chan struct{}, maxBoots)
	var wg sync.WaitGroup
	for i, vm := range l.cfg.VMs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case slots <- struct{}{}:
			default:
				progress(vm.Name, VMWaiting, nil)
				select {
				case slots <- struct{}{}:
				case <-bctx.Done():
					if ctx.Err() != nil { // interrupted, not merely stopped for another guest's failure
						errs[i] = fmt.Errorf("vm %s: not booted: %w", vm.Name, ctx.Err())
					}
					return
				}
			}
			defer func() { <-slots }()
			progress(vm.Name, VMBooting, nil)
			v, err := l.Boot(bctx, vm, "")
			if err != nil {
				errs[i] = err
				progress(vm.Name, VMFailed, err)
				cancel()
				return
			}
			if readiness(vm) == vmconfig.ReadyNone {
				progress(vm.Name, VMReady, nil)
				return
			}
			rctx, rcancel := context.WithTimeout(bctx, readyTimeout)
			defer rcancel()
			done := l.step("vm " + vm.Name + ": ready (" + readiness(vm) + ")")
			if err := l.waitReady(rctx, vm, v); err != nil {
				if bctx.Err() == nil || ctx.Err() != nil {
					errs[i] = err // not merely stopped for another guest's failure
					progress(vm.Name, VMFailed, err)
				}
				cancel()
			} else {
				progress(vm.Name, VMReady, nil)
			}
			done(errs[i])
			if errs[i] == nil {
				// What the boot cost the host (under TCG mostly
				// translating guest code, which a restored guest's
				// QEMU does anew): the timeline with -v tells where a
				// big lab's time goes.
				if cpu, err := procCPU(v.PID()); err == nil {
					l.opts.Logf("%-48s %7.3fs", "vm "+vm.Name+": QEMU CPU time to ready", cpu.Seconds())
				}
			}
		}()
	}
	waited := make(chan struct{})
	go func() {
		wg.Wait()
		close(waited)
	}()
	tick := time.NewTicker(progressEvery)
	for waiting := true; waiting; {
		select {
		case <-tick.C:
			stillBooting()
		case <-waited:
			waiting = false
		}
	}
	tick.Stop()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	l.failpoint("after-qemu")
	l.mu.Lock()
	l.state.Phase = "up"
	l.mu.Unlock()
	return l.save()
}

// Running returns the QEMU of a VM started by Boot or Up.
func (l *Lab) Running(name string) *qemu.VM {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.vms[name]
}
