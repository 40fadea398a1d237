package vmconfig

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/vmnet/vmnet/names"
)

// EndpointKind names what one end of a [[link]] is.
type EndpointKind string

const (
	// KindTap is a tap device vmnet creates (or attaches to): tap:NAME.
	KindTap EndpointKind = "tap"
	// KindPacket is an existing interface read with AF_PACKET: packet:IFNAME.
	KindPacket EndpointKind = "packet"
	// KindUDP is a UDP tunnel: udp:LOCALADDR:PORT,remote=ADDR:PORT[,key=FILE].
	// Without key it is unauthenticated cleartext: anyone who can send to
	// the port can inject frames, and anyone on the path reads them.
	KindUDP EndpointKind = "udp"
	// KindVM is a NIC of a VM in this lab that has no network: vm:NAME:INDEX.
	KindVM EndpointKind = "vm"
	// KindVXLAN is a VXLAN tunnel (RFC 7348) through a kernel vxlan
	// device that the link creates:
	// vxlan:REMOTE,vni=N[,port=P][,local=ADDR][,dev=IFACE]. Like udp:, it
	// is unauthenticated cleartext; unlike udp:, the kernel carries it.
	KindVXLAN EndpointKind = "vxlan"
)

// OnOff is a switch that can also be left unset, so that a parsed endpoint
// remembers whether the user said anything.
type OnOff uint8

const (
	Unset OnOff = iota
	On
	Off
)

func (o OnOff) String() string {
	switch o {
	case On:
		return "on"
	case Off:
		return "off"
	}
	return ""
}

// Endpoint is one end of a link, parsed from KIND:SPEC[,key=value...].
// Fields that do not apply to Kind are zero.
type Endpoint struct {
	Kind    EndpointKind
	Name    string         // tap and packet: interface name; vm: VM name
	NIC     int            // vm: index of the NIC in the VM's nic list, from 0
	NetNS   string         // tap and packet: named network namespace, "" = the lab's
	Queues  int            // tap: 1..256, 0 = not given (a loaded Lab has 1)
	VnetHdr OnOff          // tap: Unset in ParseEndpoint output; a loaded Lab has On or Off
	Local   netip.AddrPort // udp; vxlan: local=ADDR (if given) and the port
	Remote  netip.AddrPort // udp; vxlan: the peer's address and the port
	VNI     int            // vxlan: 1..MaxVNI
	Dev     string         // vxlan: underlay interface (dev=), "" = by route
	// Key is the udp tunnel's pre-shared key file ("" = cleartext): with
	// it, datagrams are authenticated and encrypted. Only the syntax is
	// checked here; the link reads the file when it opens the endpoint.
	Key string
}

const endpointSyntax = "tap:NAME[,queues=N][,vnet_hdr=on|off][,netns=NS], packet:IFNAME[,netns=NS], " +
	"udp:ADDR:PORT,remote=ADDR:PORT[,key=FILE] (IPv6 in brackets), vxlan:REMOTE,vni=N[,port=P][,local=ADDR][,dev=IFACE] or vm:NAME:NICINDEX"

// ParseEndpoint parses a link endpoint such as "tap:lab0,queues=4",
// "packet:eth1,netns=r1", "udp:127.0.0.1:5000,remote=127.0.0.1:5001" or
// "vm:router:1". It checks syntax only; whether a VM or NIC exists is
// checked when a whole lab is loaded.
func ParseEndpoint(s string) (Endpoint, error) {
	e, err := parseEndpoint(s)
	if err != nil {
		return Endpoint{}, fmt.Errorf("endpoint %q: %w", s, err)
	}
	return e, nil
}

func parseEndpoint(s string) (Endpoint, error) {
	var e Endpoint
	parts := strings.Split(s, ",")
	kind, spec, ok := strings.Cut(parts[0], ":")
	if !ok {
		return e, fmt.Errorf("want KIND:SPEC: %s", endpointSyntax)
	}
	e.Kind = EndpointKind(kind)
	allowed := map[EndpointKind][]string{
		KindTap:    {"queues", "vnet_hdr", "netns"},
		KindPacket: {"netns"},
		KindUDP:    {"remote", "key"},
		KindVXLAN:  {"vni", "port", "local", "dev"},
		KindVM:     nil,
	}
	keys, known := allowed[e.Kind]
	if !known {
		return e, fmt.Errorf("unknown kind %q: use %s", kind, endpointSyntax)
	}
	opts := map[string]string{}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return e, fmt.Errorf("option %q is not key=value", p)
		}
		if !contains(keys, k) {
			if len(keys) == 0 {
				return e, fmt.Errorf("%s endpoints take no options, got %q", kind, k)
			}
			return e, fmt.Errorf("unknown option %q for %s endpoint: allowed are %s", k, kind, strings.Join(keys, ", "))
		}
		if _, dup := opts[k]; dup {
			return e, fmt.Errorf("option %q given twice", k)
		}
		opts[k] = v
	}
	if ns, ok := opts["netns"]; ok {
		if err := checkNetNS(ns); err != nil {
			return e, err
		}
		e.NetNS = ns
	}
	switch e.Kind {
	case KindTap, KindPacket:
		if err := checkIfName(spec); err != nil {
			return e, err
		}
		e.Name = spec
		if q, ok := opts["queues"]; ok {
			n, err := strconv.Atoi(q)
			if err != nil || n < 1 || n > MaxQueues {
				return e, fmt.Errorf("queues=%s: want a number from 1 to %d", q, MaxQueues)
			}
			e.Queues = n
		}
		if v, ok := opts["vnet_hdr"]; ok {
			switch v {
			case "on":
				e.VnetHdr = On
			case "off":
				e.VnetHdr = Off
			default:
				return e, fmt.Errorf("vnet_hdr=%s: want on or off", v)
			}
		}
	case KindUDP:
		local, err := parseUDPAddr(spec, false)
		if err != nil {
			return e, fmt.Errorf("local address: %w", err)
		}
		r, ok := opts["remote"]
		if !ok {
			return e, errors.New("udp endpoint needs remote=ADDR:PORT")
		}
		remote, err := parseUDPAddr(r, true)
		if err != nil {
			return e, fmt.Errorf("remote address: %w", err)
		}
		if local.Addr().Is4() != remote.Addr().Is4() {
			return e, fmt.Errorf("local %s and remote %s are different address families", local, remote)
		}
		e.Local, e.Remote = local, remote
		if k, ok := opts["key"]; ok {
			if err := checkKeyPath(k); err != nil {
				return e, err
			}
			e.Key = k
		}
	case KindVXLAN:
		return parseVXLAN(e, spec, opts)
	case KindVM:
		name, idx, ok := strings.Cut(spec, ":")
		if !ok {
			return e, errors.New("want vm:NAME:NICINDEX, e.g. vm:router:0")
		}
		if err := checkName("VM", name); err != nil {
			return e, err
		}
		n, err := strconv.Atoi(idx)
		if err != nil || n < 0 || n > maxNICs {
			return e, fmt.Errorf("NIC index %q: want a number from 0 to %d", idx, maxNICs)
		}
		e.Name, e.NIC = name, n
	}
	return e, nil
}

func parseUDPAddr(s string, remote bool) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return ap, fmt.Errorf("%q: want ADDR:PORT, IPv6 as [ADDR]:PORT", s)
	}
	if ap.Port() == 0 {
		return ap, fmt.Errorf("%q: port 0 is not allowed, both ends need to know the port", s)
	}
	if z := ap.Addr().Zone(); z != "" && checkIfName(z) != nil {
		return ap, fmt.Errorf("%q: zone %q is not an interface name", s, z)
	}
	if remote && ap.Addr().IsUnspecified() {
		return ap, fmt.Errorf("%q: remote address must not be unspecified", s)
	}
	return ap, nil
}

// parseVXLAN checks vxlan:REMOTE,vni=N[,port=P][,local=ADDR][,dev=IFACE].
func parseVXLAN(e Endpoint, spec string, opts map[string]string) (Endpoint, error) {
	remote, err := parseVXLANAddr("remote", spec)
	if err != nil {
		return e, err
	}
	if remote.IsUnspecified() {
		return e, fmt.Errorf("remote %s is unspecified: give the address of the other VXLAN end", spec)
	}
	v, ok := opts["vni"]
	if !ok {
		return e, errors.New("vxlan endpoint needs vni=N (1 to 16777215, the same on both ends)")
	}
	vni, err := strconv.Atoi(v)
	if err != nil || vni < 1 || vni > MaxVNI {
		return e, fmt.Errorf("vni=%s: want a number from 1 to %d", v, MaxVNI)
	}
	port := DefaultVXLANPort
	if p, ok := opts["port"]; ok {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return e, fmt.Errorf("port=%s: want a UDP port from 1 to 65535 (default %d)", p, DefaultVXLANPort)
		}
		port = n
	}
	e.VNI, e.Remote = vni, netip.AddrPortFrom(remote, uint16(port))
	if l, ok := opts["local"]; ok {
		local, err := parseVXLANAddr("local", l)
		if err != nil {
			return e, err
		}
		if local.Is4() != remote.Is4() {
			return e, fmt.Errorf("local %s and remote %s are different address families", local, remote)
		}
		e.Local = netip.AddrPortFrom(local, uint16(port))
	}
	if d, ok := opts["dev"]; ok {
		if err := checkIfName(d); err != nil {
			return e, fmt.Errorf("dev=: %w", err)
		}
		e.Dev = d
	}
	return e, nil
}

// parseVXLANAddr parses a VXLAN end's address: a plain unicast IPv4 or
// IPv6 address (the kernel device takes no zone; dev= names the
// underlay interface).
func parseVXLANAddr(what, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return a, fmt.Errorf("%s %q: want an IPv4 or IPv6 address (no port: give port=P; no brackets)", what, s)
	case a.Zone() != "":
		return a, fmt.Errorf("%s %s: a zone is not allowed: give the underlay interface as dev=IFACE", what, s)
	case a.Is4In6():
		return a, fmt.Errorf("%s %s: write the IPv4 address as such (%s)", what, s, a.Unmap())
	case a.IsMulticast():
		return a, fmt.Errorf("%s %s is a multicast address: a vxlan endpoint tunnels to one peer; give its unicast address", what, s)
	}
	return a, nil
}

// String formats the endpoint so that ParseEndpoint gives it back.
func (e Endpoint) String() string {
	var b strings.Builder
	b.WriteString(string(e.Kind))
	b.WriteByte(':')
	switch e.Kind {
	case KindUDP:
		b.WriteString(e.Local.String())
		b.WriteString(",remote=")
		b.WriteString(e.Remote.String())
		if e.Key != "" {
			b.WriteString(",key=" + e.Key)
		}
	case KindVXLAN:
		b.WriteString(e.Remote.Addr().String())
		b.WriteString(",vni=" + strconv.Itoa(e.VNI))
		b.WriteString(",port=" + strconv.Itoa(int(e.Remote.Port())))
		if e.Local.IsValid() {
			b.WriteString(",local=" + e.Local.Addr().String())
		}
		if e.Dev != "" {
			b.WriteString(",dev=" + e.Dev)
		}
	case KindVM:
		b.WriteString(e.Name)
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.NIC))
	default:
		b.WriteString(e.Name)
		if e.Queues != 0 {
			b.WriteString(",queues=" + strconv.Itoa(e.Queues))
		}
		if e.VnetHdr != Unset {
			b.WriteString(",vnet_hdr=" + e.VnetHdr.String())
		}
	}
	if e.NetNS != "" {
		b.WriteString(",netns=" + e.NetNS)
	}
	return b.String()
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// IfNameMax is the longest Linux interface name in bytes (IFNAMSIZ-1).
const IfNameMax = names.IfNameMax

// checkIfName applies names.Interface, vmnet's one interface name grammar.
func checkIfName(name string) error { return names.Interface("interface", name) }

// checkKeyPath checks the syntax of a key=FILE option: a path, which
// cannot hold ',' (it ends the option) or control characters.
func checkKeyPath(p string) error {
	if p == "" {
		return errors.New("key= needs the path of a key file (32 random bytes: make one with `(umask 077; head -c 32 /dev/urandom > tunnel.key)`)")
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c < 0x20 || c == 0x7f {
			return fmt.Errorf("key=%q: the path contains a control character", p)
		}
	}
	return nil
}

func checkNetNS(ns string) error {
	if ns == "" || ns == "." || ns == ".." || len(ns) > 255 {
		return fmt.Errorf("netns %q is not a valid namespace name", ns)
	}
	for i := 0; i < len(ns); i++ {
		if c := ns[i]; c == '/' || c == ',' || c == '=' || c <= ' ' || c == 0x7f {
			return fmt.Errorf("netns %q contains %q; namespace names cannot contain '/', ',', '=', blanks or control characters", ns, c)
		}
	}
	return nil
}

// checkName validates lab, network and VM names (names.Check). They end
// up inside interface names, file names, tags and endpoint strings.
func checkName(what, name string) error { return names.Check(what, name) }
