// Package nlretry repeats netlink dumps that the kernel interrupted.
//
// A dump races with concurrent changes; the kernel then flags it
// NLM_F_DUMP_INTR and vishvananda/netlink returns ErrDumpInterrupted with
// partial results. The only correct answer is to dump again.
package nlretry

import (
	"errors"

	"github.com/vishvananda/netlink"
)

// Attempts bounds how often a dump is repeated before the error is returned.
const Attempts = 10

// Do calls dump until it returns something other than ErrDumpInterrupted.
func Do[T any](dump func() (T, error)) (T, error) {
	var v T
	var err error
	for range Attempts {
		v, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}
