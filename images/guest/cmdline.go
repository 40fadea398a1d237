package guest

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/vmnet/vmnet/names"
)

// DefaultCmdline is the kernel command line the test image's contract
// assumes (package images documents it): console on ttyS0, kernel chatter
// off the console, and reboot (a QEMU exit with -no-reboot, which vmnet
// always passes) instead of hanging on a panic.
//
// The rest is for speed under TCG, where a throwaway test guest boots in
// about 4.4 s instead of 5.5 s with it: no crypto self-tests, no CPU
// vulnerability mitigations, no audit and no AppArmor (measured side by
// side with plain QEMU on this 2-core host). no_timer_check skips the
// IO-APIC timer check, which a guest starved of CPU (many guests booting
// at once under TCG) fails with a panic ("IO-APIC + timer doesn't work!"),
// as is usual for virtual guests.
//
// norandmaps (no address space randomization) lets TCG reuse the code it
// translated for a program or library in every later process: QEMU finds
// translated blocks by virtual address, so a library mapped at a new
// address each time is translated again for every process. Measured in one
// guest: 20 runs of `ip link show` take 0.8-1.9 s instead of 2.6-6.9 s, and
// `go test ./tap/` in a restored exec guest costs 16 % less host CPU, and
// a restored lab guest's QEMU spends 0.75-0.87 CPU-s to ready instead of
// 1.1-1.3 s, with an RSS of 92 MiB instead of 130 MiB. Test
// guests are throwaway machines; nothing in them relies on ASLR.
//
// tsc=reliable: a guest with more than one vCPU under TCG finds its TSCs
// "unsynchronized" and falls back to the HPET, and every clock read is
// then an emulated MMIO access and a system call (2-14 us a read, against
// 0.3-0.4 us with the TSC in the vDSO, measured in one guest). TCG's TSC
// is the host's (constant and synchronized here) and pauses while the guest
// is stopped, so it is reliable, also across a snapshot and restore. With
// one vCPU the guest already chose the TSC.
const DefaultCmdline = BaseCmdline + " norandmaps"

// BaseCmdline is DefaultCmdline without norandmaps: the start of the
// command line of images that are real distributions (debian-12), whose
// users keep the address space randomization their distribution has.
const BaseCmdline = "console=ttyS0 quiet panic=-1 cryptomgr.notests mitigations=off audit=0 apparmor=0 no_timer_check tsc=reliable"

// MaxCmdline is the x86 kernel command line limit (COMMAND_LINE_SIZE - 1).
const MaxCmdline = 2047

// The vmnet.* kernel parameters the test image's /init reads (init.sh).
const (
	ParamIP      = "vmnet.ip="
	ParamMTU     = "vmnet.mtu="
	ParamRoute   = "vmnet.route="
	ParamModules = "vmnet.modules="
	ParamCmd     = "vmnet.cmd="
	ParamNonce   = "vmnet.nonce="
	// ParamWarm (no value) stops /init at the snapshot point (WarmMarker);
	// the other parameters then come through ttyS1 (IdentityText).
	ParamWarm = "vmnet.warm"
)

// Args are the vmnet.* kernel parameters the test image's /init applies
// before it prints ReadyMarker.
type Args struct {
	IPs     []IP
	Routes  []Route
	MTUs    []MTU
	Modules []string // extra modules to load (must be in the image)
	Cmd     string   // shell command; empty keeps the guest running
	// Nonce goes into the guest's exit marker (vmnet.nonce), so that
	// command output that happens to contain a marker line does not
	// count. NewNonce makes one; a host reads it back from the kernel
	// command line with NonceOf.
	Nonce string
}

// NewNonce returns a random nonce for Args.Nonce.
func NewNonce() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// validNonce: lower-case hex, 8 to 64 digits.
func validNonce(n string) bool {
	if len(n) < 8 || len(n) > 64 {
		return false
	}
	return strings.Trim(n, "0123456789abcdef") == ""
}

// NonceOf returns the last valid vmnet.nonce of a kernel command line
// (as the guest's /init reads it), or "".
func NonceOf(cmdline string) string {
	n := ""
	for _, w := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(w, ParamNonce); ok {
			n = v
		}
	}
	if !validNonce(n) {
		return ""
	}
	return n
}

// IP puts addresses on one guest interface.
type IP struct {
	Iface string // eth0, eth1, ...
	Addrs []netip.Prefix
}

// Route is a route; a zero Dest is the default route of GW's family.
type Route struct {
	Dest netip.Prefix
	GW   netip.Addr
}

// MTU sets an interface MTU.
type MTU struct {
	Iface string
	MTU   int
}

// CmdArg returns the vmnet.cmd= kernel parameter that makes /init run
// shellCmd with sh -c.
func CmdArg(shellCmd string) string {
	return ParamCmd + base64.StdEncoding.EncodeToString([]byte(shellCmd))
}

// Params returns the vmnet.* parameters.
func (g Args) Params() ([]string, error) {
	var p []string
	for _, ip := range g.IPs {
		if err := checkIface(ip.Iface); err != nil {
			return nil, err
		}
		if len(ip.Addrs) == 0 {
			return nil, fmt.Errorf("guest ip for %s: no addresses", ip.Iface)
		}
		var as []string
		for _, a := range ip.Addrs {
			if !a.IsValid() {
				return nil, fmt.Errorf("guest ip for %s: invalid prefix", ip.Iface)
			}
			as = append(as, a.String())
		}
		p = append(p, ParamIP+ip.Iface+":"+strings.Join(as, "+"))
	}
	for _, m := range g.MTUs {
		if err := checkIface(m.Iface); err != nil {
			return nil, err
		}
		if m.MTU < 68 || m.MTU > 65535 {
			return nil, fmt.Errorf("guest mtu for %s: %d out of range 68..65535", m.Iface, m.MTU)
		}
		p = append(p, ParamMTU+m.Iface+":"+strconv.Itoa(m.MTU))
	}
	for _, r := range g.Routes {
		if !r.GW.IsValid() {
			return nil, fmt.Errorf("guest route to %v: no gateway", r.Dest)
		}
		dest := "default"
		if r.Dest.IsValid() {
			if r.Dest.Addr().Is4() != r.GW.Unmap().Is4() {
				return nil, fmt.Errorf("guest route to %v via %v: address families differ", r.Dest, r.GW)
			}
			dest = r.Dest.Masked().String()
		}
		p = append(p, ParamRoute+dest+":"+r.GW.String())
	}
	if len(g.Modules) > 0 {
		for _, m := range g.Modules {
			if m == "" || strings.ContainsAny(m, ", \t\n") {
				return nil, fmt.Errorf("guest module %q: invalid name", m)
			}
		}
		p = append(p, ParamModules+strings.Join(g.Modules, ","))
	}
	if g.Cmd != "" {
		p = append(p, CmdArg(g.Cmd))
	}
	if g.Nonce != "" {
		if !validNonce(g.Nonce) {
			return nil, fmt.Errorf("guest nonce %q: want 8 to 64 lower-case hex digits", g.Nonce)
		}
		p = append(p, ParamNonce+g.Nonce)
	}
	return p, nil
}

// Append returns the full kernel command line: base (DefaultCmdline if
// empty) followed by the parameters. It fails beyond the kernel's
// 2047-byte limit instead of letting the kernel cut the line.
func (g Args) Append(base string) (string, error) {
	if base == "" {
		base = DefaultCmdline
	}
	p, err := g.Params()
	if err != nil {
		return "", err
	}
	s := strings.Join(append([]string{base}, p...), " ")
	if len(s) > MaxCmdline {
		return "", fmt.Errorf("guest kernel command line is %d bytes, the limit is %d: shorten the command (put long programs into the initramfs)", len(s), MaxCmdline)
	}
	return s, nil
}

func checkIface(name string) error { return names.Interface("guest interface", name) }
