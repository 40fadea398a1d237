package tap

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnet/vmnet/internal/testenv"
)

// TestNAPI creates taps with IFF_NAPI (and IFF_NAPI_FRAGS), a GRO
// flush timeout and threaded NAPI, and lets the kernel judge: TUNGETIFF
// shows the flags, the device's gro_flush_timeout and threaded setting
// read back, frames written one by one
// cross a bridge intact, and a tap of the same name in another namespace
// keeps its own timeout (the setting goes to the tap's namespace, not to
// whatever /sys shows).
func TestNAPI(t *testing.T) {
	testenv.RequireRoot(t)
	t.Parallel()
	other := newNS(t)
	testenv.Do(t, other, func() error {
		mustCreate(t, NewConfig("tapn", 1))
		return nil
	})
	for _, c := range []struct {
		name        string
		napi, frags bool
		timeout     time.Duration
		threaded    bool
	}{
		{"plain", false, false, 0, false},
		{"napi", true, false, 0, false},
		{"napi-timeout", true, false, 200 * time.Microsecond, false},
		{"napi-frags-timeout", true, true, 50 * time.Microsecond, false},
		{"napi-timeout-threaded", true, false, 200 * time.Microsecond, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns := newNS(t)
			testenv.Do(t, ns, func() error {
				cfg := NewConfig("tapn", 2)
				cfg.NAPI, cfg.NAPIFrags, cfg.GROFlushTimeout, cfg.NAPIThreaded = c.napi, c.frags, c.timeout, c.threaded
				a := mustCreate(t, cfg)
				if _, err := a.AddQueue(); err != nil {
					return err
				}
				b := mustCreate(t, NewConfig("tapm", 1))
				napi, frags, err := a.NAPI()
				if err != nil {
					return err
				}
				if napi != c.napi || frags != c.frags {
					return fmt.Errorf("TUNGETIFF: napi %v frags %v, want %v %v", napi, frags, c.napi, c.frags)
				}
				if d, err := a.GROFlushTimeout(); err != nil || d != c.timeout {
					return fmt.Errorf("gro_flush_timeout %v (%v), want %v", d, err, c.timeout)
				}
				if on, err := a.NAPIThreaded(); err != nil || on != c.threaded {
					return fmt.Errorf("threaded %v (%v), want %v", on, err, c.threaded)
				}
				if err := bridgeTaps(a, b); err != nil {
					return err
				}
				// Every queue of a, the one Create attached and the one
				// AddQueue did, takes frames one by one.
				for i, q := range a.Queues() {
					for j := range 20 {
						id := uint32(i*100 + j)
						want := markedFrame(id, 60+j*70)
						if _, err := q.Write(want); err != nil {
							return fmt.Errorf("queue %d: write: %w", i, err)
						}
						got, err := readMatch(b.Queues()[0], arrive, isMarked)
						if err != nil {
							return fmt.Errorf("queue %d: frame %d written to tapn never reached tapm: %w", i, id, err)
						}
						if !bytes.Equal(got, want) {
							return fmt.Errorf("queue %d: tapm read\n%x\nwant\n%x", i, got, want)
						}
					}
				}
				return nil
			})
		})
	}
	testenv.Do(t, other, func() error {
		d, err := groFlushTimeout("tapn")
		if err != nil || d != 0 {
			return fmt.Errorf("tapn in another namespace: gro_flush_timeout %v (%v), want 0 (untouched)", d, err)
		}
		return nil
	})
}

// TestNAPIConfigErrors: settings that need NAPI are refused without it,
// naming the setting, and nothing is created.
func TestNAPIConfigErrors(t *testing.T) {
	testenv.RequireRoot(t)
	t.Parallel()
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		for _, c := range []struct {
			cfg  func(*Config)
			want string
		}{
			{func(c *Config) { c.NAPIFrags = true }, "NAPI fragments need NAPI"},
			{func(c *Config) { c.GROFlushTimeout = time.Millisecond }, "GRO flush timeout of 1ms needs NAPI"},
			{func(c *Config) { c.NAPI, c.GROFlushTimeout = true, -1 }, "negative GRO flush timeout"},
			{func(c *Config) { c.NAPIThreaded = true }, "threaded NAPI needs NAPI"},
		} {
			cfg := NewConfig("tapx", 1)
			c.cfg(&cfg)
			_, err := Create(cfg)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "tapx") || !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("Create(%+v) = %v, want an EINVAL error naming tapx and saying %q", cfg, err, c.want)
			}
			if names := linkNames(t); strings.Contains(strings.Join(names, " "), "tapx") {
				return fmt.Errorf("refused config left a tap: %v", names)
			}
		}
		return nil
	})
}

// TestSetNAPIThreaded turns a tap's threaded NAPI on and off while it
// exists, and refuses on a closed Tap: its namespace handle is gone, so
// the setting could reach a device of the same name elsewhere.
func TestSetNAPIThreaded(t *testing.T) {
	testenv.RequireRoot(t)
	t.Parallel()
	ns := newNS(t)
	testenv.Do(t, ns, func() error {
		cfg := NewConfig("tapt", 1)
		cfg.NAPI = true
		a := mustCreate(t, cfg)
		for _, on := range []bool{true, false, true} {
			if err := a.SetNAPIThreaded(on); err != nil {
				return err
			}
			if got, err := a.NAPIThreaded(); err != nil || got != on {
				return fmt.Errorf("after SetNAPIThreaded(%v): threaded %v (%v)", on, got, err)
			}
		}
		a.Close()
		// Every call that runs in the tap's namespace refuses after
		// Close: its namespace handle is closed.
		for what, err := range map[string]error{
			"SetNAPIThreaded":    a.SetNAPIThreaded(false),
			"SetGROFlushTimeout": a.SetGROFlushTimeout(0),
			"SetImpairment":      a.SetImpairment(Impairment{}),
			"AddQueue":           func() error { _, err := a.AddQueue(); return err }(),
			"Describe":           func() error { _, err := a.Describe(); return err }(),
		} {
			if !errors.Is(err, os.ErrClosed) || !strings.Contains(err.Error(), "tapt") {
				return fmt.Errorf("%s on a closed tap = %v, want an error naming tapt that wraps os.ErrClosed", what, err)
			}
		}
		return nil
	})
}
