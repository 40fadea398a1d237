package lab

import (
	"errors"

	"github.com/vmnet/vmnet/bridge"
)

// restoreAll puts back what a lab changed on the bridges it reused, last
// change first.
func restoreAll(m *bridge.Manager, undo []bridge.Undo, logf func(string, ...any)) error {
	var errs []error
	for i := len(undo) - 1; i >= 0; i-- {
		logf("bridge %s: restoring the settings it had before the lab", undo[i].Bridge)
		if err := m.Restore(undo[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// restoreReused puts back what the lab changed on bridges it reused, as
// its state file records it. It reads the state again: a supervisor that
// was stopped has restored them itself and removed the file.
func restoreReused(dir string, logf func(string, ...any)) error {
	st, err := ReadState(dir)
	if err != nil || len(st.Restore) == 0 {
		return nil
	}
	m, err := bridge.NewCurrent()
	if err != nil {
		return err
	}
	defer m.Close()
	return restoreAll(m, st.Restore, logf)
}
