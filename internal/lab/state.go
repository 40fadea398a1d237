package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmnet/vmnet/bridge"
	"github.com/vmnet/vmnet/vmconfig"
)

// State is what a lab's supervisor records in its state directory, so
// that `vmnet status` can describe the lab and `vmnet down` can remove it
// even after the supervisor was killed. It is rewritten atomically after
// every step; the interface ownership tags back it up when it is missing.
type State struct {
	Lab        string `json:"lab"`
	Config     string `json:"config"`
	StateDir   string `json:"state_dir"`
	Supervisor int    `json:"supervisor_pid"`
	// SupervisorStart is the supervisor's start time (/proc/PID/stat
	// field 22), so a pid the kernel has since reused is never taken for
	// it.
	SupervisorStart uint64    `json:"supervisor_start,omitempty"`
	Started         time.Time `json:"started"`
	Phase           string    `json:"phase"` // starting, up, stopping
	Bridges         []string  `json:"bridges_created"`
	Reused          []string  `json:"bridges_reused,omitempty"`
	// Host is the [[host]] whose part of a multi-host lab this is.
	Host string `json:"host,omitempty"`
	// VXLANs are the VXLAN devices the lab created on its bridges.
	VXLANs []string  `json:"vxlans,omitempty"`
	VMs    []VMState `json:"vms"`

	// Restore is what the lab changed on the bridges it reused, written
	// before each change; `down` puts it back.
	Restore []bridge.Undo `json:"bridges_restore,omitempty"`
}

// VMState is one guest as the supervisor started it.
type VMState struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	// PIDStart is QEMU's start time (/proc/PID/stat field 22): `vmnet
	// down` stops only the process with both this pid and this start time.
	PIDStart uint64     `json:"pid_start,omitempty"`
	Started  time.Time  `json:"started"`
	Console  string     `json:"console,omitempty"`
	RunDir   string     `json:"run_dir"`
	NICs     []NICState `json:"nics"`
}

// NICState is one guest NIC and its tap.
type NICState struct {
	ID         string `json:"id"`
	Tap        string `json:"tap"`
	MAC        string `json:"mac"`
	Network    string `json:"network,omitempty"`
	Queues     int    `json:"queues"`
	Hotplugged bool   `json:"hotplugged,omitempty"`
}

const stateFile = "state.json"

// DefaultStateRoot holds one directory per network namespace (StateRoot),
// which holds one state directory per lab unless the lab file says
// otherwise.
const DefaultStateRoot = vmconfig.DefaultStateRoot

// ReadState reads the state a supervisor left in dir. A missing file is
// reported with os.ErrNotExist.
func ReadState(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w (remove the directory, then run `vmnet down` again)", filepath.Join(dir, stateFile), err)
	}
	return &s, nil
}

// writeState replaces the state file atomically: readers see the old or
// the new state, never half of one.
func writeState(s *State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.StateDir, ".state-*")
	if err != nil {
		return fmt.Errorf("lab %s: write state: %w", s.Lab, err)
	}
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(s.StateDir, stateFile))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("lab %s: write state: %w", s.Lab, err)
	}
	return nil
}

// Alive reports whether pid is a running process (not a zombie).
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	for i := len(b) - 1; i > 0; i-- {
		if b[i] == ')' && i+2 < len(b) {
			return b[i+2] != 'Z' && b[i+2] != 'X'
		}
	}
	return true
}

// SupervisorAlive reports whether the supervisor recorded in s still
// runs: its pid is alive and is a `vmnet ... up` process, so a pid the
// kernel has since given to something else is never signalled.
func (s *State) SupervisorAlive() bool {
	if !Alive(s.Supervisor) {
		return false
	}
	if s.SupervisorStart != 0 {
		if st, err := procStart(s.Supervisor); err != nil || st != s.SupervisorStart {
			return false
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", s.Supervisor))
	if err != nil {
		return false
	}
	args := strings.Split(string(b), "\x00")
	return strings.Contains(filepath.Base(args[0]), "vmnet") && slices.Contains(args, "up")
}

// procStart returns the start time of pid in clock ticks after boot,
// field 22 of /proc/PID/stat: with the pid it names one process for the
// whole uptime of the machine.
func procStart(pid int) (uint64, error) {
	f, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// procCPU is the CPU time pid has used (user and system, fields 14 and
// 15 of /proc/PID/stat, in USER_HZ: 100 per second on Linux).
func procCPU(pid int) (time.Duration, error) {
	f, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	ut, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return 0, err
	}
	st, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return 0, err
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// procStat returns the fields of /proc/PID/stat from field 3 (state) on.
func procStat(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	// The command name (field 2) is in parentheses and may hold spaces
	// and parentheses itself: count fields after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3; field 22 (start time) is f[19].
	if len(f) < 20 {
		return nil, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	return f, nil
}
