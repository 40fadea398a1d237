package lab

import (
	"context"
	"fmt"
	"net"
	"slices"

	"github.com/vmnet/vmnet/internal/qemu"
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
		nic.Qdisc = n.Qdisc
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
	l.mu.Unlock()
	if err := l.closeAndDelete(h.tap); err != nil {
		return err
	}
	return l.save()
}
