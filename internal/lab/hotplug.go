package lab

import (
	"context"
	"fmt"
	"net"
	"slices"

	"github.com/vmnet/vmnet/internal/qemu"
	"github.com/vmnet/vmnet/tap"
	"github.com/vmnet/vmnet/vmconfig"
)

// AddNIC creates a tap on network and plugs it into the running guest vm
// as a new virtio-net NIC (QMP getfd, netdev_add, device_add). An empty
// mac derives a stable one; queues 0 means one per vCPU.
func (l *Lab) AddNIC(ctx context.Context, vmName, network string, queues int, mac string) (NICState, error) {
	vm, err := l.VM(vmName)
	if err != nil {
		return NICState{}, err
	}
	v := l.Running(vmName)
	if v == nil {
		return NICState{}, fmt.Errorf("vm %s is not running", vmName)
	}
	if l.network(network) == nil {
		return NICState{}, fmt.Errorf("lab %s: no network named %q", l.cfg.Name, network)
	}
	if err := l.EnsureNetwork(network); err != nil {
		return NICState{}, err
	}
	l.mu.Lock()
	index := len(vm.NICs) + len(l.hotplug[vmName])
	for _, h := range l.hotplug[vmName] {
		index = max(index, h.index()+1)
	}
	l.mu.Unlock()
	if queues == 0 {
		queues = vm.CPUs
	}
	if queues < 1 || queues > vmconfig.MaxQueues {
		return NICState{}, fmt.Errorf("vm %s: queues %d out of range 1..%d", vmName, queues, vmconfig.MaxQueues)
	}
	hw := vmconfig.DeriveMAC(l.cfg.Name, vmName, index)
	if mac != "" {
		if hw, err = net.ParseMAC(mac); err != nil || len(hw) != 6 || hw[0]&1 != 0 {
			return NICState{}, fmt.Errorf("vm %s: mac %q: want a unicast address like 52:54:00:12:34:56", vmName, mac)
		}
	}
	ifname := fmt.Sprintf("%s-%s-%d", l.cfg.Name, vmName, index)
	if len(ifname) > 15 {
		return NICState{}, fmt.Errorf("vm %s: tap name %s is longer than 15 bytes; use shorter lab or VM names", vmName, ifname)
	}
	nic := &vmconfig.NIC{VM: vmName, Index: index, Network: network, MAC: hw, Queues: queues, VnetHdr: true,
		OffloadsAuto: true, Model: qemu.ModelVirtioPCI, Vhost: qemu.VhostAuto, IfName: ifname}
	if n := l.network(network); n != nil {
		nic.Qdisc, nic.Impairment = n.Qdisc, n.Impairment // the network's defaults, as for its NICs in the lab file
	}
	u, err := l.qemuUser(vm)
	if err != nil {
		return NICState{}, err
	}
	uid, gid := tapOwner(u)
	t, err := l.createTap(vm, nic, uid, gid)
	if err != nil {
		return NICState{}, err
	}
	id := fmt.Sprintf("nic%d", index)
	done := l.step("vm " + vmName + ": hot-plug " + id)
	err = v.Hotplug(ctx, qemu.NIC{ID: id, Model: nic.Model, MAC: hw.String(), Queues: t.Files(), Vhost: nic.Vhost})
	done(err)
	if err != nil {
		l.closeAndDelete(t)
		return NICState{}, err
	}
	h := &hotNIC{id: id, network: network, mac: hw.String(), tap: t}
	l.mu.Lock()
	l.hotplug[vmName] = append(l.hotplug[vmName], h)
	l.mu.Unlock()
	return NICState{ID: id, Tap: t.Name(), MAC: h.mac, Network: network, Queues: queues, Hotplugged: true}, l.save()
}

func (h *hotNIC) index() int {
	var i int
	fmt.Sscanf(h.id, "nic%d", &i)
	return i
}

// DelNIC unplugs a NIC added by AddNIC (device_del, DEVICE_DELETED,
// netdev_del) and removes its tap. NICs from the lab file stay: they are
// part of the VM's definition.
func (l *Lab) DelNIC(ctx context.Context, vmName, id string) error {
	if _, err := l.VM(vmName); err != nil {
		return err
	}
	v := l.Running(vmName)
	if v == nil {
		return fmt.Errorf("vm %s is not running", vmName)
	}
	l.mu.Lock()
	hs := l.hotplug[vmName]
	i := slices.IndexFunc(hs, func(h *hotNIC) bool { return h.id == id || h.tap.Name() == id })
	l.mu.Unlock()
	if i < 0 {
		return fmt.Errorf("vm %s: no hot-plugged NIC %q (NICs from the lab file cannot be removed at run time)", vmName, id)
	}
	h := hs[i]
	done := l.step("vm " + vmName + ": unplug " + h.id)
	err := v.Unplug(ctx, h.id)
	done(err)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.hotplug[vmName] = slices.Delete(l.hotplug[vmName], i, i+1)
	delete(l.nicImpair, h.tap)
	l.mu.Unlock()
	if err := l.closeAndDelete(h.tap); err != nil {
		return err
	}
	return l.save()
}

// SetNICImpairment changes impairment keys of a running guest's NIC (its
// id, nic0, or its tap's name) on top of what it has now, the keys not
// given staying: netem/tbf on the tap, acting on frames to the guest.
// All keys at zero put back the tap's plain qdisc. A bad value, a NIC
// at the end of a [[link]] or a kernel without the qdisc changes
// nothing. It returns the NIC's impairment now.
func (l *Lab) SetNICImpairment(vmName, id string, keys map[string]string) (vmconfig.Impairment, error) {
	vm, err := l.VM(vmName)
	if err != nil {
		return vmconfig.Impairment{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var t *tap.Tap
	var cur *vmconfig.Impairment
	for i, nic := range vm.NICs {
		if tp := l.taps[nic]; tp != nil && (id == fmt.Sprintf("nic%d", i) || id == tp.Name()) {
			if nic.Network == "" {
				return vmconfig.Impairment{}, fmt.Errorf("lab %s: vm %s %s: it is an end of a [[link]], which impairs it: use `vmnet link set`", l.cfg.Name, vmName, id)
			}
			t, cur = tp, nic.Impairment
		}
	}
	for _, h := range l.hotplug[vmName] {
		if h.id == id || h.tap.Name() == id {
			t = h.tap
			if n := l.network(h.network); n != nil {
				cur = n.Impairment
			}
		}
	}
	if t == nil {
		return vmconfig.Impairment{}, fmt.Errorf("lab %s: vm %s has no NIC %q (ids are nic0, nic1, ... as `vmnet status` shows, or tap names)", l.cfg.Name, vmName, id)
	}
	var im vmconfig.Impairment
	if now, ok := l.nicImpair[t]; ok {
		im = now
	} else if cur != nil {
		im = *cur
	}
	for k, v := range keys {
		if err := vmconfig.SetImpairment(&im, k, v); err != nil {
			return vmconfig.Impairment{}, fmt.Errorf("lab %s: vm %s %s: %s: %w", l.cfg.Name, vmName, id, k, err)
		}
	}
	if err := im.Check(); err != nil {
		return vmconfig.Impairment{}, fmt.Errorf("lab %s: vm %s %s: %w", l.cfg.Name, vmName, id, err)
	}
	if err := t.SetImpairment(TapImpairment(im)); err != nil {
		return vmconfig.Impairment{}, fmt.Errorf("lab %s: vm %s %s: %w", l.cfg.Name, vmName, id, err)
	}
	l.nicImpair[t] = im
	return im, nil
}
