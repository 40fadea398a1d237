package qemu

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/vmnet/vmnet/images"
	"github.com/vmnet/vmnet/names"
)

// BaseAppend is the kernel command line the vmnet test image expects: see
// images.DefaultCmdline (a panic ends QEMU, with -no-reboot, which vmnet
// always passes).
const BaseAppend = images.DefaultCmdline

// maxAppend is the x86 kernel command line limit (COMMAND_LINE_SIZE - 1).
const maxAppend = 2047

// GuestArgs are the vmnet.* kernel parameters the guest image's /init
// applies before it prints VMNET-READY (see package images).
type GuestArgs struct {
	IPs     []GuestIP
	Routes  []GuestRoute
	MTUs    []GuestMTU
	Modules []string // extra modules to load (must be in the image)
	Cmd     string   // shell command; empty keeps the guest running
	// Nonce goes into the guest's exit marker (vmnet.nonce), so that
	// command output that happens to contain a marker line does not
	// count. NewNonce makes one; the VM's console reads it back from the
	// kernel command line (Spec.Append).
	Nonce string
}

// nonceParam is the kernel parameter that carries GuestArgs.Nonce.
const nonceParam = "vmnet.nonce="

// NewNonce returns a random nonce for GuestArgs.Nonce.
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

// nonceOf returns the last valid vmnet.nonce of a kernel command line
// (as the guest's /init reads it), or "".
func nonceOf(cmdline string) string {
	n := ""
	for _, w := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(w, nonceParam); ok {
			n = v
		}
	}
	if !validNonce(n) {
		return ""
	}
	return n
}

// GuestIP puts addresses on one guest interface.
type GuestIP struct {
	Iface string // eth0, eth1, ...
	Addrs []netip.Prefix
}

// GuestRoute is a route; a zero Dest is the default route of GW's family.
type GuestRoute struct {
	Dest netip.Prefix
	GW   netip.Addr
}

// GuestMTU sets an interface MTU.
type GuestMTU struct {
	Iface string
	MTU   int
}

// Params returns the vmnet.* parameters.
func (g GuestArgs) Params() ([]string, error) {
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
		p = append(p, "vmnet.ip="+ip.Iface+":"+strings.Join(as, "+"))
	}
	for _, m := range g.MTUs {
		if err := checkIface(m.Iface); err != nil {
			return nil, err
		}
		if m.MTU < 68 || m.MTU > 65535 {
			return nil, fmt.Errorf("guest mtu for %s: %d out of range 68..65535", m.Iface, m.MTU)
		}
		p = append(p, "vmnet.mtu="+m.Iface+":"+strconv.Itoa(m.MTU))
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
		p = append(p, "vmnet.route="+dest+":"+r.GW.String())
	}
	if len(g.Modules) > 0 {
		for _, m := range g.Modules {
			if m == "" || strings.ContainsAny(m, ", \t\n") {
				return nil, fmt.Errorf("guest module %q: invalid name", m)
			}
		}
		p = append(p, "vmnet.modules="+strings.Join(g.Modules, ","))
	}
	if g.Cmd != "" {
		p = append(p, "vmnet.cmd="+base64.StdEncoding.EncodeToString([]byte(g.Cmd)))
	}
	if g.Nonce != "" {
		if !validNonce(g.Nonce) {
			return nil, fmt.Errorf("guest nonce %q: want 8 to 64 lower-case hex digits", g.Nonce)
		}
		p = append(p, nonceParam+g.Nonce)
	}
	return p, nil
}

// Append returns the full kernel command line: base (BaseAppend if
// empty) followed by the parameters. It fails beyond the kernel's
// 2047-byte limit instead of letting the kernel cut the line.
func (g GuestArgs) Append(base string) (string, error) {
	if base == "" {
		base = BaseAppend
	}
	p, err := g.Params()
	if err != nil {
		return "", err
	}
	s := strings.Join(append([]string{base}, p...), " ")
	if len(s) > maxAppend {
		return "", fmt.Errorf("guest kernel command line is %d bytes, the limit is %d: shorten the command (put long programs into the initramfs)", len(s), maxAppend)
	}
	return s, nil
}

func checkIface(name string) error { return names.Interface("guest interface", name) }
