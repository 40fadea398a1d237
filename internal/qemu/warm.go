package qemu

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/vmnet/vmnet/images/guest"
)

// SaveBandwidth is the migration bandwidth cap while a guest is saved:
// QEMU 7.2's default (32 MiB/s) makes saving take seconds.
const SaveBandwidth = 64 << 30

// WaitWarmPoint waits until a guest booted with vmnet.warm prints
// guest.WarmMarker: it has done everything that does not depend on its
// identity and can be saved.
func (vm *VM) WaitWarmPoint(ctx context.Context) error {
	ctx, cancel, limit := withDefault(ctx, DefaultReadyTimeout)
	defer cancel()
	start := time.Now()
	select {
	case <-vm.con.warm:
		return nil
	case <-vm.con.failed:
		time.Sleep(100 * time.Millisecond)
		return fmt.Errorf("%s: guest set-up failed before the snapshot point: %s; last console lines: %s",
			vm.spec.name(), strings.Join(vm.con.guestErrors(), "; "), vm.con.tailText(tailLines))
	case <-vm.exited:
		return fmt.Errorf("%s: QEMU exited (%v) before %s; QEMU stderr: %s; last console lines: %s",
			vm.spec.name(), vm.waitErr, guest.WarmMarker, orNone(vm.stderr.String()), vm.con.tailText(tailLines))
	case <-ctx.Done():
		return fmt.Errorf("%s: no %s within %v (%v); last console lines: %s",
			vm.spec.name(), guest.WarmMarker, limitOr(limit, start), ctx.Err(), vm.con.tailText(tailLines))
	}
}

// Save pauses the guest and writes its device state to state. The RAM is
// not in it: the guest's memory is a shared file (Spec.RAM with
// RAMShared), which QEMU skips with x-ignore-shared, so that restored
// guests map that file copy-on-write. The VM stays paused; stop it after.
func (vm *VM) Save(ctx context.Context, state *os.File) error {
	ctx, cancel, _ := withDefault(ctx, time.Minute)
	defer cancel()
	if vm.spec.RAM == nil || !vm.spec.RAMShared {
		return fmt.Errorf("%s: save: the guest's RAM is not a shared file", vm.spec.name())
	}
	if err := vm.SetMigrationCapabilities(ctx, MigrationCapability{Capability: "x-ignore-shared", State: true}); err != nil {
		return err
	}
	bw := int64(SaveBandwidth)
	if err := vm.SetMigrationParameters(ctx, MigrationParameters{MaxBandwidth: &bw}); err != nil {
		return err
	}
	if err := vm.Pause(ctx); err != nil {
		return err
	}
	return vm.SaveTo(ctx, state)
}

// Restore loads the saved state (Spec.Incoming) into the waiting QEMU,
// waits until QEMU has read it and lets the guest run.
func (vm *VM) Restore(ctx context.Context) error {
	ctx, cancel, _ := withDefault(ctx, 30*time.Second)
	defer cancel()
	if vm.spec.Incoming == nil {
		return fmt.Errorf("%s: restore: no saved state given", vm.spec.name())
	}
	if err := vm.SetMigrationCapabilities(ctx, MigrationCapability{Capability: "x-ignore-shared", State: true}); err != nil {
		return vm.restoreErr(err)
	}
	// No announcements after the restore (QEMU 7.2 makes 5 rounds by
	// default): they would carry the saved guest's MAC, which every
	// clone of a snapshot shares until its guest sets its own, and each
	// round is broadcast to every guest on the bridge. The bridge learns
	// a clone's own MAC from its first frames (its IPv6 link-local
	// set-up, its first ARP).
	noAnnounce := int64(0)
	if err := vm.SetMigrationParameters(ctx, MigrationParameters{AnnounceRounds: &noAnnounce}); err != nil {
		return vm.restoreErr(err)
	}
	if err := vm.SendFD(ctx, "vmnet-incoming", vm.spec.Incoming); err != nil {
		return vm.restoreErr(err)
	}
	if err := vm.cmd0(ctx, "migrate-incoming", struct {
		URI string `json:"uri"`
	}{"fd:vmnet-incoming"}, nil); err != nil {
		return vm.restoreErr(err)
	}
	for {
		st, err := vm.Status(ctx)
		if err != nil {
			return vm.restoreErr(err)
		}
		switch st.Status {
		case "inmigrate":
		case "paused", "prelaunch", "postmigrate":
			return vm.Cont(ctx)
		case "running":
			return nil
		default:
			return fmt.Errorf("%s: restore: QEMU is in state %s instead of paused; QEMU stderr: %s", vm.spec.name(), st.Status, orNone(vm.stderr.String()))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: restore did not finish: %w", vm.spec.name(), ctx.Err())
		case <-vm.exited:
			return vm.startErr(errQEMUExited)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// restoreErr explains a failed restore: QEMU exits when it refuses the
// saved state (another version, another device set, a corrupt file), and
// its stderr says why.
func (vm *VM) restoreErr(err error) error {
	select {
	case <-vm.exited:
	case <-time.After(time.Second):
	}
	select {
	case <-vm.exited:
		return fmt.Errorf("%s: QEMU refused the saved state and exited (%v): %s", vm.spec.name(), vm.waitErr, orNone(strings.TrimSpace(vm.stderr.String())))
	default:
		return fmt.Errorf("restore: %w", err)
	}
}

// SendIdentity tells a restored guest (waiting at its snapshot point) who
// it is: words are vmnet.* parameters as on the kernel command line (see
// package images), encoded by guest.IdentityText. They travel through ttyS1 (Spec.ControlSocket), which
// is held open until the guest is ready, has failed, or QEMU exits.
func (vm *VM) SendIdentity(ctx context.Context, words []string) error {
	if vm.spec.ControlSocket == "" {
		return fmt.Errorf("%s: restore: the guest has no control port (ttyS1)", vm.spec.name())
	}
	ctx, cancel, _ := withDefault(ctx, 10*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", vm.spec.ControlSocket)
	if err != nil {
		return fmt.Errorf("%s: restore: guest control port: %w", vm.spec.name(), err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetWriteDeadline(dl)
	}
	if _, err := io.WriteString(c, guest.IdentityText(words)); err != nil {
		c.Close()
		return fmt.Errorf("%s: restore: send the identity: %w", vm.spec.name(), err)
	}
	go func() {
		defer c.Close()
		select {
		case <-vm.con.ready:
		case <-vm.con.failed:
		case <-vm.exited:
		case <-time.After(2 * time.Minute):
		}
	}()
	return nil
}

// Quit ends QEMU at once (QMP quit, then SIGKILL), for a guest whose
// state does not matter any more (one that was saved), and releases the
// VM's resources.
func (vm *VM) Quit(ctx context.Context) {
	defer vm.release()
	qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	vm.mon.run(qctx, "quit", nil, nil)
	cancel()
	select {
	case <-vm.exited:
		return
	case <-time.After(3 * time.Second):
	}
	vm.kill()
	select {
	case <-vm.exited:
	case <-time.After(5 * time.Second):
	}
}
