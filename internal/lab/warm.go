package lab

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/vmnet/vmnet/images/guest"
	"github.com/vmnet/vmnet/internal/qemu"
	"github.com/vmnet/vmnet/internal/snapshot"
	"github.com/vmnet/vmnet/vmconfig"
)

// Warm boots: see package snapshot.

// warmable says whether vm boots warm, and if not, why (for the log).
func (l *Lab) warmable(vm *vmconfig.VM) (bool, string) {
	switch {
	case l.opts.Cold:
		return false, ""
	case vm.Boot == "cold":
		return false, ""
	case vm.Kernel != "" || vm.Disk != "" || vm.Image != "":
		return false, "" // not the test image
	case len(vm.Disks) > 0 || vm.CloudInit || vm.Readiness == vmconfig.ReadyAgent:
		// A restored guest must see the devices it was saved with, and a
		// guest that has read one lab's disk must not wake up in another.
		return false, "disks, a cloud-init seed or the guest agent channel are attached at boot, which a snapshot does not carry: booting cold"
	case vm.Machine == qemu.MachineMicroVM:
		return false, "microvm has one serial port (the identity of a restored guest travels on the second) and no VM generation id device: booting cold"
	}
	return true, ""
}

// bootWarm starts vm from the snapshot of its shape (see package
// snapshot). spec is the cold spec; args the guest's identity.
func (l *Lab) bootWarm(ctx context.Context, vm *vmconfig.VM, spec qemu.Spec, args guest.Args, base string) (*qemu.VM, error) {
	img, err := l.image(ctx)
	if err != nil {
		return nil, err
	}
	spec.Append = base + " vmnet.warm"
	spec.ControlSocket = filepath.Join(spec.RunDir, shellSocket)
	spec.VMGenID = true
	spec.Nonce = args.Nonce
	words, err := args.Params()
	if err != nil {
		return nil, err
	}
	for i, nic := range spec.NICs {
		if nic.MAC != "" {
			words = append(words, fmt.Sprintf("vmnet.mac=eth%d:%s", i, nic.MAC))
		}
	}
	words = append(words, "vmnet.hostname="+vm.Name)
	return snapshot.Boot(ctx, snapshot.Request{Name: "vm " + vm.Name, Spec: spec, Image: img, Words: words,
		Dir: l.opts.SnapshotDir, Logf: l.opts.Logf, Step: l.step})
}
