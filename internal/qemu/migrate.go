package qemu

import (
	"context"
	"fmt"
	"os"
	"time"
)

// MigrationCapability is one entry of migrate-set-capabilities.
type MigrationCapability struct {
	Capability string `json:"capability"`
	State      bool   `json:"state"`
}

// MigrationParameters is the part of migrate-set-parameters vmnet sets;
// nil fields are left as they are.
type MigrationParameters struct {
	MaxBandwidth  *int64 `json:"max-bandwidth,omitempty"`  // bytes per second
	DowntimeLimit *int64 `json:"downtime-limit,omitempty"` // milliseconds
	// AnnounceRounds is how often a guest that arrives by migration is
	// announced on its NICs (QEMU's RARP frames, and virtio-net asks the
	// guest to announce itself); 0 turns that off.
	AnnounceRounds *int64 `json:"announce-rounds,omitempty"`
}

// MigrationInfo is the part of query-migrate's reply vmnet reads.
type MigrationInfo struct {
	Status    string `json:"status"` // none, setup, active, completed, failed, ...
	ErrorDesc string `json:"error-desc"`
	TotalTime int64  `json:"total-time"` // ms
	RAM       *struct {
		Transferred int64 `json:"transferred"`
		Total       int64 `json:"total"`
	} `json:"ram"`
}

func (vm *VM) cmd0(ctx context.Context, execute string, args, out any) error {
	ctx, cancel, _ := withDefault(ctx, 10*time.Second)
	defer cancel()
	if err := vm.mon.runInto(ctx, execute, args, out); err != nil {
		return vm.qmpErr(err)
	}
	return nil
}

// Pause stops the guest's vCPUs (QMP stop).
func (vm *VM) Pause(ctx context.Context) error { return vm.cmd0(ctx, "stop", nil, nil) }

// Cont lets a paused (or incoming, restored) guest run (QMP cont).
func (vm *VM) Cont(ctx context.Context) error { return vm.cmd0(ctx, "cont", nil, nil) }

// SetMigrationCapabilities is QMP migrate-set-capabilities.
func (vm *VM) SetMigrationCapabilities(ctx context.Context, caps ...MigrationCapability) error {
	return vm.cmd0(ctx, "migrate-set-capabilities", struct {
		Capabilities []MigrationCapability `json:"capabilities"`
	}{caps}, nil)
}

// SetMigrationParameters is QMP migrate-set-parameters.
func (vm *VM) SetMigrationParameters(ctx context.Context, p MigrationParameters) error {
	return vm.cmd0(ctx, "migrate-set-parameters", p, nil)
}

// Migrate starts an outgoing migration to uri (QMP migrate); it returns
// once QEMU has started it: poll QueryMigrate.
func (vm *VM) Migrate(ctx context.Context, uri string) error {
	return vm.cmd0(ctx, "migrate", struct {
		URI string `json:"uri"`
	}{uri}, nil)
}

// QueryMigrate is QMP query-migrate.
func (vm *VM) QueryMigrate(ctx context.Context) (MigrationInfo, error) {
	var mi MigrationInfo
	err := vm.cmd0(ctx, "query-migrate", nil, &mi)
	return mi, err
}

// SendFD hands QEMU a file under name (QMP getfd with SCM_RIGHTS); the
// caller keeps and closes its own copy.
func (vm *VM) SendFD(ctx context.Context, name string, f *os.File) error {
	ctx, cancel, _ := withDefault(ctx, 10*time.Second)
	defer cancel()
	if _, err := vm.mon.run(ctx, "getfd", struct {
		FDName string `json:"fdname"`
	}{name}, f); err != nil {
		return vm.qmpErr(err)
	}
	return nil
}

// SaveTo saves the paused guest's device state (and the RAM QEMU does not
// share with a file, see x-ignore-shared) into f and waits until QEMU
// reports the migration completed or failed.
func (vm *VM) SaveTo(ctx context.Context, f *os.File) error {
	ctx, cancel, _ := withDefault(ctx, 2*time.Minute)
	defer cancel()
	if err := vm.SendFD(ctx, "vmnet-save", f); err != nil {
		return err
	}
	if err := vm.Migrate(ctx, "fd:vmnet-save"); err != nil {
		return err
	}
	for {
		mi, err := vm.QueryMigrate(ctx)
		if err != nil {
			return err
		}
		switch mi.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("%s: saving the guest failed: %s", vm.spec.name(), orNone(mi.ErrorDesc))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: saving the guest did not finish (status %s): %w", vm.spec.name(), mi.Status, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}
