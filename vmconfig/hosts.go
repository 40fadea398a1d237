package vmconfig

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// VXLAN limits and defaults.
const (
	DefaultVXLANPort = 4789 // IANA's VXLAN port, the kernel's default too
	// VXLANOverhead is what VXLAN adds to a frame in an IPv4 underlay:
	// outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers;
	// VXLANOverhead6 in an IPv6 underlay (outer IPv6 is 40).
	VXLANOverhead  = 50
	VXLANOverhead6 = 70
	MaxVNI         = 1<<24 - 1
)

// Host is one machine of a multi-host lab ([[host]]).
type Host struct {
	Name        string
	Address     netip.Addr // underlay address vmnet uses on that host
	UnderlayMTU int        // MTU of the underlay path; default 1500
	VXLANPort   int        // UDP port of the VXLAN devices; default 4789
	Pos         Pos
}

// VXLAN is how a network that spans hosts reaches its peers from the host
// of a Lab part (see Lab.Part).
type VXLAN struct {
	VNI   int
	Local netip.Addr // this host's underlay address
	Port  int        // UDP port this host receives on
	Peers []Peer     // the other hosts with VMs on the network
}

// Peer is another host a spanning network reaches: its underlay address
// and the UDP port it receives VXLAN on (its vxlan_port).
type Peer struct {
	Host    string
	Address netip.Addr
	Port    int
}

var hostKeys = []string{"name", "address", "underlay_mtu", "vxlan_port"}

// VXLANName is the name of the VXLAN device of the network with VNI vni
// on each of its hosts, and of a `vmnet link` vxlan endpoint's. The kernel allows one device per VNI, port and
// local address anyway, so the VNI makes the name unique where it
// matters; it fits 15 bytes.
func VXLANName(vni int) string { return fmt.Sprintf("vx%d", vni) }

// DeriveVNI is the VNI of a network without vni =: stable across runs
// and machines (the first 24 bits of SHA-256 over lab and network name),
// in 1..16777215.
func DeriveVNI(lab, network string) int {
	sum := sha256.Sum256([]byte(lab + "\x00" + network))
	v := int(binary.BigEndian.Uint32(sum[:4]) >> 8)
	if v == 0 {
		v = 1 // VNI 0 is valid on the wire but easy to mistake for "unset"
	}
	return v
}

func (r *resolver) host(t *table) {
	h := &Host{Pos: r.p.at(t.path)}
	var ok bool
	h.Name, ok = r.objectName(t, "host", "host", func(name string) (Pos, bool) {
		if first := r.hosts[name]; first != nil {
			return first.Pos, true
		}
		return Pos{}, false
	})
	addr := t.str("address")
	switch {
	case !addr.set:
		if _, has := t.m["address"]; !has {
			r.p.errorf(t.path, "%saddress is required: the underlay address vmnet uses on that host, like \"192.0.2.10\"", t.what)
		}
		ok = false
	default:
		a, err := netip.ParseAddr(addr.v)
		switch {
		case err != nil || a.Zone() != "":
			t.errorf("address", "address %q is not an IP address (without prefix length), like \"192.0.2.10\"", addr.v)
			ok = false
		case a.Unmap().IsUnspecified() || a.Unmap().IsMulticast():
			t.errorf("address", "address %s cannot be a host's underlay address: use the unicast address of that host", a.Unmap())
			ok = false
		default:
			h.Address = a.Unmap()
			if first, dup := r.hostAddrs[h.Address]; dup {
				t.errorf("address", "address %s is already the address of host %q: every host needs its own underlay address", h.Address, first)
				ok = false
			} else {
				r.hostAddrs[h.Address] = h.Name
			}
		}
	}
	h.UnderlayMTU = pick(t.integer("underlay_mtu", 576, 65535), DefaultMTU)
	h.VXLANPort = pick(t.integer("vxlan_port", 1, 65535), DefaultVXLANPort)
	t.finish(hostKeys)
	if ok {
		r.hosts[h.Name] = h
		r.lab.Hosts = append(r.lab.Hosts, h)
	}
}

func (r *resolver) hostNames() string {
	var names []string
	for _, h := range r.lab.Hosts {
		names = append(names, h.Name)
	}
	if len(names) == 0 {
		return "no [[host]] is defined"
	}
	return "defined hosts: " + strings.Join(names, ", ")
}

// vmHost resolves host = "..." of a [[vm]].
func (r *resolver) vmHost(t *table, vm *VM) {
	h := t.str("host")
	switch {
	case h.set && r.hosts[h.v] == nil:
		t.errorf("host", "host %q is not defined (%s): add a [[host]] with that name or fix the name", h.v, r.hostNames())
	case h.set:
		vm.Host = h.v
	case len(r.lab.Hosts) == 1:
		vm.Host = r.lab.Hosts[0].Name
	case len(r.lab.Hosts) > 1 && r.hostsOK:
		r.p.errorf(t.path, "%shost is required when the lab has several [[host]] tables: add host = \"NAME\" (%s)", t.what, r.hostNames())
	}
}

// finishHosts does the checks that need every host, network and VM:
// VNIs, MTUs of networks that span hosts, links across hosts.
func (r *resolver) finishHosts() {
	if len(r.lab.Hosts) < 2 {
		for _, l := range r.lab.Links {
			r.linkOptsUnused(l)
		}
		return
	}
	vnis := map[int]*Network{}
	for _, n := range r.lab.Networks {
		path := r.vniPaths[n]
		if first := vnis[n.VNI]; first != nil {
			what := "derived"
			if r.vniSet[n] {
				what = "set"
			}
			r.p.errorf(path, "network %q: vni %d (%s) is already the vni of network %q at line %d: set vni = N to another value in 1..%d",
				n.Name, n.VNI, what, first.Name, first.Pos.Line, MaxVNI)
			continue
		}
		vnis[n.VNI] = n
		hosts := r.lab.HostsOf(n.Name)
		if len(hosts) < 2 {
			continue
		}
		r.claimIfName("", VXLANName(n.VNI), r.vniPaths[n], fmt.Sprintf("network %q: VXLAN device: ", n.Name))
		first := r.hosts[hosts[0]]
		for _, hn := range hosts {
			h := r.hosts[hn]
			if h.Address.Is4() != first.Address.Is4() {
				r.p.errorf(r.mtuPaths[n], "network %q spans hosts %s, but host %q has an IPv%d address and host %q an IPv%d one: VXLAN peers need one address family; give the hosts addresses of one family",
					n.Name, strings.Join(hosts, ", "), first.Name, ipv(first.Address), h.Name, ipv(h.Address))
				break
			}
			over := VXLANOverhead
			if !h.Address.Is4() {
				over = VXLANOverhead6
			}
			if n.MTU+over > h.UnderlayMTU {
				r.p.errorf(r.mtuPaths[n], "network %q spans hosts %s over VXLAN, which adds %d bytes on an IPv%d underlay: mtu %d does not fit underlay_mtu %d of host %q: set mtu = %d on the network (or raise underlay_mtu if the underlay carries larger frames)",
					n.Name, strings.Join(hosts, ", "), over, ipv(h.Address), n.MTU, h.UnderlayMTU, h.Name, h.UnderlayMTU-over)
				break
			}
		}
	}
	ports := map[string]*Link{} // host + "\x00" + port -> the link that uses it
	for _, l := range r.lab.Links {
		var on []string
		for _, e := range []Endpoint{l.A, l.B} {
			if e.Kind == KindVM {
				if vm := r.vms[e.Name]; vm != nil && vm.Host != "" && !slices.Contains(on, vm.Host) {
					on = append(on, vm.Host)
				}
			}
		}
		switch {
		case len(on) == 0:
			r.p.errorf(r.linkPaths[l], "link %d: with several [[host]] tables a link needs a vm: end, which says on which host it runs", l.Index)
		case len(on) == 1:
			r.linkOptsUnused(l)
		default:
			r.crossLink(l, r.hosts[on[0]], r.hosts[on[1]], ports)
		}
	}
}

// linkOptsUnused refuses port and key on a link that runs on one host.
func (r *resolver) linkOptsUnused(l *Link) {
	for i, k := range []string{"port", "key"} {
		if path := r.linkOpts[l][i]; path != "" {
			r.p.errorf(path, "link %d: %s applies only to a link between VMs on two different hosts (a UDP tunnel between them): remove it, or put a key= on a udp: end instead",
				l.Index, k)
		}
	}
}

// crossLink checks a link between a VM on host a and one on host b, which
// runs as a UDP tunnel from a's underlay address to b's, both on l.Port.
func (r *resolver) crossLink(l *Link, a, b *Host, ports map[string]*Link) {
	path := r.linkPaths[l]
	portPath := path
	if r.linkOpts[l][0] != "" {
		portPath = r.linkOpts[l][0]
	} else {
		l.Port = DeriveLinkPort(r.lab.Name, l.Index)
	}
	if a.Address.Is4() != b.Address.Is4() {
		r.p.errorf(path, "link %d: joins a VM on host %q (IPv%d address) and one on host %q (IPv%d address): a tunnel needs one address family; give the hosts addresses of one family",
			l.Index, a.Name, ipv(a.Address), b.Name, ipv(b.Address))
		return
	}
	for _, h := range []*Host{a, b} {
		if l.Port == h.VXLANPort {
			r.p.errorf(portPath, "link %d: UDP port %d is host %q's vxlan_port: set port = N on the link to another port", l.Index, l.Port, h.Name)
			return
		}
		k := h.Name + "\x00" + strconv.Itoa(l.Port)
		if first := ports[k]; first != nil {
			r.p.errorf(portPath, "link %d: UDP port %d on host %q is already the port of link %d at line %d: set port = N on one of them to a free port",
				l.Index, l.Port, h.Name, first.Index, first.Pos.Line)
			return
		}
		ports[k] = l
	}
	if l.Key == "" {
		r.p.warnf(path, "link %d: runs between hosts %q and %q as a UDP tunnel without key: frames cross the underlay in cleartext and anyone who can send to port %d injects frames; "+
			"add key = \"FILE\" (32 random bytes, the same file on both hosts: `(umask 077; head -c 32 /dev/urandom > link.key)`)", l.Index, a.Name, b.Name, l.Port)
	}
}

// Ports of links between hosts without port =: 20000..32767, below
// Linux's ephemeral ports (32768..60999), so an outgoing connection
// does not hold one by chance.
const (
	linkPortMin  = 20000
	linkPortSpan = 32768 - linkPortMin
)

// DeriveLinkPort is the UDP port of link index (from 0, in file order)
// of lab when the link joins VMs on two hosts and has no port =: both
// hosts compute it from the lab file alone, stable across runs and
// machines. The links of one lab get consecutive ports.
func DeriveLinkPort(lab string, index int) int {
	sum := sha256.Sum256([]byte(lab + "\x00link"))
	base := int(binary.BigEndian.Uint32(sum[:4]) % linkPortSpan)
	return linkPortMin + (base+index)%linkPortSpan
}

// HostsOf returns the hosts with a VM that has a NIC on network, in the
// order of [[host]].
func (l *Lab) HostsOf(network string) []string {
	on := map[string]bool{}
	for _, vm := range l.VMs {
		for _, nic := range vm.NICs {
			if nic.Network == network {
				on[vm.Host] = true
			}
		}
	}
	var out []string
	for _, h := range l.Hosts {
		if on[h.Name] {
			out = append(out, h.Name)
		}
	}
	return out
}

// HostByName returns the [[host]] named name, or nil.
func (l *Lab) HostByName(name string) *Host {
	for _, h := range l.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// Part returns what host brings up of a lab with several [[host]]
// tables: its VMs, the networks they use (each network that also has VMs
// on other hosts with its VXLAN set; such a network's addresses only on
// the first of its hosts, in [[host]] order, since every host's bridge is
// part of one layer-2 domain) and the links of its VMs (a link to a VM on
// another host as this host's half: a copy whose far end is the UDP
// tunnel to that host). Names,
// MACs, VNIs and the state directory stay those of the whole lab. With
// no [[host]] or one, host may be "" (or the one host's name) and Part
// returns l itself.
func (l *Lab) Part(host string) (*Lab, error) {
	switch {
	case len(l.Hosts) == 0 && host == "":
		return l, nil
	case len(l.Hosts) == 0:
		return nil, fmt.Errorf("lab %s has no [[host]] tables, so --host %s has no meaning: leave --host out, or add [[host]] tables to the lab file", l.Name, host)
	case host == "" && len(l.Hosts) == 1:
		return l, nil
	case host == "":
		return nil, fmt.Errorf("lab %s spans %d hosts: say which part to bring up here with --host NAME (%s)", l.Name, len(l.Hosts), hostList(l.Hosts))
	}
	me := l.HostByName(host)
	if me == nil {
		return nil, fmt.Errorf("lab %s has no host %q: use one of %s", l.Name, host, hostList(l.Hosts))
	}
	if len(l.Hosts) == 1 {
		return l, nil
	}
	p := *l
	p.Host = me
	p.VMs, p.Networks, p.Links = nil, nil, nil
	used := map[string]bool{}
	for _, vm := range l.VMs {
		if vm.Host != host {
			continue
		}
		p.VMs = append(p.VMs, vm)
		for _, nic := range vm.NICs {
			if nic.Network != "" {
				used[nic.Network] = true
			}
		}
	}
	for _, n := range l.Networks {
		if !used[n.Name] {
			continue
		}
		c := *n
		c.VXLAN = nil
		on := l.HostsOf(n.Name)
		if len(on) > 1 && on[0] != host {
			// One layer-2 domain: its host addresses go on the bridge
			// of the first of its hosts only, not once per host.
			c.Addresses = nil
		}
		for _, hn := range on {
			if hn == host {
				continue
			}
			if c.VXLAN == nil {
				c.VXLAN = &VXLAN{VNI: n.VNI, Local: me.Address, Port: me.VXLANPort}
			}
			ph := l.HostByName(hn)
			c.VXLAN.Peers = append(c.VXLAN.Peers, Peer{Host: ph.Name, Address: ph.Address, Port: ph.VXLANPort})
		}
		p.Networks = append(p.Networks, &c)
	}
	for _, lk := range l.Links {
		ha, hb := l.endHost(lk.A), l.endHost(lk.B)
		switch {
		case ha != host && hb != host:
		case ha == "" || hb == "" || ha == hb:
			p.Links = append(p.Links, lk)
		default:
			// The far VM's end becomes a UDP tunnel to its host, on the
			// port both hosts derive from the lab file. Each host impairs
			// what its own VM sends, so that no direction is impaired twice.
			c := *lk
			far := l.HostByName(hb)
			if ha != host {
				far = l.HostByName(ha)
			}
			udp := Endpoint{Kind: KindUDP, Key: lk.Key,
				Local:  netip.AddrPortFrom(me.Address, uint16(lk.Port)),
				Remote: netip.AddrPortFrom(far.Address, uint16(lk.Port))}
			if ha == host {
				c.B, c.BtoA = udp, nil
			} else {
				c.A, c.AtoB = udp, nil
			}
			p.Links = append(p.Links, &c)
		}
	}
	return &p, nil
}

// endHost is the host of the VM of a vm: end, "" for other ends.
func (l *Lab) endHost(e Endpoint) string {
	if e.Kind != KindVM {
		return ""
	}
	for _, vm := range l.VMs {
		if vm.Name == e.Name {
			return vm.Host
		}
	}
	return ""
}

func ipv(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}

func hostList(hs []*Host) string {
	var names []string
	for _, h := range hs {
		names = append(names, h.Name)
	}
	return strings.Join(names, ", ")
}
