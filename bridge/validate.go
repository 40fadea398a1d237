package bridge

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/vmnet/vmnet/names"
	"github.com/vmnet/vmnet/owner"
)

// checkName applies names.Interface, vmnet's one interface name grammar.
func checkName(what, name string) error { return names.Interface(what, name) }

// checkAddress refuses what cannot be an interface address, and a network
// or broadcast address given where a host address was meant.
func checkAddress(bridge string, p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("bridge %s: address %v is not a valid prefix; write it like 10.0.0.1/24 or fd00::1/64", bridge, p)
	}
	a := p.Addr()
	switch {
	case a.Is4In6():
		return fmt.Errorf("bridge %s: address %s is an IPv4-mapped IPv6 address; write the IPv4 address instead", bridge, p)
	case a.IsUnspecified() || a.IsMulticast() || a.IsLoopback():
		return fmt.Errorf("bridge %s: address %s cannot be assigned to an interface; give a unicast host address such as 10.0.0.1/24", bridge, p)
	}
	if hostBits := a.BitLen() - p.Bits(); hostBits >= 2 {
		if a == p.Masked().Addr() {
			return fmt.Errorf("bridge %s: address %s is the network address of its prefix; give a host address such as %s/%d",
				bridge, p, p.Masked().Addr().Next(), p.Bits())
		}
		if a.Is4() && isBroadcast(p) {
			return fmt.Errorf("bridge %s: address %s is the broadcast address of its prefix; give a host address", bridge, p)
		}
	}
	return nil
}

func isBroadcast(p netip.Prefix) bool {
	b := p.Addr().As4()
	n := p.Masked().Addr().As4()
	for i := range b {
		var mask byte
		if bit := p.Bits() - 8*i; bit < 8 {
			if bit < 0 {
				bit = 0
			}
			mask = 0xff >> bit
		}
		if b[i] != n[i]|mask {
			return false
		}
	}
	return true
}

func (cfg *Config) validate() error {
	if err := checkName("bridge", cfg.Name); err != nil {
		return err
	}
	if err := owner.Valid(ownerOr(cfg.Owner)); err != nil {
		return fmt.Errorf("bridge %s: %w", cfg.Name, err)
	}
	if cfg.MTU != 0 && (cfg.MTU < MinMTU || cfg.MTU > MaxMTU) {
		return fmt.Errorf("bridge %s: MTU %d is out of range; a bridge takes %d-%d", cfg.Name, cfg.MTU, MinMTU, MaxMTU)
	}
	if cfg.DefaultPVID > 4094 {
		return fmt.Errorf("bridge %s: default PVID %d is out of range; VLAN ids are 1-4094", cfg.Name, cfg.DefaultPVID)
	}
	if cfg.DefaultPVID != 0 && !cfg.VLANFiltering {
		return fmt.Errorf("bridge %s: default PVID %d has no effect without VLAN filtering; turn VLAN filtering on (vlan_filtering, --vlan-filtering) or drop the default PVID", cfg.Name, cfg.DefaultPVID)
	}
	if bad := cfg.GroupFwdMask & restrictedMask; bad != 0 {
		return fmt.Errorf("bridge %s: group_fwd_mask %#04x has bits %#04x set, which the kernel refuses on a bridge "+
			"(STP 01:80:C2:00:00:00, MAC PAUSE :01, LACP :02); use at most %#04x (what transparent sets), "+
			"and pass LACP with the ports' own group_fwd_mask (transparent ports)",
			cfg.Name, cfg.GroupFwdMask, bad, TransparentMask)
	}
	for i, p := range cfg.Addresses {
		if err := checkAddress(cfg.Name, p); err != nil {
			return err
		}
		if p.Addr().Is6() && cfg.MTU != 0 && cfg.MTU < MinIPv6MTU {
			return fmt.Errorf("bridge %s: IPv6 address %s needs an MTU of at least %d, not %d", cfg.Name, p, MinIPv6MTU, cfg.MTU)
		}
		if slices.Contains(cfg.Addresses[:i], p) {
			return fmt.Errorf("bridge %s: address %s is listed twice", cfg.Name, p)
		}
	}
	return nil
}

func (p *PortConfig) validate(bridge string) error {
	if err := checkName("port", p.Name); err != nil {
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	if p.Name == bridge {
		return fmt.Errorf("bridge %s: cannot be a port of itself", bridge)
	}
	if p.PVID > 4094 {
		return fmt.Errorf("bridge %s port %s: PVID %d is out of range; VLAN ids are 1-4094", bridge, p.Name, p.PVID)
	}
	for i, v := range p.Tagged {
		switch {
		case v == 0 || v > 4094:
			return fmt.Errorf("bridge %s port %s: tagged VLAN %d is out of range; VLAN ids are 1-4094", bridge, p.Name, v)
		case v == p.PVID:
			return fmt.Errorf("bridge %s port %s: VLAN %d is both the PVID (untagged) and tagged; list it only once", bridge, p.Name, v)
		case slices.Contains(p.Tagged[:i], v):
			return fmt.Errorf("bridge %s port %s: tagged VLAN %d is listed twice", bridge, p.Name, v)
		}
	}
	if bad := p.GroupFwdMask & portRestrictedMask; bad != 0 {
		return fmt.Errorf("bridge %s port %s: group_fwd_mask %#04x has bit 1 (MAC PAUSE, 01:80:C2:00:00:01) set, "+
			"which the kernel never forwards and refuses; use at most %#04x (what a transparent port sets)",
			bridge, p.Name, p.GroupFwdMask, PortTransparentMask)
	}
	return nil
}
