package qemu

import (
	"context"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Hotplug adds a NIC to the running guest: every tap queue fd travels to
// QEMU with a QMP getfd (SCM_RIGHTS), netdev_add names them, and
// device_add plugs the device, on q35 into a free reserved root port. The
// caller keeps its copies of the fds.
func (vm *VM) Hotplug(ctx context.Context, nic NIC) (err error) {
	ctx, cancel, _ := withDefault(ctx, 30*time.Second)
	defer cancel()
	name := vm.spec.name()
	if vm.spec.Machine == MachineMicroVM {
		return fmt.Errorf("%s: nic %s: microvm has no hot-plug bus; declare the NIC at start", name, nic.ID)
	}
	nic, err = nic.withDefaults(vm.spec.Machine)
	if err != nil {
		return fmt.Errorf("%s: hot-plug: %w", name, err)
	}
	// Refuse a plugged id before any fd travels: QEMU would reject the
	// netdev anyway, but receiving the fds already switched them (shared
	// with the live NIC) to blocking mode.
	if err := vm.claimNIC(nic.ID); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			vm.releaseNIC(nic.ID)
		}
	}()
	useVhost, note, err := vhostMode(nic, HostCaps(false, false))
	if err != nil {
		return fmt.Errorf("%s: hot-plug: %w", name, err)
	}
	if note != "" {
		noteOnce(vm.spec.Logf, note)
	}

	port := ""
	if vm.spec.Machine == MachineQ35 && nic.Bus == "" {
		if port, err = vm.takePort(nic.ID); err != nil {
			return err
		}
		nic.Bus = port
		defer func() {
			if err != nil {
				vm.freePort(port)
			}
		}()
	}

	var sent []string // fd names QEMU holds until netdev_add consumes them
	defer func() {
		if err != nil {
			for _, n := range sent {
				vm.bestEffort("closefd", map[string]any{"fdname": n})
			}
		}
	}()
	reattachQueues(nic.Queues)
	var fds, vfds []string
	for i, f := range nic.Queues {
		n := fmt.Sprintf("%s-q%d", nic.ID, i)
		dup, err := passable(f)
		if err != nil {
			return fmt.Errorf("%s: hot-plug nic %s: tap queue %d: %w", name, nic.ID, i, err)
		}
		_, err = vm.mon.run(ctx, "getfd", map[string]any{"fdname": n}, dup)
		// QEMU makes every fd it receives blocking ("O_NONBLOCK is
		// preserved across SCM_RIGHTS so reset it"); give the shared
		// description back the mode a running netdev on it needs.
		unix.SetNonblock(int(dup.Fd()), true)
		dup.Close()
		if err != nil {
			return vm.qmpErr(fmt.Errorf("hot-plug nic %s: pass tap queue %d: %w", nic.ID, i, err))
		}
		sent = append(sent, n)
		fds = append(fds, n)
	}
	if useVhost {
		h := HostCaps(false, false)
		for i := range nic.Queues {
			f, err := h.OpenVhost()
			if err != nil {
				return fmt.Errorf("%s: hot-plug nic %s: open /dev/vhost-net for queue %d: %w", name, nic.ID, i, err)
			}
			n := fmt.Sprintf("%s-v%d", nic.ID, i)
			_, err = vm.mon.run(ctx, "getfd", map[string]any{"fdname": n}, f)
			f.Close()
			if err != nil {
				return vm.qmpErr(fmt.Errorf("hot-plug nic %s: pass vhost fd %d: %w", nic.ID, i, err))
			}
			sent = append(sent, n)
			vfds = append(vfds, n)
		}
	}

	netdev := map[string]any{"type": "tap", "id": nic.ID, "vhost": useVhost}
	if len(fds) == 1 {
		netdev["fd"] = fds[0]
	} else {
		netdev["fds"] = strings.Join(fds, ":")
	}
	if len(vfds) == 1 {
		netdev["vhostfd"] = vfds[0]
	} else if len(vfds) > 1 {
		netdev["vhostfds"] = strings.Join(vfds, ":")
	}
	if _, err := vm.mon.run(ctx, "netdev_add", netdev, nil); err != nil {
		return vm.qmpErr(fmt.Errorf("hot-plug nic %s: %w", nic.ID, err))
	}
	sent = nil // consumed by the netdev
	defer func() {
		if err != nil {
			vm.bestEffort("netdev_del", map[string]any{"id": nic.ID})
		}
	}()

	if _, err := vm.mon.run(ctx, "device_add", deviceProps(nic), nil); err != nil {
		return vm.qmpErr(fmt.Errorf("hot-plug nic %s: %w", nic.ID, err))
	}
	return nil
}

// deviceProps is the device_add argument; the same properties as the
// -device option of deviceArg, typed for QMP.
func deviceProps(nic NIC) map[string]any {
	d := map[string]any{"driver": nic.Model, "id": nic.ID, "netdev": nic.ID}
	if nic.Bus != "" {
		d["bus"] = nic.Bus
	}
	if nic.MAC != "" {
		d["mac"] = nic.MAC
	}
	if n := len(nic.Queues); n > 1 {
		d["mq"] = true
		if nic.Model == ModelVirtioPCI {
			d["vectors"] = 2*n + 2
		}
	}
	return d
}

// Unplug removes a NIC: device_del, then (once the guest has let go of the
// device, which QEMU reports as DEVICE_DELETED) netdev_del. The guest must
// cooperate; a guest that does not runs into ctx's deadline.
func (vm *VM) Unplug(ctx context.Context, id string) error {
	ctx, cancel, limit := withDefault(ctx, 30*time.Second)
	defer cancel()
	name := vm.spec.name()
	deleted, unsub := vm.mon.subscribe(func(ev Event) bool {
		return ev.Event == "DEVICE_DELETED" && ev.Data["device"] == id
	})
	defer unsub()
	if _, err := vm.mon.run(ctx, "device_del", map[string]any{"id": id}, nil); err != nil {
		return vm.qmpErr(fmt.Errorf("unplug nic %s: %w", id, err))
	}
	// q35 in QEMU 7.2 unplugs through ACPI; a busy guest sometimes misses
	// the eject event (seen under TCG on a loaded host), and QEMU accepts
	// device_del again to resend it.
	retry := time.NewTicker(3 * time.Second)
	defer retry.Stop()
wait:
	for {
		select {
		case <-deleted:
			break wait
		case <-retry.C:
			vm.mon.run(ctx, "device_del", map[string]any{"id": id}, nil)
		case <-vm.exited:
			return fmt.Errorf("%s: unplug nic %s: QEMU exited", name, id)
		case <-ctx.Done():
			return fmt.Errorf("%s: unplug nic %s: guest did not release the device (no DEVICE_DELETED) within %v; last console lines: %s",
				name, id, limit, vm.con.tailText(tailLines))
		}
	}
	vm.freeNIC(id)
	vm.releaseNIC(id)
	if _, err := vm.mon.run(ctx, "netdev_del", map[string]any{"id": id}, nil); err != nil {
		return vm.qmpErr(fmt.Errorf("unplug nic %s: %w", id, err))
	}
	return nil
}

func (vm *VM) takePort(id string) (string, error) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	for i := 0; i < vm.spec.HotplugPorts; i++ {
		p := hotplugPort(i)
		if _, used := vm.usedPorts[p]; !used {
			vm.usedPorts[p] = id
			return p, nil
		}
	}
	if vm.spec.HotplugPorts == 0 {
		return "", fmt.Errorf("%s: hot-plug nic %s: the guest has no PCIe root port reserved for hot-plug (only q35 guests started by `vmnet up` have them): set machine = \"q35\" in the lab file and bring the lab up again", vm.spec.name(), id)
	}
	return "", fmt.Errorf("%s: hot-plug nic %s: all %d PCIe root ports reserved for hot-plug are in use: remove a hot-plugged NIC first (`vmnet nic del`)", vm.spec.name(), id, vm.spec.HotplugPorts)
}

func (vm *VM) freePort(p string) {
	vm.mu.Lock()
	delete(vm.usedPorts, p)
	vm.mu.Unlock()
}

func (vm *VM) freeNIC(id string) {
	vm.mu.Lock()
	for p, n := range vm.usedPorts {
		if n == id {
			delete(vm.usedPorts, p)
		}
	}
	vm.mu.Unlock()
}

// bestEffort runs a clean-up command whose failure changes nothing for
// the caller (it already has an error to report).
func (vm *VM) bestEffort(execute string, args any) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	vm.mon.run(ctx, execute, args, nil)
}

func (vm *VM) claimNIC(id string) error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	if vm.nics[id] {
		return fmt.Errorf("%s: hot-plug nic %s: a NIC with this id is plugged already (unplug it first)", vm.spec.name(), id)
	}
	vm.nics[id] = true
	return nil
}

func (vm *VM) releaseNIC(id string) {
	vm.mu.Lock()
	delete(vm.nics, id)
	vm.mu.Unlock()
}
